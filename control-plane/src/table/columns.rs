//! A table's columns as DDL: each field's definition (type, DEFAULT / MATERIALIZED / ALIAS, COMMENT, CODEC, TTL),
//! how a column's attributes may change once it exists, and the ALTERs that change them. Types come from
//! `crate::types`; a change of type is refused by the diff.

use crate::names::{quote_ch, quote_str};
use crate::types::{ch_column_type_on, nested_fields, physical_columns, FieldError};
use super::features::{self, Server};
use millrace_proto::v1::Field;

fn shown(e: &FieldError) -> String {
    format!("field `{}`: {}", e.field, e.reason)
}

/// `DEFAULT (e)` and the rest, in the order ClickHouse parses them (18.16 and current alike).
fn attributes(f: &Field, with_comment: bool) -> String {
    let mut out = String::new();
    for (word, text) in [("DEFAULT", &f.default_expression), ("MATERIALIZED", &f.materialized), ("ALIAS", &f.alias)] {
        if !text.is_empty() {
            out.push_str(&format!(" {word} ({text})"));
        }
    }
    if with_comment && !f.comment.is_empty() {
        out.push_str(&format!(" COMMENT {}", quote_str(&f.comment)));
    }
    if !f.codec.is_empty() {
        out.push_str(&format!(" CODEC({})", f.codec));
    }
    if !f.ttl.is_empty() {
        out.push_str(&format!(" TTL ({})", f.ttl));
    }
    out
}

/// The column's type on this server: LowCardinality only where the server has it (it is a storage hint), booleans
/// as the server has them.
fn column_type(f: &Field, server: &Server) -> Result<String, String> {
    if f.low_cardinality && server.version < features::LOW_CARDINALITY {
        let plain = Field { low_cardinality: false, ..f.clone() };
        return ch_column_type_on(&plain, server.dialect()).map_err(|e| shown(&e));
    }
    ch_column_type_on(f, server.dialect()).map_err(|e| shown(&e))
}

/// The column's definition in CREATE TABLE.
pub fn definition(f: &Field, server: &Server) -> Result<String, String> {
    let ty = column_type(f, server)?;
    Ok(format!("{} {ty}{}", quote_ch(&f.name), attributes(f, true)))
}

/// What ALTER TABLE ... ADD COLUMN adds for a field new to the table: its columns `system.columns` lacks (each of
/// a Nested column's arrays on its own, so one added to an existing Nested column works too).
pub fn additions(f: &Field, existing: &[(String, String)], server: &Server) -> Result<Vec<String>, String> {
    if nested_fields(f).is_some() {
        let cols = physical_columns(f, server.dialect()).map_err(|e| shown(&e))?;
        return Ok(cols
            .into_iter()
            .filter(|(n, _)| !existing.iter().any(|(e, _)| e == n))
            .map(|(n, ty)| format!("{} {ty}", quote_ch(&n)))
            .collect());
    }
    if existing.iter().any(|(e, _)| *e == f.name) {
        return Ok(Vec::new());
    }
    Ok(vec![definition(f, server)?])
}

/// Which of DEFAULT, MATERIALIZED and ALIAS the column has.
fn kind(f: &Field) -> &'static str {
    if !f.default_expression.is_empty() {
        "DEFAULT"
    } else if !f.materialized.is_empty() {
        "MATERIALIZED"
    } else if !f.alias.is_empty() {
        "ALIAS"
    } else {
        "no expression"
    }
}

fn expression(f: &Field) -> &str {
    [&f.default_expression, &f.materialized, &f.alias].into_iter().find(|e| !e.is_empty()).map(|e| e.as_str()).unwrap_or("")
}

/// The diff's notes for a column whose attributes changed (`d` desired, `s` stored, same type), or why the change
/// cannot be made in place.
pub fn attribute_changes(d: &Field, s: &Field) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let name = &d.name;
    if kind(d) != kind(s) {
        return Err(format!(
            "column `{name}` cannot go from {} to {}: declare a new version of the table instead",
            kind(s),
            kind(d)
        ));
    }
    if expression(d) != expression(s) {
        notes.push(format!("column {name}: {} {} -> {}", kind(d), expression(s), expression(d)));
    }
    for (what, new, old) in [("CODEC", &d.codec, &s.codec), ("TTL", &d.ttl, &s.ttl)] {
        if new == old {
            continue;
        }
        if new.is_empty() {
            return Err(format!("column `{name}`'s {what} ({old}) cannot be removed by a plan: keep it, or declare a new version of the table"));
        }
        notes.push(format!("column {name}: {what} {} -> {new}", if old.is_empty() { "(none)" } else { old }));
    }
    if d.comment != s.comment {
        notes.push(format!("column {name}: comment {:?} -> {:?}", s.comment, d.comment));
    }
    if d.low_cardinality != s.low_cardinality {
        notes.push(format!(
            "column {name}: LowCardinality {} (a storage hint: the existing column is kept as it is)",
            if d.low_cardinality { "declared" } else { "no longer declared" }
        ));
    }
    Ok(notes)
}

