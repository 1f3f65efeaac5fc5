//! A declared table checked on its own and normalised: columns, batching, ORDER BY, engine, and the options that
//! reach DDL. Every column an option names as a column must be a field of the table with a type the engine takes;
//! expressions are checked by `expr`. Normal form: a plain MergeTree is no engine at all, so tables declared
//! before engines existed compare equal to the same declaration now.

use super::expr;
use crate::names::is_valid_name;
use crate::plan::{PlanError, MAX_SYNC_BYTES, MAX_SYNC_ROWS};
use crate::resource::ResourceKey;
use crate::types::{ch_column_type, is_sortable};
use millrace_proto::v1::{field_type::Kind, Field, ScalarType, Table, TableEngine, TableEngineKind};
use std::collections::HashSet;

/// Longest keeper path, replica name or setting value: real ones are short.
const MAX_TEXT: usize = 1024;
const MAX_INDEXES: usize = 64;

fn fail(key: &ResourceKey, field: &str, reason: impl Into<String>) -> PlanError {
    PlanError { resource: key.to_string(), field: field.to_string(), reason: reason.into() }
}

/// Checks a table's columns and options and fills in defaults (its fields are checked already).
pub fn normalise(key: &ResourceKey, t: &mut Table) -> Result<(), PlanError> {
    if t.sync_max_rows.is_some_and(|r| r > MAX_SYNC_ROWS) {
        return Err(fail(key, "sync_max_rows", format!("at most {MAX_SYNC_ROWS} rows per insert: ClickHouse writes a larger insert in several blocks, and a failure after the first would repeat it")));
    }
    if t.sync_max_bytes.is_some_and(|b| b > MAX_SYNC_BYTES) {
        return Err(fail(key, "sync_max_bytes", format!("at most {MAX_SYNC_BYTES} bytes (256 MiB) per insert: batches are held in memory")));
    }
    for f in &t.fields {
        ch_column_type(f).map_err(|e| fail(key, &format!("fields.{}", e.field), e.reason))?;
    }
    if !t.database.is_empty() && !is_valid_name(&t.database) {
        return Err(fail(key, "database", format!("{:?}: database names must match [A-Za-z_][A-Za-z0-9_]{{0,127}}", t.database)));
    }
    // ClickHouse's own: a plan must never create, alter or drop tables there.
    if ["system", "information_schema"].contains(&t.database.to_ascii_lowercase().as_str()) {
        return Err(fail(key, "database", format!("`{}` is ClickHouse's own database: choose another", t.database)));
    }
    normalise_order_by(key, t)?;
    for (field, text, wrapped) in [
        ("partition_by", &t.partition_by, true),
        ("sample_by", &t.sample_by, true),
        ("primary_key", &t.primary_key, true),
        ("ttl", &t.ttl, false),
    ] {
        if !text.is_empty() {
            expr::check(text, wrapped).map_err(|e| fail(key, field, format!("the expression {e}")))?;
        }
    }
    check_settings(key, t)?;
    check_indexes(key, t)?;
    normalise_engine(key, t)?;
    super::ddl::check_create_size(t).map_err(|e| fail(key, "fields", e))
}

