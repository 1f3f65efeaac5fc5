//! The one place a table becomes DDL: CREATE TABLE with its engine and options, and the ALTERs that apply an
//! option change ClickHouse can make in place. Inputs are validated tables (`table::options`): names are checked
//! and quoted here, expressions checked and rendered inside parentheses (all but TTL, which ClickHouse does not
//! allow there; it is checked for clause words instead).

use super::features::{self, Server};
use crate::names::quote_ch;
use millrace_proto::v1::{Table, TableEngine, TableEngineKind, TableIndex};
use std::collections::BTreeMap;

/// One statement and the query settings it needs (sent with it, not stored in the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub settings: Vec<(&'static str, &'static str)>,
}

pub use crate::names::quote_str;

/// The engine's ClickHouse name: ReplicatedReplacingMergeTree, ...
pub fn engine_name(e: &TableEngine) -> String {
    let base = match TableEngineKind::try_from(e.kind).unwrap_or(TableEngineKind::MergeTree) {
        TableEngineKind::Unspecified | TableEngineKind::MergeTree => "MergeTree",
        TableEngineKind::ReplacingMergeTree => "ReplacingMergeTree",
        TableEngineKind::SummingMergeTree => "SummingMergeTree",
        TableEngineKind::AggregatingMergeTree => "AggregatingMergeTree",
        TableEngineKind::CollapsingMergeTree => "CollapsingMergeTree",
        TableEngineKind::VersionedCollapsingMergeTree => "VersionedCollapsingMergeTree",
    };
    if e.replicated {
        format!("Replicated{base}")
    } else {
        base.to_string()
    }
}

/// `ENGINE = ...` without the keyword: the name and its parameters.
pub fn engine_clause(table: &Table, database: &str, physical: &str) -> String {
    let default = TableEngine::default();
    let e = table.engine.as_ref().unwrap_or(&default);
    let mut params: Vec<String> = Vec::new();
    if e.replicated {
        let path = e.keeper_path.clone().unwrap_or_else(|| format!("/clickhouse/tables/{database}/{{shard}}/{physical}"));
        params.push(quote_str(&path));
        params.push(quote_str(e.replica_name.as_deref().unwrap_or("{replica}")));
    }
    match TableEngineKind::try_from(e.kind).unwrap_or(TableEngineKind::MergeTree) {
        TableEngineKind::ReplacingMergeTree => params.extend([&e.ver, &e.is_deleted].into_iter().flatten().map(|c| quote_ch(c))),
        TableEngineKind::SummingMergeTree => match e.columns.len() {
            0 => {}
            1 => params.push(quote_ch(&e.columns[0])),
            // Several columns go as one tuple: the engine takes a single argument.
            _ => params.push(format!("({})", e.columns.iter().map(|c| quote_ch(c)).collect::<Vec<_>>().join(", "))),
        },
        TableEngineKind::CollapsingMergeTree => params.extend(e.sign.iter().map(|c| quote_ch(c))),
        TableEngineKind::VersionedCollapsingMergeTree => params.extend([&e.sign, &e.ver].into_iter().flatten().map(|c| quote_ch(c))),
        _ => {}
    }
    format!("{}({})", engine_name(e), params.join(", "))
}

/// A setting's value as ClickHouse reads it: numbers as they are, true and false as 1 and 0, anything else as a
/// string (a value given already in single quotes is taken as that string).
pub fn setting_value(v: &str) -> String {
    let t = v.trim();
    let numeric = !t.is_empty() && t.parse::<f64>().is_ok() && t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    if numeric {
        return t.to_string();
    }
    // 18.16 reads no true/false literals; 1 and 0 mean the same to every version.
    if t == "true" || t == "false" {
        return if t == "true" { "1" } else { "0" }.to_string();
    }
    match t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Some(inner) if t.len() >= 2 => quote_str(&inner.replace("''", "'")),
        _ => quote_str(v),
    }
}