/// The ALTERs (after `ALTER TABLE <table> `) that take existing columns' attributes from `stored` to `desired`.
/// A column keeps its type as the server reports it (`existing`: name, type): MODIFY COLUMN names a type, and
/// must not convert one (a LowCardinality declared or dropped since, say).
pub fn alters(desired: &[Field], stored: &[Field], existing: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for d in desired {
        let Some(s) = stored.iter().find(|s| s.name == d.name) else { continue };
        let modified = expression(d) != expression(s) || d.codec != s.codec || d.ttl != s.ttl;
        if modified {
            let Some((_, ty)) = existing.iter().find(|(n, _)| *n == d.name) else { continue };
            out.push(format!("MODIFY COLUMN {} {ty}{}", quote_ch(&d.name), attributes(d, false)));
        }
        if d.comment != s.comment {
            out.push(format!("COMMENT COLUMN {} {}", quote_ch(&d.name), quote_str(&d.comment)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{field_type::Kind, FieldType, RecordType, ScalarType};

    fn f(name: &str, s: ScalarType) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(s as i32)) }), ..Default::default() }
    }

    #[test]
    fn a_definition_carries_every_attribute_in_clickhouse_order() {
        let col = Field {
            default_expression: "now()".into(),
            comment: "when it's seen".into(),
            codec: "Delta, ZSTD(3)".into(),
            ttl: "seen + INTERVAL 1 DAY".into(),
            ..f("seen", ScalarType::Datetime)
        };
        assert_eq!(
            definition(&col, &Server::MODERN).unwrap(),
            "`seen` DateTime('UTC') DEFAULT (now()) COMMENT 'when it\\'s seen' CODEC(Delta, ZSTD(3)) TTL (seen + INTERVAL 1 DAY)"
        );
        let lc = Field { low_cardinality: true, nullable: true, ..f("s", ScalarType::String) };
        assert_eq!(definition(&lc, &Server::MODERN).unwrap(), "`s` LowCardinality(Nullable(String))");
        let old = Server { version: features::Version::new(18, 16), has_keeper: false };
        assert_eq!(definition(&lc, &old).unwrap(), "`s` Nullable(String)");
    }

    #[test]
    fn a_list_of_records_adds_each_of_its_arrays() {
        let rec = FieldType { kind: Some(Kind::Record(RecordType { fields: vec![f("sku", ScalarType::String), f("qty", ScalarType::Int32)] })) };
        let items = Field { name: "items".into(), r#type: Some(FieldType { kind: Some(Kind::Array(Box::new(rec))) }), ..Default::default() };
        assert_eq!(definition(&items, &Server::MODERN).unwrap(), "`items` Nested(`sku` String, `qty` Int32)");
        let have = vec![("items.sku".to_string(), "Array(String)".to_string())];
        assert_eq!(additions(&items, &have, &Server::MODERN).unwrap(), vec!["`items.qty` Array(Int32)"]);
    }

    #[test]
    fn attribute_changes_are_altered_in_place_or_refused() {
        let s = Field { default_expression: "1".into(), codec: "ZSTD(1)".into(), ..f("n", ScalarType::Int64) };
        let d = Field { default_expression: "2".into(), codec: "ZSTD(3)".into(), comment: "n".into(), ..s.clone() };
        assert_eq!(attribute_changes(&d, &s).unwrap().len(), 3);
        let have = vec![("n".to_string(), "Int64".to_string())];
        assert_eq!(
            alters(&[d.clone()], &[s.clone()], &have).unwrap(),
            vec!["MODIFY COLUMN `n` Int64 DEFAULT (2) CODEC(ZSTD(3))", "COMMENT COLUMN `n` 'n'"]
        );
        let switched = Field { default_expression: String::new(), materialized: "1".into(), ..s.clone() };
        assert!(attribute_changes(&switched, &s).unwrap_err().contains("new version"));
        let no_codec = Field { codec: String::new(), ..s.clone() };
        assert!(attribute_changes(&no_codec, &s).unwrap_err().contains("cannot be removed"));
        assert!(alters(&[s.clone()], &[s], &have).unwrap().is_empty());
        // The type is the server's: a LowCardinality declared since is no conversion.
        let lc = Field { low_cardinality: true, codec: "ZSTD(5)".into(), ..f("t", ScalarType::String) };
        let was = Field { low_cardinality: false, ..lc.clone() };
        let was = Field { codec: "ZSTD(1)".into(), ..was };
        let have = vec![("t".to_string(), "String".to_string())];
        assert_eq!(alters(&[lc], &[was], &have).unwrap(), vec!["MODIFY COLUMN `t` String CODEC(ZSTD(5))"]);
    }
}
