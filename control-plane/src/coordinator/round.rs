//! One scheduling round, run by the leader only: place every desired unit, store what moved or changed (in a
//! transaction that checks the leader's term first), announce it to the other control planes, and send each
//! worker watching this one its set when it changed.

use super::partitions::{keep_units_of_unknown_counts, known_counts};
use super::Coordinator;
use crate::error::Error;
use crate::scheduler::{desired_units, place_avoiding, Placement};
use crate::store::Store;
use millrace_proto::v1::WorkUnit;
use prost::Message;
use sqlx::Row;
use std::collections::HashMap;

/// Key of the advisory lock that serialises scheduling rounds: only the leader runs them, but a deposed leader's
/// round may still be waiting for its first statement (its term check then fails).
const SCHEDULE_LOCK: i64 = 0x6d69_6c6c_7363_6864;

/// A unit's row as stored: where it is, what it was scheduled as, and where it is being handed over to.
struct Stored {
    placement: Placement,
    definition: Vec<u8>,
    handover_to: Option<String>,
    handover_expired: bool,
}

/// How long a live holder has to let go of a unit moving to another live worker (finish its in-flight batches,
/// commit): then the unit moves anyway. Workers give up draining well before (see the worker's `RELEASE_LIMIT`).
const HANDOVER_TIMEOUT_MS: i64 = 10_000;

impl Coordinator {
    /// One round, abandoned after `ROUND_TIMEOUT` (see there).
    pub async fn reschedule(&self) -> Result<(), Error> {
        match tokio::time::timeout(super::ROUND_TIMEOUT, self.round()).await {
            Ok(done) => done,
            Err(_) => Err(Error::unavailable("Postgres", format!("a scheduling round took over {:?}; abandoned", super::ROUND_TIMEOUT))),
        }
    }

