//! Declarations and the apply log in Postgres. The short steps of an apply run in transactions that hold an
//! advisory lock, so concurrent applies queue up (for a bounded time); provisioning runs between them, holding
//! none (`crate::intent`).

use crate::diff::Planned;
use crate::error::Error;
use crate::resource::{physical_name, ResourceKey, State};
use chrono::{DateTime, Utc};
use millrace_proto::v1::{ChangeAction, Resource, ResourceChange, ResourceKind};
use prost::Message;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::OwnedMutexGuard;
use sqlx::{PgPool, Row, Transaction};
use std::time::Duration;

/// Any constant: the key of the advisory lock that serialises applies.
const APPLY_LOCK: i64 = 0x6d69_6c6c_7261_6365;

/// A stored declaration and its bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub resource: Resource,
    pub physical_name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ApplyRow {
    pub id: i64,
    pub client: String,
    pub applied_at: DateTime<Utc>,
    pub changes: Vec<ResourceChange>,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Applies of this process queue here, holding no connection while they wait.
    apply_gate: Arc<tokio::sync::Mutex<()>>,
    /// How long an apply waits for another one to finish before it answers busy: in memory (one apply per process
    /// reaches Postgres), and across control planes on the advisory lock.
    apply_wait: Duration,
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Connects the pool for applies and reads, creating the database if it is missing, and applies migrations.
    pub async fn connect(url: &str, timeout: Duration, apply_wait: Duration) -> Result<Self, Error> {
        let shown = redact_url(url);
        let unreachable = |e: sqlx::Error| Error::unavailable("Postgres", format!("{shown}: {e}"));
        let exists = tokio::time::timeout(timeout, Postgres::database_exists(url))
            .await
            .map_err(|_| Error::unavailable("Postgres", format!("{shown}: no answer within {timeout:?}")))?
            .map_err(unreachable)?;
        if !exists {
            // Another control plane starting beside this one may create it first: that is no error.
            if let Err(e) = Postgres::create_database(url).await {
                if !Postgres::database_exists(url).await.unwrap_or(false) {
                    return Err(unreachable(e));
                }
            }
        }
        let store = Self { apply_wait, ..Self::pool_of(url, timeout, 8, Duration::from_secs(30)).await? };
        // Migrations wait for each other (several control planes start at once) and may take long: not under
        // the pool's statement and lock timeouts.
        let mut conn = store.pool.acquire().await?;
        for setting in ["statement_timeout", "lock_timeout"] {
            sqlx::query(&format!("SET {setting} = 0")).execute(&mut *conn).await?;
        }
        let migrated = sqlx::migrate!("./migrations").run_direct(&mut *conn).await;
        // Back to the pool's bounds before the connection is reused.
        for setting in ["statement_timeout", "lock_timeout"] {
            sqlx::query(&format!("SET {setting} = DEFAULT")).execute(&mut *conn).await?;
        }
        migrated.map_err(|e| Error::Internal(format!("migrating {shown}: {e}")))?;
        Ok(store)
    }

    /// A second pool on the same database, for the coordinator: heartbeats, commits and scheduling rounds never
    /// wait for a connection an apply holds (applies spend seconds on the broker and ClickHouse).
    pub async fn connect_coordinator(url: &str, timeout: Duration) -> Result<Self, Error> {
        // Its transactions are short (a round, a commit): one left idle (a round abandoned on a dead connection)
        // must free the scheduling lock soon.
        Self::pool_of(url, timeout, 16, Duration::from_secs(30)).await
    }

    /// A small pool of its own for leadership (renewals must not wait behind heartbeats for a connection) and for
    /// listening to the other control planes (which holds one connection for good).
    pub async fn connect_leadership(url: &str, timeout: Duration) -> Result<PgPool, Error> {
        Ok(Self::pool_of(url, timeout, 4, Duration::from_secs(30)).await?.pool)
    }

    /// A pool whose statements and lock waits are bounded by `timeout` (on the server, so a hung query ends and
    /// frees what waits on it), and whose connections are recycled before a firewall forgets them.
    async fn pool_of(url: &str, timeout: Duration, size: u32, idle_in_transaction: Duration) -> Result<Self, Error> {
        let shown = redact_url(url);
        let ms = timeout.as_millis().max(1).to_string();
        let idle_ms = idle_in_transaction.as_millis().max(1).to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("--database-url {shown}: {e}")))?
            // A session that vanished mid-transaction (its host gone without a reset) must not hold its locks
            // until TCP notices: Postgres ends a transaction idle this long. Keepalives let the server notice a
            // client host that vanished (sqlx sets none on its side; every wait here is bounded by a timeout).
            .options([
                ("statement_timeout", ms.as_str()),
                ("lock_timeout", ms.as_str()),
                ("idle_in_transaction_session_timeout", idle_ms.as_str()),
                ("tcp_keepalives_idle", "10"),
                ("tcp_keepalives_interval", "5"),
                ("tcp_keepalives_count", "3"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(timeout)
            .max_lifetime(Duration::from_secs(30 * 60))
            .idle_timeout(Duration::from_secs(5 * 60))
            .connect_with(options)
            .await
            .map_err(|e| Error::unavailable("Postgres", format!("{shown}: {e}")))?;
        Ok(Self { pool, apply_gate: Arc::default(), apply_wait: timeout })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This process's apply gate: one apply at a time per process, for its whole length (check, provisioning,
    /// record). Waits at most `apply_wait` for an apply in progress, then answers busy.
    pub async fn apply_gate(&self) -> Result<OwnedMutexGuard<()>, Error> {
        tokio::time::timeout(self.apply_wait, self.apply_gate.clone().lock_owned()).await.map_err(|_| self.busy())
    }

    fn busy(&self) -> Error {
        Error::Busy(format!(
            "another apply has been running for over {:?} (it may be waiting on the broker or ClickHouse): try again when it finishes",
            self.apply_wait
        ))
    }

    /// A transaction holding the apply lock (across control planes), waiting at most `apply_wait` for it. Held for
    /// the short steps of an apply only: no transaction is open while the broker or ClickHouse work.
    pub async fn begin_locked(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut tx = self.pool.begin().await?;
        let wait = self.apply_wait.as_millis().max(1);
        for setting in ["lock_timeout", "statement_timeout"] {
            sqlx::query(&format!("SET LOCAL {setting} = {wait}")).execute(&mut *tx).await?;
        }
        match sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPLY_LOCK).execute(&mut *tx).await {
            Err(sqlx::Error::Database(d)) if matches!(d.code().as_deref(), Some("55P03") | Some("57014")) => return Err(self.busy()),
            other => other?,
        };
        // Back to the pool's bounds for the apply's own statements.
        for setting in ["lock_timeout", "statement_timeout"] {
            sqlx::query(&format!("SET LOCAL {setting} = DEFAULT")).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Every declaration, as a state (inside an apply's transaction, or alone with `&pool`).
    pub async fn load_state<'e, E>(exec: E) -> Result<State, Error>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        let rows = sqlx::query("SELECT kind, name, version, spec FROM resources").fetch_all(exec).await?;
        let mut state = State::new();
        for row in rows {
            let (key, resource) = decode_row(&row)?;
            state.insert(key, resource);
        }
        Ok(state)
    }

    /// Declarations with their bookkeeping, optionally of one kind, ordered by kind, name, version.
    pub async fn list(&self, kind: Option<ResourceKind>) -> Result<Vec<StoredRow>, Error> {
        let rows = sqlx::query(
            "SELECT kind, name, version, spec, physical_name, created_at, updated_at FROM resources
             WHERE $1::text IS NULL OR kind = $1 ORDER BY kind, name, version",
        )
        .bind(kind.map(|k| k.as_str_name()))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<StoredRow> = rows.iter().map(stored_row).collect::<Result<_, _>>()?;
        // Order by the enum, not its text, so streams come first as in a plan.
        out.sort_by_key(|r| crate::resource::key_of(crate::resource::spec(&r.resource)));
        Ok(out)
    }

    pub async fn get(&self, key: &ResourceKey) -> Result<Option<StoredRow>, Error> {
        let row = sqlx::query(
            "SELECT kind, name, version, spec, physical_name, created_at, updated_at FROM resources
             WHERE kind = $1 AND name = $2 AND version = $3",
        )
        .bind(key.kind.as_str_name())
        .bind(&key.name)
        .bind(&key.version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_row).transpose()
    }

    /// Writes what an apply changed and logs it; returns the apply's id.
    pub async fn record(
        tx: &mut Transaction<'static, Postgres>,
        planned: &[Planned],
        client: &str,
        topic_namespace: &str,
    ) -> Result<i64, Error> {
        for p in planned {
            let resulting = p.resulting();
            if resulting == p.stored.as_ref() {
                continue;
            }
            match resulting {
                None => {
                    sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2 AND version = $3")
                        .bind(p.key.kind.as_str_name())
                        .bind(&p.key.name)
                        .bind(&p.key.version)
                        .execute(&mut **tx)
                        .await?;
                }
                Some(r) => {
                    let physical = physical_name(crate::resource::spec(r), topic_namespace);
                    sqlx::query(
                        "INSERT INTO resources (kind, name, version, spec, physical_name) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (kind, name, version)
                         DO UPDATE SET spec = EXCLUDED.spec, physical_name = EXCLUDED.physical_name, updated_at = now()",
                    )
                    .bind(p.key.kind.as_str_name())
                    .bind(&p.key.name)
                    .bind(&p.key.version)
                    .bind(r.encode_to_vec())
                    .bind(physical)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        let changes: Vec<serde_json::Value> = planned
            .iter()
            .filter(|p| p.action != ChangeAction::Unchanged)
            .map(|p| {
                serde_json::json!({
                    "kind": p.key.kind.as_str_name(), "name": p.key.name, "version": p.key.version,
                    "action": p.action.as_str_name(), "reason": p.reason,
                })
            })
            .collect();
        // The log holds changes: an apply that changed nothing leaves no row (0), or it would grow without bound.
        if changes.is_empty() {
            return Ok(0);
        }
        let id: i64 = sqlx::query_scalar("INSERT INTO applies (client, changes) VALUES ($1, $2) RETURNING id")
            .bind(client)
            .bind(serde_json::Value::Array(changes))
            .fetch_one(&mut **tx)
            .await?;
        Ok(id)
    }

    pub async fn list_applies(&self, limit: u32) -> Result<Vec<ApplyRow>, Error> {
        let rows = sqlx::query("SELECT id, client, applied_at, changes FROM applies ORDER BY id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let changes: serde_json::Value = row.try_get("changes")?;
                let changes = changes
                    .as_array()
                    .map(|a| a.iter().map(change_from_json).collect())
                    .unwrap_or_default();
                Ok(ApplyRow {
                    id: row.try_get("id")?,
                    client: row.try_get("client")?,
                    applied_at: row.try_get("applied_at")?,
                    changes,
                })
            })
            .collect()
    }

    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn change_from_json(v: &serde_json::Value) -> ResourceChange {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    ResourceChange {
        kind: ResourceKind::from_str_name(&s("kind")).unwrap_or_default() as i32,
        name: s("name"),
        version: s("version"),
        action: ChangeAction::from_str_name(&s("action")).unwrap_or_default() as i32,
        reason: s("reason"),
    }
}

fn decode_row(row: &sqlx::postgres::PgRow) -> Result<(ResourceKey, Resource), Error> {
    let kind: String = row.try_get("kind")?;
    let name: String = row.try_get("name")?;
    let version: String = row.try_get("version")?;
    let bytes: Vec<u8> = row.try_get("spec")?;
    let kind = ResourceKind::from_str_name(&kind)
        .ok_or_else(|| Error::Internal(format!("stored resource {name} has unknown kind {kind}")))?;
    let resource = Resource::decode(bytes.as_slice())
        .map_err(|e| Error::Internal(format!("stored resource {name} cannot be decoded: {e}")))?;
    if resource.spec.is_none() {
        return Err(Error::Internal(format!("stored resource {name} has no spec")));
    }
    Ok((ResourceKey { kind, name, version }, resource))
}

fn stored_row(row: &sqlx::postgres::PgRow) -> Result<StoredRow, Error> {
    let (_, resource) = decode_row(row)?;
    Ok(StoredRow {
        resource,
        physical_name: row.try_get("physical_name")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