fn settings_list(settings: &BTreeMap<&String, &String>) -> String {
    settings.iter().map(|(k, v)| format!("{} = {}", k, setting_value(v))).collect::<Vec<_>>().join(", ")
}

/// `INDEX name (expr) TYPE type(args) GRANULARITY n`, as in CREATE TABLE and ALTER TABLE ... ADD INDEX.
pub fn index_clause(i: &TableIndex) -> String {
    let ty = if i.arguments.is_empty() { i.r#type.clone() } else { format!("{}({})", i.r#type, i.arguments.join(", ")) };
    format!("INDEX {} ({}) TYPE {ty} GRANULARITY {}", quote_ch(&i.name), i.expression, i.granularity.max(1))
}

/// The ORDER BY of a validated table: its expression, its columns, or tuple().
pub fn order_by(table: &Table) -> String {
    if !table.order_by_expression.is_empty() {
        format!("({})", table.order_by_expression)
    } else if table.order_by.is_empty() {
        "tuple()".into()
    } else {
        format!("({})", table.order_by.iter().map(|c| quote_ch(c)).collect::<Vec<_>>().join(", "))
    }
}

/// CREATE TABLE IF NOT EXISTS for a validated table, in `database` under its physical name.
pub fn create_table(database: &str, physical: &str, table: &Table, server: &Server) -> Result<Statement, String> {
    let mut parts = Vec::with_capacity(table.fields.len() + table.indexes.len());
    for f in &table.fields {
        parts.push(super::columns::definition(f, server)?);
    }
    parts.extend(table.indexes.iter().map(index_clause));
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {}.{} ({}) ENGINE = {}",
        quote_ch(database),
        quote_ch(physical),
        parts.join(", "),
        engine_clause(table, database, physical)
    );
    if !table.partition_by.is_empty() {
        sql.push_str(&format!(" PARTITION BY ({})", table.partition_by));
    }
    if !table.primary_key.is_empty() {
        sql.push_str(&format!(" PRIMARY KEY ({})", table.primary_key));
    }
    sql.push_str(&format!(" ORDER BY {}", order_by(table)));
    if !table.sample_by.is_empty() {
        sql.push_str(&format!(" SAMPLE BY ({})", table.sample_by));
    }
    if !table.ttl.is_empty() {
        sql.push_str(&format!(" TTL {}", table.ttl));
    }
    if !table.settings.is_empty() {
        let sorted: BTreeMap<&String, &String> = table.settings.iter().collect();
        sql.push_str(&format!(" SETTINGS {}", settings_list(&sorted)));
    }
    check_size(&sql)?;
    Ok(Statement { sql, settings: features::query_settings(table, server) })
}

/// ClickHouse refuses statements past max_query_size (256 KiB by default).
fn check_size(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_DDL {
        return Err(format!(
            "its CREATE TABLE statement is {} bytes; ClickHouse takes at most {MAX_DDL}: use fewer or shorter comments, enum members or JSON paths",
            sql.len()
        ));
    }
    Ok(())
}

/// Refuses, when a plan is validated, a table whose CREATE TABLE ClickHouse would refuse for its size (rendered
/// for a modern server, whose DDL is the longest).
pub fn check_create_size(table: &Table) -> Result<(), String> {
    match create_table("database", &table.name, table, &Server::MODERN) {
        Ok(_) => Ok(()),
        Err(e) if e.starts_with("its CREATE TABLE") => Err(e),
        // Other errors are the fields' own, reported by their validation.
        Err(_) => Ok(()),
    }
}

/// The longest CREATE TABLE rendered, leaving room below ClickHouse's default max_query_size (256 KiB).
const MAX_DDL: usize = 200 << 10;

