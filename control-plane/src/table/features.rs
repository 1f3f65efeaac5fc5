//! What each table option needs of the ClickHouse server, so that a plan a server cannot carry out is refused
//! before anything is created, naming the feature and the first version that has it. The test server is
//! Debian's ClickHouse 18.16; production runs current ones.

use millrace_proto::v1::{field_type::Kind, Field, FieldType, ScalarType, Table};
use std::fmt;

/// A server version, major.minor (the patch level adds no table features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// From `SELECT version()`: "18.16.1", "24.8.4.13", "26.1.1.1-testing".
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the control plane knows of its ClickHouse server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub version: Version,
    /// ZooKeeper or ClickHouse Keeper configured: Replicated engines need one.
    pub has_keeper: bool,
}

impl Server {
    /// A modern server with a keeper: what DDL is rendered for when no server is asked (tests, `millrace-ddl`).
    pub const MODERN: Server = Server { version: Version::new(26, 1), has_keeper: true };

    /// How its column types look.
    pub fn dialect(&self) -> crate::types::Dialect {
        crate::types::Dialect { bool_type: self.version >= BOOL }
    }
}

/// Table TTL (and ALTER TABLE ... MODIFY TTL).
pub const TTL: Version = Version::new(19, 6);
/// ALTER TABLE ... MODIFY SETTING.
pub const MODIFY_SETTING: Version = Version::new(19, 14);
/// ReplacingMergeTree's `is_deleted` column.
pub const IS_DELETED: Version = Version::new(23, 2);
/// Data skipping indexes without `allow_experimental_data_skipping_indices` (removed in 20.1.2).
pub const INDEXES_WITHOUT_SETTING: Version = Version::new(20, 1);
/// Data skipping indexes behind `allow_experimental_data_skipping_indices`: 18.16 has none.
pub const INDEXES: Version = Version::new(19, 1);

/// LowCardinality columns without `allow_experimental_low_cardinality_type`. Older servers get the plain column:
/// LowCardinality changes how values are stored, never what they are.
pub const LOW_CARDINALITY: Version = Version::new(19, 0);
/// Column compression codecs.
pub const CODEC: Version = Version::new(19, 1);
/// The IPv4 and IPv6 types.
pub const IP: Version = Version::new(19, 3);
/// SimpleAggregateFunction columns.
pub const SIMPLE_AGGREGATE: Version = Version::new(19, 8);
/// input_format_defaults_for_omitted_fields: a DEFAULT filled for a field a JSONEachRow row leaves out.
pub const OMITTED_DEFAULTS: Version = Version::new(19, 12);
/// The Bool type (before it, booleans are UInt8 columns: `Server::dialect`).
pub const BOOL: Version = Version::new(21, 12);
/// DateTime64.
pub const DATETIME64: Version = Version::new(20, 1);
/// Map without `allow_experimental_map_type`.
pub const MAP: Version = Version::new(21, 8);
/// The JSON type, behind `allow_experimental_json_type` until 25.3.
pub const JSON: Version = Version::new(24, 8);
pub const JSON_WITHOUT_SETTING: Version = Version::new(25, 3);

/// The query settings a statement about `table` needs on this server (sent with the query, not stored).
pub fn query_settings(table: &Table, server: &Server) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if !table.indexes.is_empty() && server.version < INDEXES_WITHOUT_SETTING {
        out.push(("allow_experimental_data_skipping_indices", "1"));
    }
    let json = table.fields.iter().any(|f| field_needs(f).iter().any(|(_, v)| *v == JSON));
    if json && server.version < JSON_WITHOUT_SETTING {
        out.push(("allow_experimental_json_type", "1"));
    }
    out
}

