//! ClickHouse tables through the clickhouse crate (HTTP). Validation is off: ClickHouse 18.16 does not speak
//! RowBinaryWithNamesAndTypes. Every identifier is validated by the plan and quoted here.

use crate::error::Error;
use crate::names::quote_ch;
use crate::types::ch_column_type;
use millrace_proto::v1::Table;
use std::time::Duration;

#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    url: String,
    database: String,
    timeout: Duration,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Column {
    name: String,
    r#type: String,
}

impl ClickHouse {
    pub fn new(url: &str, user: &str, password: &str, database: &str, timeout: Duration) -> Self {
        let mut client = clickhouse::Client::default().with_url(url).with_user(user).with_validation(false);
        if !password.is_empty() {
            client = client.with_password(password);
        }
        Self { client, url: url.to_string(), database: database.to_string(), timeout }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    fn table_ref(&self, table: &str) -> String {
        format!("{}.{}", quote_ch(&self.database), quote_ch(table))
    }

    async fn run<T>(&self, what: &str, fut: impl std::future::Future<Output = clickhouse::error::Result<T>>) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Error::unavailable("ClickHouse", format!("{}: no answer to {what} within {:?}", self.url, self.timeout))),
            Ok(Err(clickhouse::error::Error::Network(e))) => Err(Error::unavailable("ClickHouse", format!("{}: {e}", self.url))),
            Ok(Err(e)) => Err(Error::Internal(format!("ClickHouse refused {what}: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn execute(&self, what: &str, sql: &str) -> Result<(), Error> {
        tracing::debug!(sql, "clickhouse");
        self.run(what, self.client.query(sql).execute()).await
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.execute("SELECT 1", "SELECT 1").await
    }

    /// Current columns (name, type) of a table, or None if it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Option<Vec<(String, String)>>, Error> {
        let rows: Vec<Column> = self
            .run(
                "reading system.columns",
                self.client
                    .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
                    .bind(&self.database)
                    .bind(table)
                    .fetch_all(),
            )
            .await?;
        Ok(if rows.is_empty() { None } else { Some(rows.into_iter().map(|c| (c.name, c.r#type)).collect()) })
    }

    /// Creates the table, or adds the declared columns it lacks (and drops `drop` ones). A column that exists
    /// with another type is refused rather than altered: that would rewrite data.
    pub async fn ensure_table(&self, name: &str, table: &Table, drop: &[String]) -> Result<(), Error> {
        self.execute("CREATE DATABASE", &format!("CREATE DATABASE IF NOT EXISTS {}", quote_ch(&self.database)))
            .await?;
        let mut declared = Vec::with_capacity(table.fields.len());
        for f in &table.fields {
            let ty = ch_column_type(f).map_err(|e| Error::InvalidArgument(format!("table `{name}`: field `{}`: {}", e.field, e.reason)))?;
            declared.push((f.name.clone(), ty));
        }
        match self.columns(name).await? {
            None => {
                let cols: Vec<String> = declared.iter().map(|(n, t)| format!("{} {t}", quote_ch(n))).collect();
                let order = if table.order_by.is_empty() {
                    "tuple()".to_string()
                } else {
                    format!("({})", table.order_by.iter().map(|c| quote_ch(c)).collect::<Vec<_>>().join(", "))
                };
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = MergeTree() ORDER BY {order}",
                    self.table_ref(name),
                    cols.join(", ")
                );
                self.execute("CREATE TABLE", &sql).await
            }
            Some(existing) => {
                for (col, ty) in &declared {
                    match existing.iter().find(|(n, _)| n == col) {
                        Some((_, have)) if !same_column_type(have, ty) => {
                            return Err(Error::FailedPrecondition(format!(
                                "ClickHouse table `{name}` has column `{col}` of type {have}, but the plan declares {ty}"
                            )))
                        }
                        Some(_) => {}
                        None => {
                            let sql = format!("ALTER TABLE {} ADD COLUMN {} {ty}", self.table_ref(name), quote_ch(col));
                            self.execute("ALTER TABLE ADD COLUMN", &sql).await?;
                        }
                    }
                }
                for col in drop.iter().filter(|c| existing.iter().any(|(n, _)| n == *c)) {
                    let sql = format!("ALTER TABLE {} DROP COLUMN {}", self.table_ref(name), quote_ch(col));
                    self.execute("ALTER TABLE DROP COLUMN", &sql).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn drop_table(&self, name: &str) -> Result<(), Error> {
        self.execute("DROP TABLE", &format!("DROP TABLE IF EXISTS {}", self.table_ref(name))).await
    }
}

/// Column types as ClickHouse reports them. `DateTime` columns made before they were declared `DateTime('UTC')`
/// hold the same values on a server whose time zone is UTC (ours is), so they count as the same type.
fn same_column_type(have: &str, declared: &str) -> bool {
    have == declared || have.replace("DateTime('UTC')", "DateTime") == declared.replace("DateTime('UTC')", "DateTime")
}