/// The ALTERs that take the table's options from `stored` to `desired`, where the diff allowed the change (TTL,
/// settings, indexes); column changes are made apart. Indexes that go are dropped first, and changed ones
/// dropped and added again.
pub fn alter_options(database: &str, physical: &str, desired: &Table, stored: &Table, server: &Server) -> Vec<Statement> {
    let target = format!("ALTER TABLE {}.{}", quote_ch(database), quote_ch(physical));
    let mut out = Vec::new();
    let settings = features::query_settings(desired, server);
    let mut stmt = |sql: String, settings: &Vec<(&'static str, &'static str)>| out.push(Statement { sql, settings: settings.clone() });
    let old_settings = features::query_settings(stored, server);
    // Made again after a control plane died midway (its apply is finished by the next): where the server takes
    // IF [NOT] EXISTS for indexes (20.1 on; 19.x parses DROP's but fails), an index already gone or added is no
    // error.
    let again = server.version >= features::INDEXES_WITHOUT_SETTING;
    let (if_exists, if_not_exists) = if again { ("IF EXISTS ", "IF NOT EXISTS ") } else { ("", "") };
    for old in &stored.indexes {
        if !desired.indexes.contains(old) {
            stmt(format!("{target} DROP INDEX {if_exists}{}", quote_ch(&old.name)), &old_settings);
        }
    }
    for new in &desired.indexes {
        if !stored.indexes.contains(new) {
            let clause = index_clause(new).replacen("INDEX ", &format!("INDEX {if_not_exists}"), 1);
            stmt(format!("{target} ADD {clause}"), &settings);
        }
    }
    if desired.ttl != stored.ttl && !desired.ttl.is_empty() {
        stmt(format!("{target} MODIFY TTL {}", desired.ttl), &Vec::new());
    }
    let changed: BTreeMap<&String, &String> = desired.settings.iter().filter(|(k, v)| stored.settings.get(*k) != Some(*v)).collect();
    if !changed.is_empty() {
        stmt(format!("{target} MODIFY SETTING {}", settings_list(&changed)), &Vec::new());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{field_type::Kind, Field, FieldType, ScalarType};

    fn field(name: &str, s: ScalarType) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(s as i32)) }), nullable: false, key: false, ..Default::default() }
    }

    fn engine(kind: TableEngineKind) -> TableEngine {
        TableEngine { kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn every_engine_renders_with_its_parameters_quoted() {
        let t = |e: TableEngine| Table { engine: Some(e), ..Default::default() };
        let cases = [
            (t(engine(TableEngineKind::MergeTree)), "MergeTree()"),
            (t(TableEngine { ver: Some("v".into()), is_deleted: Some("d".into()), ..engine(TableEngineKind::ReplacingMergeTree) }), "ReplacingMergeTree(`v`, `d`)"),
            (t(TableEngine { columns: vec!["a".into()], ..engine(TableEngineKind::SummingMergeTree) }), "SummingMergeTree(`a`)"),
            (t(TableEngine { columns: vec!["a".into(), "b".into()], ..engine(TableEngineKind::SummingMergeTree) }), "SummingMergeTree((`a`, `b`))"),
            (t(engine(TableEngineKind::AggregatingMergeTree)), "AggregatingMergeTree()"),
            (t(TableEngine { sign: Some("s".into()), ..engine(TableEngineKind::CollapsingMergeTree) }), "CollapsingMergeTree(`s`)"),
            (
                t(TableEngine { sign: Some("s".into()), ver: Some("v".into()), ..engine(TableEngineKind::VersionedCollapsingMergeTree) }),
                "VersionedCollapsingMergeTree(`s`, `v`)",
            ),
            (
                t(TableEngine { replicated: true, ver: Some("v".into()), ..engine(TableEngineKind::ReplacingMergeTree) }),
                "ReplicatedReplacingMergeTree('/clickhouse/tables/db/{shard}/t', '{replica}', `v`)",
            ),
            (
                t(TableEngine { replicated: true, keeper_path: Some("/p/'x".into()), replica_name: Some("r".into()), ..engine(TableEngineKind::MergeTree) }),
                "ReplicatedMergeTree('/p/\\'x', 'r')",
            ),
            (Table::default(), "MergeTree()"),
        ];
        for (table, want) in cases {
            assert_eq!(engine_clause(&table, "db", "t"), want);
        }
    }

    #[test]
    fn create_table_puts_every_option_in_its_clause() {
        let table = Table {
            fields: vec![field("id", ScalarType::String), field("ts", ScalarType::Datetime)],
            order_by_expression: "id, ts".into(),
            partition_by: "toYYYYMM(ts)".into(),
            primary_key: "id".into(),
            ttl: "ts + INTERVAL 30 DAY".into(),
            settings: [("index_granularity".to_string(), "8192".to_string()), ("storage_policy".to_string(), "default".to_string())].into(),
            indexes: vec![TableIndex { name: "i".into(), expression: "ts".into(), r#type: "minmax".into(), arguments: vec![], granularity: 0 }],
            ..Default::default()
        };
        let s = create_table("db", "t", &table, &Server::MODERN).unwrap();
        assert_eq!(
            s.sql,
            "CREATE TABLE IF NOT EXISTS `db`.`t` (`id` String, `ts` DateTime('UTC'), INDEX `i` (ts) TYPE minmax GRANULARITY 1) \
             ENGINE = MergeTree() PARTITION BY (toYYYYMM(ts)) PRIMARY KEY (id) ORDER BY (id, ts) TTL ts + INTERVAL 30 DAY \
             SETTINGS index_granularity = 8192, storage_policy = 'default'"
        );
        assert!(s.settings.is_empty());
        let old = Server { version: features::Version::new(19, 6), has_keeper: false };
        assert_eq!(create_table("db", "t", &table, &old).unwrap().settings, vec![("allow_experimental_data_skipping_indices", "1")]);
    }

    #[test]
    fn setting_values_are_literals() {
        assert_eq!(setting_value("8192"), "8192");
        assert_eq!(setting_value("0.5"), "0.5");
        assert_eq!(setting_value("true"), "1");
        assert_eq!(setting_value("default"), "'default'");
        assert_eq!(setting_value("'quoted'"), "'quoted'");
        assert_eq!(setting_value("it's"), "'it\\'s'");
    }

    #[test]
    fn option_changes_become_alters() {
        let idx = |n: &str, e: &str| TableIndex { name: n.into(), expression: e.into(), r#type: "set".into(), arguments: vec!["100".into()], granularity: 2 };
        let stored = Table { indexes: vec![idx("a", "x"), idx("b", "y")], settings: [("s".to_string(), "1".to_string())].into(), ..Default::default() };
        let desired = Table {
            indexes: vec![idx("a", "x"), idx("b", "z")],
            ttl: "ts + INTERVAL 1 DAY".into(),
            settings: [("s".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let sql: Vec<String> = alter_options("db", "t", &desired, &stored, &Server::MODERN).into_iter().map(|s| s.sql).collect();
        assert_eq!(
            sql,
            vec![
                "ALTER TABLE `db`.`t` DROP INDEX IF EXISTS `b`",
                "ALTER TABLE `db`.`t` ADD INDEX IF NOT EXISTS `b` (z) TYPE set(100) GRANULARITY 2",
                "ALTER TABLE `db`.`t` MODIFY TTL ts + INTERVAL 1 DAY",
                "ALTER TABLE `db`.`t` MODIFY SETTING s = 2",
            ]
        );
        // 19.x: indexes, but no IF [NOT] EXISTS for them.
        let old = Server { version: features::Version::new(19, 6), has_keeper: false };
        let sql: Vec<String> = alter_options("db", "t", &desired, &stored, &old).into_iter().map(|s| s.sql).collect();
        assert_eq!(sql[..2], ["ALTER TABLE `db`.`t` DROP INDEX `b`", "ALTER TABLE `db`.`t` ADD INDEX `b` (z) TYPE set(100) GRANULARITY 2"]);
    }
}
