//! What each table option needs of the ClickHouse server, so that a plan a server cannot carry out is refused
//! before anything is created, naming the feature and the first version that has it. The test server is
//! Debian's ClickHouse 18.16; production runs current ones.

use millrace_proto::v1::Table;
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

/// The query settings a statement about `table` needs on this server (sent with the query, not stored).
pub fn query_settings(table: &Table, server: &Server) -> Vec<(&'static str, &'static str)> {
    if !table.indexes.is_empty() && server.version < INDEXES_WITHOUT_SETTING {
        vec![("allow_experimental_data_skipping_indices", "1")]
    } else {
        Vec::new()
    }
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
}
