//! How a table's options may change once it exists: what ClickHouse can ALTER in place (TTL, settings, indexes)
//! is an update the diff shows; what it cannot (engine, ORDER BY, PARTITION BY, PRIMARY KEY, SAMPLE BY, the
//! database) is refused with what to do, as a column's type change is.

use super::ddl::{engine_clause, order_by};
use millrace_proto::v1::Table;

fn shown(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// The notes of an allowed option change, or why it cannot be made.
pub fn option_changes(d: &Table, s: &Table) -> Result<Vec<String>, String> {
    let fixed = [
        ("the engine", engine_clause(s, "<database>", "<table>"), engine_clause(d, "<database>", "<table>")),
        ("ORDER BY", order_by(s), order_by(d)),
        ("PARTITION BY", s.partition_by.clone(), d.partition_by.clone()),
        ("PRIMARY KEY", s.primary_key.clone(), d.primary_key.clone()),
        ("SAMPLE BY", s.sample_by.clone(), d.sample_by.clone()),
        ("the database", s.database.clone(), d.database.clone()),
    ];
    for (what, old, new) in fixed {
        if old != new {
            return Err(format!(
                "{what} cannot change ({} -> {}): ClickHouse cannot alter it in place; declare a new version of the table instead",
                shown(&old),
                shown(&new)
            ));
        }
    }
    let mut notes = Vec::new();
    if d.ttl != s.ttl {
        if d.ttl.is_empty() {
            return Err(format!(
                "the table TTL cannot be removed by a plan ({}): keep it, or declare a new version of the table",
                s.ttl
            ));
        }
        notes.push(format!("TTL {} -> {}", shown(&s.ttl), d.ttl));
    }
    let mut names: Vec<&String> = d.settings.keys().chain(s.settings.keys()).collect();
    names.sort();
    names.dedup();
    for k in names {
        match (s.settings.get(k), d.settings.get(k)) {
            (Some(old), None) => {
                return Err(format!(
                    "setting {k} cannot be removed by a plan ({k} = {old}): declare it with its default value instead"
                ))
            }
            (None, Some(new)) => notes.push(format!("setting {k} = {new}")),
            (Some(old), Some(new)) if old != new => notes.push(format!("setting {k} {old} -> {new}")),
            _ => {}
        }
    }
    for i in s.indexes.iter().filter(|i| !d.indexes.iter().any(|n| n.name == i.name)) {
        notes.push(format!("drop index {}", i.name));
    }
    for i in &d.indexes {
        match s.indexes.iter().find(|o| o.name == i.name) {
            None => notes.push(format!("add index {} (it covers rows inserted from now on)", i.name)),
            Some(o) if o != i => notes.push(format!("index {} changed: dropped and added again (it covers rows inserted from now on)", i.name)),
            Some(_) => {}
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{TableEngine, TableEngineKind, TableIndex};

    #[test]
    fn what_clickhouse_cannot_alter_is_refused_with_what_to_do() {
        let base = Table { order_by: vec!["id".into()], ..Default::default() };
        let replacing = TableEngine { kind: TableEngineKind::ReplacingMergeTree as i32, ..Default::default() };
        for (changed, what) in [
            (Table { engine: Some(replacing), ..base.clone() }, "the engine cannot change (MergeTree() -> ReplacingMergeTree())"),
            (Table { order_by: vec!["id".into(), "ts".into()], ..base.clone() }, "ORDER BY cannot change"),
            (Table { partition_by: "toYYYYMM(ts)".into(), ..base.clone() }, "PARTITION BY cannot change ((none) -> toYYYYMM(ts))"),
            (Table { primary_key: "id".into(), ..base.clone() }, "PRIMARY KEY"),
            (Table { sample_by: "id".into(), ..base.clone() }, "SAMPLE BY"),
            (Table { database: "other".into(), ..base.clone() }, "the database"),
        ] {
            let e = option_changes(&changed, &base).unwrap_err();
            assert!(e.contains(what) && e.contains("declare a new version"), "{e}");
        }
        let with_ttl = Table { ttl: "ts + INTERVAL 1 DAY".into(), ..base.clone() };
        assert!(option_changes(&base, &with_ttl).unwrap_err().contains("TTL cannot be removed"));
        let with_setting = Table { settings: [("a".to_string(), "1".to_string())].into(), ..base.clone() };
        assert!(option_changes(&base, &with_setting).unwrap_err().contains("declare it with its default value"));
    }

    #[test]
    fn what_clickhouse_can_alter_shows_in_the_diff() {
        let idx = |n: &str| TableIndex { name: n.into(), expression: "x".into(), r#type: "minmax".into(), arguments: vec![], granularity: 1 };
        let s = Table { settings: [("a".to_string(), "1".to_string())].into(), indexes: vec![idx("old")], ..Default::default() };
        let d = Table {
            ttl: "ts + INTERVAL 1 DAY".into(),
            settings: [("a".to_string(), "2".to_string()), ("b".to_string(), "x".to_string())].into(),
            indexes: vec![idx("new")],
            ..Default::default()
        };
        let notes = option_changes(&d, &s).unwrap();
        assert_eq!(
            notes,
            vec![
                "TTL (none) -> ts + INTERVAL 1 DAY",
                "setting a 1 -> 2",
                "setting b = x",
                "drop index old",
                "add index new (it covers rows inserted from now on)",
            ]
        );
        assert!(option_changes(&s, &s).unwrap().is_empty());
    }
}
