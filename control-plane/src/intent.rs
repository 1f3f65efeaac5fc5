//! The apply in progress, as a row (`apply_intents`). An apply checks its plan and records its intent in one short
//! transaction, provisions the broker and ClickHouse holding no transaction, then records the plan and removes
//! the intent in another. So no Postgres connection, lock or transaction waits on the broker or ClickHouse, and a
//! control plane that dies while provisioning leaves the intent for the next apply or the next leader to finish
//! (creating a topic or a table that exists already changes nothing, so finishing is safe).

use crate::error::Error;
use crate::resource::ResourceKey;
use millrace_proto::v1::{DeleteResourceRequest, Plan, ResourceKind};
use prost::Message;
use sqlx::{PgConnection, Row};

/// What an apply set out to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    Apply(Plan),
    Delete(ResourceKey),
}

/// An intent found in Postgres.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// Err: it cannot be decoded (written by another version), with why.
    pub intent: Result<Intent, String>,
    pub client: String,
    /// The leader's term it is being made in.
    pub term: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl Intent {
    pub fn label(&self) -> &'static str {
        match self {
            Intent::Apply(_) => "apply",
            Intent::Delete(_) => "delete",
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Intent::Apply(plan) => plan.encode_to_vec(),
            Intent::Delete(key) => DeleteResourceRequest {
                kind: key.kind as i32,
                name: key.name.clone(),
                version: key.version.clone(),
                client: String::new(),
            }
            .encode_to_vec(),
        }
    }

    fn decode(kind: &str, payload: &[u8]) -> Result<Self, String> {
        let bad = |e: String| format!("the unfinished {kind} in apply_intents cannot be decoded ({e})");
        match kind {
            "apply" => Plan::decode(payload).map(Intent::Apply).map_err(|e| bad(e.to_string())),
            "delete" => {
                let r = DeleteResourceRequest::decode(payload).map_err(|e| bad(e.to_string()))?;
                let kind = ResourceKind::try_from(r.kind).map_err(|e| bad(e.to_string()))?;
                Ok(Intent::Delete(ResourceKey { kind, name: r.name, version: r.version }))
            }
            other => Err(bad(format!("unknown kind {other:?}"))),
        }
    }
}

/// Records `intent` (inside the apply's first transaction, under the apply lock); returns its id.
pub async fn open(conn: &mut PgConnection, intent: &Intent, client: &str, term: i64) -> Result<i64, Error> {
    let id = sqlx::query_scalar("INSERT INTO apply_intents (kind, payload, client, term) VALUES ($1, $2, $3, $4) RETURNING id")
        .bind(intent.label())
        .bind(intent.payload())
        .bind(client)
        .bind(term)
        .fetch_one(conn)
        .await;
    match id {
        Ok(id) => Ok(id),
        // The `one` constraint: an unfinished apply is there (`pending` is checked first, under the same lock, so
        // this means another control plane wrote one meanwhile).
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23505") => {
            Err(Error::Busy("another apply is unfinished: try again when it finishes".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes intent `id` if it is still made in `term`; false if not (finished, or taken over by the leader of a
/// later term).
pub async fn close(conn: &mut PgConnection, id: i64, term: i64) -> Result<bool, Error> {
    let done = sqlx::query("DELETE FROM apply_intents WHERE id = $1 AND term = $2").bind(id).bind(term).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Removes intent `id` whoever makes it (it is abandoned).
pub async fn abandon(conn: &mut PgConnection, id: i64) -> Result<(), Error> {
    sqlx::query("DELETE FROM apply_intents WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// Makes intent `id` this leader's, in `term`: its earlier maker, should it still be provisioning, no longer leads
/// and can neither record it nor remove it.
pub async fn take_over(conn: &mut PgConnection, id: i64, term: i64) -> Result<bool, Error> {
    let done = sqlx::query("UPDATE apply_intents SET term = $2 WHERE id = $1").bind(id).bind(term).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The unfinished intent, if any.
pub async fn pending(conn: &mut PgConnection) -> Result<Option<Pending>, Error> {
    let row = sqlx::query("SELECT id, kind, payload, client, term, started_at FROM apply_intents ORDER BY id LIMIT 1")
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let kind: String = row.try_get("kind")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(Some(Pending {
        id: row.try_get("id")?,
        intent: Intent::decode(&kind, &payload),
        client: row.try_get("client")?,
        term: row.try_get("term")?,
        started_at: row.try_get("started_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_survive_their_encoding() {
        let key = ResourceKey::new(ResourceKind::Stream, "s", "2");
        let delete = Intent::Delete(key);
        assert_eq!(Intent::decode("delete", &delete.payload()).unwrap(), delete);
        let apply = Intent::Apply(Plan::default());
        assert_eq!(Intent::decode("apply", &apply.payload()).unwrap(), apply);
        assert!(Intent::decode("drop", &[]).is_err());
    }
}
