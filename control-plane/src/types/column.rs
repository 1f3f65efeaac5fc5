//! A top-level field's column attributes (moose's column annotations): LowCardinality, DEFAULT / MATERIALIZED /
//! ALIAS, CODEC, column TTL, COMMENT and aggregate functions. Expressions reach DDL as text, checked as table
//! expressions are and rendered inside parentheses.

use super::{err, validate_type, FieldError};
use crate::table::expr;
use millrace_proto::v1::{field_type::Kind, AggregateType, Field, ScalarType};

/// The functions ClickHouse allows in a SimpleAggregateFunction column (those whose state is their result).
const SIMPLE_AGGREGATES: &[&str] = &[
    "any", "anyLast", "min", "max", "sum", "sumWithOverflow", "groupBitAnd", "groupBitOr", "groupBitXor",
    "groupArrayArray", "groupUniqArrayArray", "groupArrayLastArray", "sumMap", "minMap", "maxMap", "argMin", "argMax",
];

/// Longest column comment accepted.
pub const MAX_COMMENT: usize = 4096;

pub fn has_attributes(f: &Field) -> bool {
    f.low_cardinality
        || !f.default_expression.is_empty()
        || !f.materialized.is_empty()
        || !f.alias.is_empty()
        || !f.codec.is_empty()
        || !f.ttl.is_empty()
        || !f.comment.is_empty()
        || f.aggregate.is_some()
}

/// The value a record gives the field is not stored: ClickHouse computes it.
pub fn is_computed(f: &Field) -> bool {
    !f.materialized.is_empty() || !f.alias.is_empty()
}

pub fn validate(f: &Field, path: &str) -> Result<(), FieldError> {
    if super::nested_fields(f).is_some() && has_attributes(f) {
        return Err(err(path, "a list of records (a Nested column) takes no column attributes"));
    }
    let exprs = [("default", &f.default_expression), ("materialized", &f.materialized), ("alias", &f.alias)];
    let set: Vec<&str> = exprs.iter().filter(|(_, e)| !e.is_empty()).map(|(w, _)| *w).collect();
    if set.len() > 1 {
        return Err(err(path, format!("{} are all set: a column has at most one of DEFAULT, MATERIALIZED and ALIAS", set.join(" and "))));
    }
    for (what, text) in exprs.iter().chain([("ttl", &f.ttl), ("codec", &f.codec)].iter()) {
        if !text.is_empty() {
            expr::check(text, true).map_err(|e| err(path, format!("the {what} expression {e}")))?;
        }
    }
    if !f.alias.is_empty() && (!f.codec.is_empty() || !f.ttl.is_empty()) {
        return Err(err(path, "an ALIAS column is not stored: it takes no codec or TTL"));
    }
    if f.key && (!set.is_empty() || !f.ttl.is_empty()) {
        return Err(err(path, "a key field comes from the record: it cannot have a DEFAULT, MATERIALIZED or ALIAS expression, or a TTL"));
    }
    if f.comment.chars().count() > MAX_COMMENT {
        return Err(err(path, format!("the comment is longer than {MAX_COMMENT} characters")));
    }
    if f.low_cardinality && !low_cardinality_fits(f) {
        return Err(err(path, "LowCardinality applies to strings and fixed strings (optional or not)"));
    }
    if let Some(agg) = &f.aggregate {
        validate_aggregate(f, agg, path)?;
    }
    Ok(())
}

fn low_cardinality_fits(f: &Field) -> bool {
    let mut kind = f.r#type.as_ref().and_then(|t| t.kind.as_ref());
    if let Some(Kind::Optional(inner)) = kind {
        kind = inner.kind.as_ref();
    }
    match kind {
        Some(Kind::Scalar(s)) => *s == ScalarType::String as i32,
        Some(Kind::FixedString(_)) => true,
        _ => false,
    }
}

