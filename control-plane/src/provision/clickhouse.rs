//! ClickHouse tables through the clickhouse crate (HTTP). Validation is off: ClickHouse 18.16 does not speak
//! RowBinaryWithNamesAndTypes. Every identifier is validated by the plan and quoted here.

use crate::error::Error;
use crate::names::quote_ch;
use crate::table::columns;
use crate::table::ddl::{self, Statement};
use crate::table::features::{self, Server, Version};
use crate::types::physical_columns;
use millrace_proto::v1::Table;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    url: String,
    database: String,
    timeout: Duration,
    /// What the server is, learned once (and again after it was unreachable: it may have been upgraded).
    server: Arc<Mutex<Option<Server>>>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct VersionRow {
    v: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Column {
    name: String,
    r#type: String,
}

impl ClickHouse {
    pub fn new(url: &str, user: &str, password: &str, database: &str, timeout: Duration) -> Self {
        // Uncompressed: the control plane's queries are small, and any server speaking ClickHouse's HTTP interface
        // answers them (tests run one over chdb for a modern ClickHouse).
        let mut client = clickhouse::Client::default()
            .with_url(url)
            .with_user(user)
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if !password.is_empty() {
            client = client.with_password(password);
        }
        Self { client, url: url.to_string(), database: database.to_string(), timeout, server: Arc::default() }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The database a table lives in: its own, else the control plane's.
    fn database_of<'a>(&'a self, table: &'a Table) -> &'a str {
        if table.database.is_empty() {
            &self.database
        } else {
            &table.database
        }
    }

    async fn run<T>(&self, what: &str, fut: impl std::future::Future<Output = clickhouse::error::Result<T>>) -> Result<T, Error> {
        let unreachable = |detail: String| {
            *self.server.lock().expect("server lock") = None;
            Err(Error::unavailable("ClickHouse", detail))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => unreachable(format!("{}: no answer to {what} within {:?}", self.url, self.timeout)),
            Ok(Err(clickhouse::error::Error::Network(e))) => unreachable(format!("{}: {e}", self.url)),
            Ok(Err(e)) => Err(Error::Internal(format!("ClickHouse refused {what}: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn execute(&self, what: &str, sql: &str) -> Result<(), Error> {
        self.run_statement(what, &Statement { sql: sql.to_string(), settings: Vec::new() }).await
    }

    /// Sent verbatim (`query_raw`): a `?` in a user's expression is not a bind placeholder.
    async fn run_statement(&self, what: &str, stmt: &Statement) -> Result<(), Error> {
        tracing::debug!(sql = stmt.sql.as_str(), "clickhouse");
        let mut query = self.client.query_raw(&stmt.sql);
        for (k, v) in &stmt.settings {
            query = query.with_setting(*k, *v);
        }
        self.run(what, query.execute()).await
    }

    /// The server's version and whether it has a keeper, asked once (`SELECT version()`) and kept.
    pub async fn server(&self) -> Result<Server, Error> {
        let known = self.server.lock().expect("server lock").clone();
        if let Some(s) = known {
            return Ok(s);
        }
        let row: VersionRow = self.run("SELECT version()", self.client.query("SELECT version() AS v").fetch_one()).await?;
        let version = Version::parse(&row.v)
            .ok_or_else(|| Error::Internal(format!("ClickHouse reported version {:?}, which Millrace cannot read", row.v)))?;
        // system.zookeeper answers only on a server with ZooKeeper or Keeper configured (18.16 does not even
        // have the table without one); any refusal means none.
        let has_keeper = match self.execute("reading system.zookeeper", "SELECT count() FROM system.zookeeper WHERE path = '/'").await {
            Ok(()) => true,
            Err(Error::Internal(_)) => false,
            Err(e) => return Err(e),
        };
        let server = Server { version, has_keeper };
        tracing::info!(version = %row.v, has_keeper, "ClickHouse server");
        *self.server.lock().expect("server lock") = Some(server.clone());
        Ok(server)
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.execute("SELECT 1", "SELECT 1").await
    }

    /// Current columns (name, type) of a table, or None if it does not exist.
    pub async fn columns(&self, database: &str, table: &str) -> Result<Option<Vec<(String, String)>>, Error> {
        let rows: Vec<Column> = self
            .run(
                "reading system.columns",
                self.client
                    .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
                    .bind(database)
                    .bind(table)
                    .fetch_all(),
            )
            .await?;
        Ok(if rows.is_empty() { None } else { Some(rows.into_iter().map(|c| (c.name, c.r#type)).collect()) })
    }

    /// Creates the table, or adds the declared columns it lacks, applies the option changes from `stored` the
    /// diff allowed (TTL, settings, indexes: `table::ddl`), and drops `drop` columns. A column that exists with
    /// another type is refused rather than altered: that would rewrite data.
    pub async fn ensure_table(&self, name: &str, table: &Table, stored: Option<&Table>, drop: &[String], server: &Server) -> Result<(), Error> {
        let database = self.database_of(table);
        let table_ref = format!("{}.{}", quote_ch(database), quote_ch(name));
        self.execute("CREATE DATABASE", &format!("CREATE DATABASE IF NOT EXISTS {}", quote_ch(database))).await?;
        let invalid = |e: crate::types::FieldError| Error::InvalidArgument(format!("table `{name}`: field `{}`: {}", e.field, e.reason));
        let mut declared = Vec::with_capacity(table.fields.len());
        for f in &table.fields {
            declared.extend(physical_columns(f, server.dialect()).map_err(invalid)?);
        }
        match self.columns(database, name).await? {
            None => {
                let stmt = ddl::create_table(database, name, table, server).map_err(|e| Error::InvalidArgument(format!("table `{name}`: {e}")))?;
                self.run_statement("CREATE TABLE", &stmt).await
            }
            Some(existing) => {
                if stored.is_none() {
                    self.check_engine(database, name, table).await?;
                }
                for (col, ty) in &declared {
                    if let Some((_, have)) = existing.iter().find(|(n, _)| n == col) {
                        if !same_column_type(have, ty) {
                            return Err(Error::FailedPrecondition(format!(
                                "ClickHouse table `{name}` has column `{col}` of type {have}, but the plan declares {ty}"
                            )));
                        }
                    }
                }
                let settings = features::query_settings(table, server);
                for f in &table.fields {
                    for def in columns::additions(f, &existing, server).map_err(|e| Error::InvalidArgument(format!("table `{name}`: {e}")))? {
                        let stmt = Statement { sql: format!("ALTER TABLE {table_ref} ADD COLUMN {def}"), settings: settings.clone() };
                        self.run_statement("ALTER TABLE ADD COLUMN", &stmt).await?;
                    }
                }
                let attribute_alters = match stored {
                    Some(s) => columns::alters(&table.fields, &s.fields, &existing).map_err(|e| Error::InvalidArgument(format!("table `{name}`: {e}")))?,
                    None => Vec::new(),
                };
                for alter in attribute_alters {
                    let stmt = Statement { sql: format!("ALTER TABLE {table_ref} {alter}"), settings: settings.clone() };
                    self.run_statement("ALTER TABLE MODIFY COLUMN", &stmt).await?;
                }
                // After new columns (an index may use them), before dropped ones (an index may have used them).
                for stmt in stored.map(|s| ddl::alter_options(database, name, table, s, server)).unwrap_or_default() {
                    self.run_statement("ALTER TABLE", &stmt).await?;
                }
                // A dropped Nested field is its arrays (`items.sku`, ...): field names hold no dots, so the prefix is its own.
                let dropped = |n: &String| drop.iter().any(|c| n == c || n.strip_prefix(c.as_str()).is_some_and(|rest| rest.starts_with('.')));
                for (col, _) in existing.iter().filter(|(n, _)| dropped(n)) {
                    let sql = format!("ALTER TABLE {table_ref} DROP COLUMN {}", quote_ch(col));
                    self.execute("ALTER TABLE DROP COLUMN", &sql).await?;
                }
                Ok(())
            }
        }
    }

    /// A table the plan declares for the first time but that exists already (made by hand, or by a control plane
    /// with another store) must have the declared engine: Millrace cannot change it.
    async fn check_engine(&self, database: &str, name: &str, table: &Table) -> Result<(), Error> {
        let rows: Vec<VersionRow> = self
            .run(
                "reading system.tables",
                self.client.query("SELECT engine AS v FROM system.tables WHERE database = ? AND name = ?").bind(database).bind(name).fetch_all(),
            )
            .await?;
        let declared = table.engine.as_ref().map(ddl::engine_name).unwrap_or_else(|| "MergeTree".into());
        match rows.first() {
            Some(have) if have.v != declared => Err(Error::FailedPrecondition(format!(
                "ClickHouse table `{database}`.`{name}` exists with engine {}, but the plan declares {declared}: declare its engine, or another name or version",
                have.v
            ))),
            _ => Ok(()),
        }
    }

    pub async fn drop_table(&self, name: &str, table: &Table) -> Result<(), Error> {
        let sql = format!("DROP TABLE IF EXISTS {}.{}", quote_ch(self.database_of(table)), quote_ch(name));
        self.execute("DROP TABLE", &sql).await
    }
}

/// Column types as ClickHouse reports them. `DateTime` columns made before they were declared `DateTime('UTC')`
/// hold the same values on a server whose time zone is UTC (ours is), so they count as the same type. Servers
/// space and spell parameters their own way (`JSON(max_dynamic_paths = 8)`), so spaces do not count, nor do a JSON
/// column's parameters, which it reports in its own order.
fn same_column_type(have: &str, declared: &str) -> bool {
    // LowCardinality is how values are stored, not what they are: a server older than 19.0 has the plain column,
    // and an existing column is not converted.
    let norm = |t: &str| {
        let t: String = t.replace("DateTime('UTC')", "DateTime").chars().filter(|c| !c.is_whitespace()).collect();
        let t = strip_low_cardinality(&t);
        // A table made before its server had Bool (or by an older Millrace) holds booleans as UInt8: the same values.
        let t = replace_word(&t, "Bool", "UInt8");
        // Aggregate function names and parameters as the server spells them: `Sum` is `sum`, `0.50` is `0.5`.
        let t = if t.contains("AggregateFunction(") { canonical_numbers(&t.to_ascii_lowercase()) } else { t };
        if t.starts_with("JSON(") {
            "JSON".to_string()
        } else {
            t
        }
    };
    have == declared || norm(have) == norm(declared)
}

/// `t` with every whole word `from` (outside quotes) replaced by `to`.
fn replace_word(t: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let (mut quote, mut word) = (None::<char>, String::new());
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(if word == from { to } else { word });
        word.clear();
    };
    for c in t.chars() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c.is_ascii_alphanumeric() || c == '_' => word.push(c),
            None => {
                flush(&mut word, &mut out);
                if c == '\'' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Every number in `t` written as its shortest form (`0.50` and `.5` are `0.5`, `1e-1` is `0.1`).
fn canonical_numbers(t: &str) -> String {
    let bytes = t.as_bytes();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = (bytes[i].is_ascii_digit() || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts_number {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || ((bytes[i] == b'-' || bytes[i] == b'+') && matches!(bytes[i - 1], b'e'))) {
            i += 1;
        }
        let text = &t[start..i];
        match text.parse::<f64>() {
            Ok(v) => out.push_str(&v.to_string()),
            Err(_) => out.push_str(text),
        }
    }
    out
}

/// `LowCardinality(T)` -> `T`, at any depth.
fn strip_low_cardinality(t: &str) -> String {
    let mut out = t.to_string();
    while let Some(i) = out.find("LowCardinality(") {
        let inner_start = i + "LowCardinality(".len();
        let mut depth = 1;
        let mut end = inner_start;
        for (j, c) in out[inner_start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = inner_start + j;
                break;
            }
        }
        if depth != 0 {
            break;
        }
        out = format!("{}{}{}", &out[..i], &out[inner_start..end], &out[end + 1..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_types_compare_as_servers_spell_them() {
        assert!(same_column_type("DateTime", "DateTime('UTC')"));
        assert!(same_column_type("String", "LowCardinality(String)"));
        assert!(same_column_type("Map(String, Nullable(String))", "Map(String, LowCardinality(Nullable(String)))"));
        assert!(same_column_type("JSON(max_dynamic_paths = 8)", "JSON(max_dynamic_paths=8)"));
        assert!(same_column_type("AggregateFunction(sum, Int64)", "AggregateFunction(Sum, Int64)"));
        assert!(same_column_type("AggregateFunction(quantiles(0.5, 0.9), Float64)", "AggregateFunction(quantiles(0.50, .9), Float64)"));
        assert!(same_column_type("SimpleAggregateFunction(sum, UInt64)", "SimpleAggregateFunction(SUM, UInt64)"));
        assert!(!same_column_type("AggregateFunction(quantiles(0.5), Float64)", "AggregateFunction(quantiles(0.9), Float64)"));
        assert!(!same_column_type("Int64", "Int32"));
        assert!(same_column_type("UInt8", "Bool") && same_column_type("Array(Nullable(UInt8))", "Array(Nullable(Bool))"));
        assert!(!same_column_type("Enum8('Bool' = 1)", "Enum8('UInt8' = 1)"), "quoted labels are no types");
        assert!(!same_column_type("Array(String)", "String"));
    }
}