/// What a field's column needs of the server: (the feature, the first version that has it).
pub fn field_needs(f: &Field) -> Vec<(&'static str, Version)> {
    let mut out = Vec::new();
    if !f.codec.is_empty() {
        out.push(("a column codec", CODEC));
    }
    if !f.ttl.is_empty() {
        out.push(("a column TTL", TTL));
    }
    if !f.default_expression.is_empty() {
        out.push(("a column DEFAULT that records may leave out (input_format_defaults_for_omitted_fields)", OMITTED_DEFAULTS));
    }
    if let Some(a) = &f.aggregate {
        if a.simple {
            out.push(("a SimpleAggregateFunction column", SIMPLE_AGGREGATE));
        }
        a.arguments.iter().for_each(|t| type_needs(t, &mut out));
    }
    if let Some(t) = &f.r#type {
        type_needs(t, &mut out);
    }
    out
}

fn type_needs(t: &FieldType, out: &mut Vec<(&'static str, Version)>) {
    match &t.kind {
        Some(Kind::Scalar(s)) if matches!(ScalarType::try_from(*s), Ok(ScalarType::Ipv4 | ScalarType::Ipv6)) => {
            out.push(("an IPv4 or IPv6 column", IP))
        }
        Some(Kind::Datetime64(_)) => out.push(("a DateTime64 column (clickhouse_datetime64)", DATETIME64)),
        Some(Kind::Map(m)) => {
            out.push(("a Map column (dict[K, V])", MAP));
            m.key.iter().chain(m.value.iter()).for_each(|t| type_needs(t, out));
        }
        Some(Kind::Json(j)) => {
            out.push(("a JSON column (dict[str, Any])", JSON));
            j.typed_paths.iter().filter_map(|f| f.r#type.as_ref()).for_each(|t| type_needs(t, out));
        }
        Some(Kind::Array(i)) | Some(Kind::Optional(i)) => type_needs(i, out),
        Some(Kind::Record(r)) => r.fields.iter().filter_map(|f| f.r#type.as_ref()).for_each(|t| type_needs(t, out)),
        _ => {}
    }
}

fn check_fields(table: &Table, server: &Server) -> Result<(), String> {
    for f in &table.fields {
        for (what, since) in field_needs(f) {
            need(what, since, server).map_err(|e| format!("field `{}`: {e}", f.name))?;
        }
    }
    Ok(())
}

fn need(what: &str, since: Version, server: &Server) -> Result<(), String> {
    if server.version < since {
        Err(format!(
            "{what} needs ClickHouse {since} or later, and this server is {}: upgrade it, or leave the option out",
            server.version
        ))
    } else {
        Ok(())
    }
}

/// Whether the server can create `table` as declared; the error names the feature and the version that has it.
pub fn check_create(table: &Table, server: &Server) -> Result<(), String> {
    check_fields(table, server)?;
    if !table.ttl.is_empty() {
        need("a table TTL", TTL, server)?;
    }
    if !table.indexes.is_empty() {
        need("a data skipping index", INDEXES, server)?;
    }
    if let Some(e) = &table.engine {
        if e.is_deleted.is_some() {
            need("ReplacingMergeTree's is_deleted column", IS_DELETED, server)?;
        }
        if e.replicated && !server.has_keeper {
            return Err(format!(
                "the {} engine needs ZooKeeper or ClickHouse Keeper, and this server has none configured: \
                 use the engine's non-replicated form, or configure <zookeeper> on the server",
                super::ddl::engine_name(e)
            ));
        }
    }
    Ok(())
}

/// Whether the server can make the ALTERs that take a table from `stored` to `desired`.
pub fn check_alter(desired: &Table, stored: &Table, server: &Server) -> Result<(), String> {
    check_fields(desired, server)?;
    if desired.ttl != stored.ttl {
        need("changing a table's TTL (ALTER TABLE ... MODIFY TTL)", TTL, server)?;
    }
    if desired.settings != stored.settings {
        need("changing a table's settings (ALTER TABLE ... MODIFY SETTING)", MODIFY_SETTING, server)?;
    }
    if desired.indexes != stored.indexes {
        need("a data skipping index", INDEXES, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{TableEngine, TableEngineKind};

    #[test]
    fn versions_parse_as_servers_report_them() {
        assert_eq!(Version::parse("18.16.1"), Some(Version::new(18, 16)));
        assert_eq!(Version::parse("26.1.2.11-testing"), Some(Version::new(26, 1)));
        assert_eq!(Version::parse("x"), None);
        assert!(Version::new(18, 16) < Version::new(19, 6) && Version::new(19, 14) < Version::new(20, 1));
    }

    #[test]
    fn an_option_the_server_lacks_is_refused_naming_the_version_that_has_it() {
        let old = Server { version: Version::new(18, 16), has_keeper: false };
        let t = Table { ttl: "ts + INTERVAL 1 DAY".into(), ..Default::default() };
        let e = check_create(&t, &old).unwrap_err();
        assert!(e.contains("TTL") && e.contains("19.6") && e.contains("18.16"), "{e}");
        assert!(check_create(&t, &Server::MODERN).is_ok());
        let engine = TableEngine {
            kind: TableEngineKind::ReplacingMergeTree as i32,
            ver: Some("v".into()),
            is_deleted: Some("d".into()),
            ..Default::default()
        };
        let t = Table { engine: Some(engine.clone()), ..Default::default() };
        let e = check_create(&t, &Server { version: Version::new(22, 8), has_keeper: true }).unwrap_err();
        assert!(e.contains("is_deleted") && e.contains("23.2"), "{e}");
        let replicated = Table { engine: Some(TableEngine { replicated: true, is_deleted: None, ..engine }), ..Default::default() };
        assert!(check_create(&replicated, &old).unwrap_err().contains("ZooKeeper"));
        let settings = Table { settings: [("a".to_string(), "1".to_string())].into(), ..Default::default() };
        assert!(check_alter(&settings, &Table::default(), &old).unwrap_err().contains("19.14"));
    }

    #[test]
    fn a_column_type_the_server_lacks_is_refused_naming_the_field_and_version() {
        use millrace_proto::v1::{DateTime64Type, JsonType, MapType};
        let ty = |kind| Some(FieldType { kind: Some(kind) });
        let string = ty(Kind::Scalar(ScalarType::String as i32));
        let cases = [
            (Field { name: "t".into(), r#type: ty(Kind::Datetime64(DateTime64Type { precision: 3 })), ..Default::default() }, "20.1"),
            (
                Field {
                    name: "m".into(),
                    r#type: ty(Kind::Map(Box::new(MapType { key: string.clone().map(Box::new), value: string.clone().map(Box::new) }))),
                    ..Default::default()
                },
                "21.8",
            ),
            (Field { name: "j".into(), r#type: ty(Kind::Json(JsonType::default())), ..Default::default() }, "24.8"),
            (Field { name: "ip".into(), r#type: ty(Kind::Scalar(ScalarType::Ipv4 as i32)), ..Default::default() }, "19.3"),
            (Field { name: "d".into(), r#type: string.clone(), default_expression: "'x'".into(), ..Default::default() }, "19.12"),
        ];
        let old = Server { version: Version::new(18, 16), has_keeper: false };
        for (f, version) in cases {
            let t = Table { fields: vec![f.clone()], ..Default::default() };
            let e = check_create(&t, &old).unwrap_err();
            assert!(e.contains(&format!("`{}`", f.name)) && e.contains(version), "{e}");
            assert!(check_create(&t, &Server::MODERN).is_ok());
        }
        let json = Table { fields: vec![Field { name: "j".into(), r#type: ty(Kind::Json(JsonType::default())), ..Default::default() }], ..Default::default() };
        assert_eq!(query_settings(&json, &Server { version: Version::new(24, 8), has_keeper: false }), vec![("allow_experimental_json_type", "1")]);
        assert!(query_settings(&json, &Server::MODERN).is_empty());
    }
}