/// `name` or `name(parameters)`: the function's name is an identifier, its parameters an expression.
fn validate_function(function: &str) -> Result<(), String> {
    let (name, params) = match function.find('(') {
        Some(i) if function.ends_with(')') => (&function[..i], Some(&function[i + 1..function.len() - 1])),
        Some(_) => return Err("has a `(` without its closing `)` at the end".into()),
        None => (function, None),
    };
    if !crate::names::is_valid_name(name) {
        return Err(format!("{name:?} is not a function name ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    match params {
        Some(p) => expr::check(p, true).map_err(|e| format!("has parameters that {e}")),
        None => Ok(()),
    }
}

fn validate_aggregate(f: &Field, agg: &AggregateType, path: &str) -> Result<(), FieldError> {
    validate_function(&agg.function).map_err(|e| err(path, format!("the aggregate function {:?} {e}", agg.function)))?;
    if f.low_cardinality || !f.default_expression.is_empty() || !f.materialized.is_empty() || !f.alias.is_empty() || f.key {
        return Err(err(path, "an aggregate column has no LowCardinality, DEFAULT, MATERIALIZED or ALIAS, and is not a key"));
    }
    if agg.arguments.is_empty() || agg.arguments.len() > 16 {
        return Err(err(path, "an aggregate function takes 1 to 16 argument types"));
    }
    for (i, a) in agg.arguments.iter().enumerate() {
        if matches!(a.kind, Some(Kind::Json(_)) | Some(Kind::Record(_))) {
            return Err(err(path, "an aggregate's argument types are plain types (no JSON or records)"));
        }
        validate_type(a, &format!("{path}(argument {})", i + 1), 1)?;
    }
    if agg.simple && (agg.arguments.len() != 1 || Some(&agg.arguments[0]) != f.r#type.as_ref() || f.nullable) {
        return Err(err(path, "a simple aggregate takes one argument, whose type is the field's own (not optional)"));
    }
    let name = agg.function.split('(').next().unwrap_or_default();
    if agg.simple && !SIMPLE_AGGREGATES.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Err(err(
            path,
            format!("{name} cannot be a SimpleAggregateFunction (ClickHouse takes {}): use aggregated(...) for it", SIMPLE_AGGREGATES.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::FieldType;

    fn string(name: &str) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) }), ..Default::default() }
    }

    #[test]
    fn at_most_one_of_default_materialized_and_alias() {
        let f = Field { default_expression: "'x'".into(), materialized: "upper(a)".into(), ..string("s") };
        assert!(validate(&f, "s").unwrap_err().reason.contains("at most one"));
        let f = Field { alias: "upper(a)".into(), key: true, ..string("s") };
        assert!(validate(&f, "s").unwrap_err().reason.contains("key field"));
        assert!(validate(&Field { materialized: "upper(a)".into(), ..string("s") }, "s").is_ok());
        let f = Field { alias: "upper(a)".into(), codec: "ZSTD(1)".into(), ..string("s") };
        assert!(validate(&f, "s").unwrap_err().reason.contains("not stored"));
    }

    #[test]
    fn expressions_that_could_leave_their_clause_are_refused() {
        for f in [
            Field { default_expression: "1); DROP TABLE x".into(), ..string("s") },
            Field { codec: "ZSTD(1)) --".into(), ..string("s") },
            Field { ttl: "ts + INTERVAL 1 DAY /*".into(), ..string("s") },
        ] {
            assert!(validate(&f, "s").is_err(), "{f:?}");
        }
    }

    #[test]
    fn aggregates_name_a_function_and_simple_ones_their_own_type() {
        let ty = string("s").r#type.unwrap();
        let agg = |function: &str, simple: bool, arguments: Vec<FieldType>| Field {
            aggregate: Some(AggregateType { function: function.into(), arguments, simple }),
            ..string("s")
        };
        assert!(validate(&agg("anyLast", true, vec![ty.clone()]), "s").is_ok());
        assert!(validate(&agg("quantiles(0.5, 0.9)", false, vec![ty.clone()]), "s").is_ok());
        assert!(validate(&agg("sum; DROP", false, vec![ty.clone()]), "s").is_err());
        assert!(validate(&agg("uniq", true, vec![ty.clone()]), "s").unwrap_err().reason.contains("use aggregated"));
        assert!(validate(&agg("sum", false, vec![]), "s").is_err());
        let int = FieldType { kind: Some(Kind::Scalar(ScalarType::Int64 as i32)) };
        assert!(validate(&agg("sum", true, vec![int]), "s").unwrap_err().reason.contains("field's own"));
    }
}