fn normalise_order_by(key: &ResourceKey, t: &mut Table) -> Result<(), PlanError> {
    if !t.order_by_expression.is_empty() {
        if !t.order_by.is_empty() {
            return Err(fail(key, "order_by_expression", "set order_by (order_by_fields) or order_by_expression, not both"));
        }
        return expr::check(&t.order_by_expression, true).map_err(|e| fail(key, "order_by_expression", format!("the expression {e}")));
    }
    if t.order_by.is_empty() {
        t.order_by = t.fields.iter().filter(|f| f.key).map(|f| f.name.clone()).collect();
    }
    for col in &t.order_by {
        match t.fields.iter().find(|f| &f.name == col) {
            None => return Err(fail(key, "order_by", format!("`{col}` is not a field of the table"))),
            Some(f) if !is_sortable(f) => return Err(fail(key, "order_by", format!("`{col}` must be a non-nullable scalar to be in ORDER BY"))),
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_settings(key: &ResourceKey, t: &Table) -> Result<(), PlanError> {
    for (name, value) in &t.settings {
        let ok_name = name.len() <= 128
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_name {
            return Err(fail(key, "settings", format!("{name:?} is not a setting name: use letters, digits and _")));
        }
        if value.len() > MAX_TEXT || value.chars().any(char::is_control) {
            return Err(fail(key, &format!("settings.{name}"), format!("the value must be at most {MAX_TEXT} characters, without control characters")));
        }
    }
    Ok(())
}

fn check_indexes(key: &ResourceKey, t: &mut Table) -> Result<(), PlanError> {
    if t.indexes.len() > MAX_INDEXES {
        return Err(fail(key, "indexes", format!("at most {MAX_INDEXES} indexes")));
    }
    let mut names = HashSet::new();
    for i in &mut t.indexes {
        let at = format!("indexes.{}", i.name);
        if !is_valid_name(&i.name) {
            return Err(fail(key, "indexes", format!("index name {:?} must match [A-Za-z_][A-Za-z0-9_]{{0,127}}", i.name)));
        }
        if !names.insert(i.name.clone()) {
            return Err(fail(key, &at, "two indexes have this name"));
        }
        expr::check(&i.expression, true).map_err(|e| fail(key, &format!("{at}.expression"), format!("the expression {e}")))?;
        if !(is_valid_name(&i.r#type) && i.r#type.len() <= 64) {
            return Err(fail(key, &format!("{at}.type"), format!("{:?} is not an index type (minmax, set, bloom_filter, ngrambf_v1, tokenbf_v1, ...)", i.r#type)));
        }
        if let Some(a) = i.arguments.iter().find(|a| !expr::is_literal(a)) {
            return Err(fail(key, &format!("{at}.arguments"), format!("{a:?}: each argument is a number or a single-quoted string")));
        }
        // moose_lib's default granularity is 1; 0 would be refused by ClickHouse.
        i.granularity = i.granularity.max(1);
    }
    Ok(())
}

fn scalar_of(f: &Field) -> Option<ScalarType> {
    match f.r#type.as_ref()?.kind.as_ref()? {
        Kind::Scalar(s) if !f.nullable => ScalarType::try_from(*s).ok(),
        _ => None,
    }
}

/// A column an engine parameter names: a field of the table whose type passes `ok` (described by `want`).
fn engine_column(key: &ResourceKey, t: &Table, param: &str, col: &str, want: &str, ok: fn(ScalarType) -> bool) -> Result<(), PlanError> {
    let field = format!("engine.{param}");
    let f = t.fields.iter().find(|f| f.name == col).ok_or_else(|| fail(key, &field, format!("`{col}` is not a field of the table")))?;
    match scalar_of(f) {
        Some(s) if ok(s) => Ok(()),
        _ => Err(fail(key, &field, format!("column `{col}` must be {want} (and not optional)"))),
    }
}

fn is_version_type(s: ScalarType) -> bool {
    use ScalarType::*;
    matches!(s, Uint8 | Uint16 | Uint32 | Uint64 | Date | Datetime)
}

fn normalise_engine(key: &ResourceKey, t: &mut Table) -> Result<(), PlanError> {
    let Some(e) = t.engine.as_mut() else { return Ok(()) };
    let kind = match TableEngineKind::try_from(e.kind) {
        Ok(TableEngineKind::Unspecified) => TableEngineKind::MergeTree,
        Ok(k) => k,
        Err(_) => return Err(fail(key, "engine.kind", format!("unknown engine kind {}", e.kind))),
    };
    e.kind = kind as i32;
    let e = e.clone();
    let name = super::ddl::engine_name(&e);
    let only = |param: &str, set: bool, allowed: &[TableEngineKind]| {
        if set && !allowed.contains(&kind) {
            Err(fail(key, &format!("engine.{param}"), format!("{name} takes no `{param}`")))
        } else {
            Ok(())
        }
    };
    use TableEngineKind::*;
    only("ver", e.ver.is_some(), &[ReplacingMergeTree, VersionedCollapsingMergeTree])?;
    only("is_deleted", e.is_deleted.is_some(), &[ReplacingMergeTree])?;
    only("columns", !e.columns.is_empty(), &[SummingMergeTree])?;
    only("sign", e.sign.is_some(), &[CollapsingMergeTree, VersionedCollapsingMergeTree])?;
    if !e.replicated && (e.keeper_path.is_some() || e.replica_name.is_some()) {
        return Err(fail(key, "engine.keeper_path", format!("{name} is not replicated: keeper_path and replica_name apply to Replicated engines")));
    }
    if e.keeper_path.is_some() != e.replica_name.is_some() {
        return Err(fail(key, "engine.keeper_path", format!("{name} needs both keeper_path and replica_name, or neither")));
    }
    for (param, text) in [("keeper_path", &e.keeper_path), ("replica_name", &e.replica_name)] {
        if text.as_ref().is_some_and(|s| s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control)) {
            return Err(fail(key, &format!("engine.{param}"), format!("must be 1 to {MAX_TEXT} characters, without control characters")));
        }
    }
    let ordered = !t.order_by.is_empty() || !matches!(t.order_by_expression.replace(' ', "").as_str(), "" | "tuple()");
    match kind {
        ReplacingMergeTree => {
            if !ordered {
                return Err(fail(key, "order_by", format!("{name} keeps one row per ORDER BY key, so it needs an ORDER BY: declare order_by_fields or Key fields")));
            }
            if let Some(v) = &e.ver {
                engine_column(key, t, "ver", v, "an unsigned integer, a date or a date-time", is_version_type)?;
            }
            if let Some(d) = &e.is_deleted {
                if e.ver.is_none() {
                    return Err(fail(key, "engine.is_deleted", "is_deleted needs ver to be set too"));
                }
                engine_column(key, t, "is_deleted", d, "a bool or UInt8", |s| matches!(s, ScalarType::Bool | ScalarType::Uint8))?;
            }
        }
        SummingMergeTree => {
            for c in &e.columns {
                let f = t.fields.iter().find(|f| &f.name == c).ok_or_else(|| fail(key, "engine.columns", format!("`{c}` is not a field of the table")))?;
                let numeric = matches!(f.r#type.as_ref().and_then(|t| t.kind.as_ref()), Some(Kind::Decimal(_)))
                    || scalar_of(f).is_some_and(|s| !matches!(s, ScalarType::String | ScalarType::Date | ScalarType::Datetime | ScalarType::Uuid | ScalarType::Unspecified));
                if !numeric {
                    return Err(fail(key, "engine.columns", format!("column `{c}` must be numeric to be summed")));
                }
                if t.order_by.contains(c) {
                    return Err(fail(key, "engine.columns", format!("column `{c}` is in the ORDER BY, so it is a key, not summed: leave it out of columns")));
                }
            }
        }
        CollapsingMergeTree | VersionedCollapsingMergeTree => {
            let sign = e.sign.as_deref().ok_or_else(|| fail(key, "engine.sign", format!("{name} needs `sign`: an Int8 column holding 1 or -1")))?;
            engine_column(key, t, "sign", sign, "Int8 (1 for a state row, -1 for its cancellation)", |s| s == ScalarType::Int8)?;
            if kind == VersionedCollapsingMergeTree {
                let ver = e.ver.as_deref().ok_or_else(|| fail(key, "engine.ver", format!("{name} needs `ver`: the version column")))?;
                engine_column(key, t, "ver", ver, "an unsigned integer, a date or a date-time", is_version_type)?;
            }
        }
        _ => {}
    }
    if e == (TableEngine { kind: MergeTree as i32, ..Default::default() }) {
        t.engine = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{FieldType, ResourceKind, TableIndex};

    fn field(name: &str, s: ScalarType, key: bool) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(s as i32)) }), nullable: false, key, ..Default::default() }
    }

    fn table(engine: Option<TableEngine>) -> Table {
        Table {
            name: "t".into(),
            fields: vec![
                field("id", ScalarType::String, true),
                field("v", ScalarType::Uint64, false),
                field("sign", ScalarType::Int8, false),
                field("gone", ScalarType::Bool, false),
                field("n", ScalarType::Float64, false),
            ],
            engine,
            ..Default::default()
        }
    }

    fn run(mut t: Table) -> Result<Table, PlanError> {
        normalise(&ResourceKey::new(ResourceKind::Table, "t", ""), &mut t).map(|_| t)
    }

    fn engine(kind: TableEngineKind) -> TableEngine {
        TableEngine { kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn engines_with_their_columns_are_accepted_and_plain_merge_tree_is_no_engine() {
        use TableEngineKind::*;
        assert_eq!(run(table(Some(engine(MergeTree)))).unwrap().engine, None);
        assert_eq!(run(table(Some(engine(Unspecified)))).unwrap().engine, None);
        for e in [
            TableEngine { ver: Some("v".into()), is_deleted: Some("gone".into()), ..engine(ReplacingMergeTree) },
            TableEngine { columns: vec!["n".into(), "v".into()], ..engine(SummingMergeTree) },
            engine(AggregatingMergeTree),
            TableEngine { sign: Some("sign".into()), ..engine(CollapsingMergeTree) },
            TableEngine { sign: Some("sign".into()), ver: Some("v".into()), ..engine(VersionedCollapsingMergeTree) },
            TableEngine { replicated: true, ..engine(MergeTree) },
            TableEngine { replicated: true, keeper_path: Some("/p".into()), replica_name: Some("r".into()), ..engine(ReplacingMergeTree) },
        ] {
            let t = run(table(Some(e.clone()))).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(t.engine, Some(e));
        }
    }

    #[test]
    fn engine_parameters_naming_missing_or_ill_typed_columns_are_refused() {
        use TableEngineKind::*;
        for (e, field, why) in [
            (TableEngine { ver: Some("nope".into()), ..engine(ReplacingMergeTree) }, "engine.ver", "not a field"),
            (TableEngine { ver: Some("id".into()), ..engine(ReplacingMergeTree) }, "engine.ver", "unsigned integer"),
            (TableEngine { is_deleted: Some("gone".into()), ..engine(ReplacingMergeTree) }, "engine.is_deleted", "needs ver"),
            (TableEngine { ver: Some("v".into()), is_deleted: Some("v".into()), ..engine(ReplacingMergeTree) }, "engine.is_deleted", "bool"),
            (engine(CollapsingMergeTree), "engine.sign", "Int8"),
            (TableEngine { sign: Some("v".into()), ..engine(CollapsingMergeTree) }, "engine.sign", "Int8"),
            (TableEngine { sign: Some("sign".into()), ..engine(VersionedCollapsingMergeTree) }, "engine.ver", "needs `ver`"),
            (TableEngine { columns: vec!["id".into()], ..engine(SummingMergeTree) }, "engine.columns", "numeric"),
            (TableEngine { ver: Some("v".into()), ..engine(MergeTree) }, "engine.ver", "takes no `ver`"),
            (TableEngine { keeper_path: Some("/p".into()), replica_name: Some("r".into()), ..engine(MergeTree) }, "engine.keeper_path", "not replicated"),
            (TableEngine { replicated: true, keeper_path: Some("/p".into()), ..engine(MergeTree) }, "engine.keeper_path", "both"),
            (TableEngine { kind: 99, ..Default::default() }, "engine.kind", "unknown"),
        ] {
            let err = run(table(Some(e.clone()))).unwrap_err();
            assert_eq!(err.field, field, "{e:?}: {err}");
            assert!(err.reason.contains(why), "{e:?}: {err}");
        }
        let mut unordered = table(Some(engine(ReplacingMergeTree)));
        unordered.fields[0].key = false;
        assert!(run(unordered).unwrap_err().reason.contains("needs an ORDER BY"));
        let summed_key = TableEngine { columns: vec!["v".into()], ..engine(SummingMergeTree) };
        let t = Table { order_by: vec!["id".into(), "v".into()], ..table(Some(summed_key)) };
        assert!(run(t).unwrap_err().reason.contains("in the ORDER BY"));
    }

    #[test]
    fn options_are_checked_where_they_reach_ddl() {
        let ok = Table {
            order_by_expression: "(id, cityHash64(id))".into(),
            partition_by: "tuple()".into(),
            sample_by: "cityHash64(id)".into(),
            primary_key: "id".into(),
            ttl: "toDateTime(v) + INTERVAL 1 DAY".into(),
            settings: [("index_granularity".to_string(), "1024".to_string())].into(),
            database: "other_db".into(),
            indexes: vec![TableIndex { name: "i".into(), expression: "n".into(), r#type: "minmax".into(), arguments: vec![], granularity: 0 }],
            ..table(None)
        };
        let t = run(ok.clone()).unwrap();
        assert!(t.order_by.is_empty(), "an ORDER BY expression is not filled from the keys");
        assert_eq!(t.indexes[0].granularity, 1);
        for (bad, field) in [
            (Table { order_by: vec!["id".into()], ..ok.clone() }, "order_by_expression"),
            (Table { partition_by: "x); DROP TABLE y".into(), ..ok.clone() }, "partition_by"),
            (Table { ttl: "v SETTINGS a = 1".into(), ..ok.clone() }, "ttl"),
            (Table { settings: [("a b".to_string(), "1".to_string())].into(), ..ok.clone() }, "settings"),
            (Table { database: "a.b".into(), ..ok.clone() }, "database"),
            (Table { indexes: vec![TableIndex { r#type: "set(1)".into(), ..ok.indexes[0].clone() }], ..ok.clone() }, "indexes.i.type"),
            (Table { indexes: vec![TableIndex { arguments: vec!["x".into()], ..ok.indexes[0].clone() }], ..ok.clone() }, "indexes.i.arguments"),
            (Table { indexes: vec![ok.indexes[0].clone(), ok.indexes[0].clone()], ..ok.clone() }, "indexes.i"),
        ] {
            assert_eq!(run(bad).unwrap_err().field, field);
        }
    }
}