    async fn round(&self) -> Result<(), Error> {
        let _round = self.inner.round.lock().await;
        // The term this round acts in; a round of a term no longer current commits nothing.
        let term = self.inner.leadership.current()?;
        let pool = self.inner.store.pool();
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SCHEDULE_LOCK).execute(&mut *tx).await?;
        self.inner.leadership.fence(&mut tx, term).await?;
        let state = Store::load_state(&mut *tx).await?;
        let partitions = known_counts(&mut tx).await?;
        let mut units = desired_units(&state, &self.inner.names, &partitions);
        let live: Vec<String> =
            sqlx::query_scalar("SELECT worker_id FROM workers WHERE lease_expires_at > now() ORDER BY worker_id")
                .fetch_all(&mut *tx)
                .await?;
        let stored: HashMap<String, Stored> = sqlx::query(
            "SELECT unit_id, worker_id, epoch, definition, handover_to,
               COALESCE(handover_since < clock_timestamp() - $1 * interval '1 millisecond', false) AS handover_expired
             FROM assignments",
        )
        .bind(HANDOVER_TIMEOUT_MS)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            let epoch: i64 = r.get("epoch");
            let placement = Placement { worker: r.get("worker_id"), epoch: epoch as u64 };
            let stored = Stored { placement, definition: r.get("definition"), handover_to: r.get("handover_to"), handover_expired: r.get("handover_expired") };
            (r.get("unit_id"), stored)
        })
        .collect();
        let kept = keep_units_of_unknown_counts(&mut units, stored.iter().map(|(u, s)| (u, s.definition.as_slice())), &partitions);
        if !kept.is_empty() {
            tracing::debug!(units = ?kept, "kept: their source topic's partition count is not known yet");
        }
        let current: HashMap<String, Placement> = stored.iter().map(|(u, s)| (u.clone(), s.placement.clone())).collect();
        let ids: Vec<String> = units.keys().cloned().collect();
        // Units go where they can run: a live worker that refused one (its sidecar lacks the function) gets it
        // only when every live worker did. A redefined unit is tried anew.
        let redefined: Vec<&String> = units
            .iter()
            .filter(|(u, w)| stored.get(*u).is_some_and(|o| !o.definition.is_empty() && o.definition != w.encode_to_vec()))
            .map(|(u, _)| u)
            .collect();
        let refused = super::refusals::current(&mut tx, &units, &redefined).await?;
        let placed = place_avoiding(&ids, &live, &current, &refused);
        let gone: Vec<&String> = current.keys().filter(|u| !units.contains_key(*u)).collect();
        let mut changed = !gone.is_empty();
        if !gone.is_empty() {
            sqlx::query("DELETE FROM assignments WHERE unit_id = ANY($1)").bind(&gone).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM sync_offsets WHERE unit_id = ANY($1)").bind(&gone).execute(&mut *tx).await?;
        }
        for (unit_id, mut p) in placed {
            let unit = &units[&unit_id];
            let definition = unit.encode_to_vec();
            let old = stored.get(&unit_id);
            // Rows written before definitions were stored have none: they are recorded, not judged.
            let known = old.filter(|o| !o.definition.is_empty());
            let redefined = known.is_some_and(|o| o.definition != definition);
            // A changed definition is a new epoch even where the unit stays: the worker replaces the running unit.
            if redefined && old.is_some_and(|o| o.placement.epoch == p.epoch) {
                p.epoch += 1;
            }
            if let Some(o) = old.filter(|o| o.definition == definition) {
                if o.placement == p {
                    // Staying where it is: a hand-over begun elsewhere is called off (the holder gets it back).
                    if o.handover_to.is_some() {
                        sqlx::query("UPDATE assignments SET handover_to = NULL, handover_since = NULL WHERE unit_id = $1").bind(&unit_id).execute(&mut *tx).await?;
                        changed = true;
                    }
                    continue;
                }
                // Moving from one live worker to another: handed over. The holder's set no longer has it, so it
                // finishes what it has in flight, commits and lets go (`released` in its progress report); only
                // then is the unit placed on the other worker, at a new epoch. Both never process it at once.
                let from_live = o.placement.worker.as_ref().is_some_and(|w| live.contains(w));
                if from_live && p.worker.is_some() && p.worker != o.placement.worker && !o.handover_expired {
                    if o.handover_to != p.worker {
                        sqlx::query("UPDATE assignments SET handover_to = $2, handover_since = clock_timestamp() WHERE unit_id = $1")
                            .bind(&unit_id)
                            .bind(&p.worker)
                            .execute(&mut *tx)
                            .await?;
                        changed = true;
                        tracing::info!(unit = unit_id, from = o.placement.worker.as_deref().unwrap_or("-"), to = p.worker.as_deref().unwrap_or("-"), "handing over");
                    }
                    continue;
                }
                if o.handover_to.is_some() && o.handover_expired {
                    tracing::warn!(unit = unit_id, "the holder did not let go of the unit in time: moving it anyway");
                }
            }
            // An offset of one topic means nothing in another: a new source is read from its beginning. A table
            // sync into another table (a new version, say) starts where it left that table, if it ever synced into
            // it, else from the stream's beginning: a new table gets every record the stream holds, and one synced
            // into again gets no row twice.
            let before = known.and_then(|o| WorkUnit::decode(o.definition.as_slice()).ok());
            let target = |u: &WorkUnit| u.table.as_ref().map(|t| format!("{}.{}", t.database, t.table));
            let restart_at: Option<i64> = match &before {
                Some(w) if w.source_topic != unit.source_topic => Some(-1),
                Some(w) if target(w) != target(unit) => {
                    let (Some(left), Some(entering)) = (target(w), target(unit)) else { return Err(Error::Internal("a table sync without its table".into())) };
                    sqlx::query(
                        "INSERT INTO sync_offsets (unit_id, target, committed_offset)
                         SELECT unit_id, $2, committed_offset FROM assignments WHERE unit_id = $1
                         ON CONFLICT (unit_id, target) DO UPDATE SET committed_offset = EXCLUDED.committed_offset, updated_at = now()",
                    )
                    .bind(&unit_id)
                    .bind(&left)
                    .execute(&mut *tx)
                    .await?;
                    let resumed: Option<i64> = sqlx::query_scalar("SELECT committed_offset FROM sync_offsets WHERE unit_id = $1 AND target = $2")
                        .bind(&unit_id)
                        .bind(&entering)
                        .fetch_optional(&mut *tx)
                        .await?;
                    Some(resumed.unwrap_or(-1))
                }
                _ => None,
            };
            let new_source = restart_at.is_some();
            // Every new epoch (a new row, a move, a redefinition) is drawn from one sequence, so it is above any
            // epoch this unit ever had, even in a row deleted since: `place` only says whether it changes. Never
            // below the row's own (a control plane of an older version may have written a higher one).
            let bump = old.is_none_or(|o| o.placement.epoch != p.epoch);
            let epoch: i64 = sqlx::query_scalar(
                "INSERT INTO assignments (unit_id, worker_id, epoch, definition)
                 VALUES ($1, $2, CASE WHEN $6 THEN nextval('unit_epoch') ELSE $3 END, $4)
                 ON CONFLICT (unit_id) DO UPDATE SET worker_id = EXCLUDED.worker_id,
                   epoch = GREATEST(EXCLUDED.epoch, assignments.epoch + CASE WHEN $6 THEN 1 ELSE 0 END),
                   definition = EXCLUDED.definition, updated_at = now(), handover_to = NULL, handover_since = NULL,
                   committed_offset = CASE WHEN $5 THEN $7 ELSE assignments.committed_offset END,
                   lag = CASE WHEN $5 THEN -1 ELSE assignments.lag END,
                   error = CASE WHEN assignments.epoch = EXCLUDED.epoch THEN assignments.error ELSE '' END
                 RETURNING epoch",
            )
            .bind(&unit_id)
            .bind(&p.worker)
            .bind(p.epoch as i64)
            .bind(&definition)
            .bind(new_source)
            .bind(bump)
            .bind(restart_at.unwrap_or(-1))
            .fetch_one(&mut *tx)
            .await?;
            p.epoch = epoch as u64;
            changed = true;
            tracing::info!(unit = unit_id, worker = p.worker.as_deref().unwrap_or("-"), epoch = p.epoch, redefined, new_source, "unit placed");
        }
        // Forget workers long dead, so the list stays readable.
        sqlx::query("DELETE FROM workers WHERE lease_expires_at < now() - interval '1 hour'").execute(&mut *tx).await?;
        if changed {
            // Delivered at commit, and only if it commits: every control plane then publishes the stored sets.
            sqlx::query("SELECT pg_notify($1, '')").bind(super::notify::ASSIGNMENTS).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.publish().await
    }
}
