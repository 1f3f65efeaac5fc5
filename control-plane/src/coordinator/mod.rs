//! The `WorkerCoordinator` side of the control plane: registration, leases, assignment streams, fenced offset
//! commits, and the loop that keeps placements current. Leases, epochs and offsets live in Postgres and are judged
//! by its clock alone, so a restarted control plane carries on where it stopped. Several control planes may share
//! one database: one leads (`crate::leadership`) and runs rounds; every one serves workers, publishing the sets
//! stored in Postgres when told that they changed (`notify`).

mod notify;
mod partitions;
mod publish;
mod refusals;
mod round;
mod service;
mod session;
#[cfg(test)]
mod tests;

use crate::error::Error;
use crate::leadership::Leadership;
use crate::AbortOnDrop;
use crate::provision::kafka::Kafka;
use crate::store::Store;
use millrace_proto::v1::*;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How often the topics' real partition counts are read from the broker.
const PARTITION_REFRESH: Duration = Duration::from_secs(5);

/// Joins are placed together: the round after a join waits until no other worker joined for `join_quiet`
/// (`--join-quiet-ms`). Each round moves only what balance needs among the workers it sees, so N workers placed
/// one round each would move units again and again (about 2.3x what one round for all of them moves). But no
/// longer than this after the first join of a burst (nor a quarter lease, nor less than the quiet time), so a
/// steady trickle of joins is still placed, and a lease that runs out meanwhile is acted on late by at most this.
const JOIN_MAX_WAIT: Duration = Duration::from_secs(2);
/// A scheduling round that takes longer than this is abandoned (its transaction dropped, the round lock freed):
/// a Postgres connection that died without a reset would otherwise hold every round for minutes.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// A burst of joins not yet placed: when its first and its latest worker registered.
#[derive(Clone, Copy)]
struct Joins {
    first: Instant,
    last: Instant,
}

/// A worker's open assignment stream, and what it was last sent (units and epochs, not offsets).
struct Watcher {
    tx: watch::Sender<Option<AssignmentSet>>,
    last: Option<Vec<(String, u64)>>,
}

struct Inner {
    store: Store,
    kafka: Kafka,
    lease: Duration,
    join_quiet: Duration,
    names: crate::scheduler::Names,
    wake: Notify,
    watchers: Mutex<HashMap<String, Watcher>>,
    version: std::sync::atomic::AtomicU64,
    /// One round at a time in this process, so sets are published in the order they were computed.
    round: tokio::sync::Mutex<()>,
    /// One publish at a time: an older read of the sets must never be delivered after a newer one.
    publishing: tokio::sync::Mutex<()>,
    /// Joins waiting for their round (see `JOIN_QUIET`).
    joins: Mutex<Option<Joins>>,
    leadership: Leadership,
}


#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

fn lease_lost(worker_id: &str) -> Error {
    Error::FailedPrecondition(format!("worker {worker_id} holds no live lease (expired, or replaced): register again"))
}

impl Coordinator {
    pub fn new(
        store: Store,
        kafka: Kafka,
        lease: Duration,
        join_quiet: Duration,
        names: crate::scheduler::Names,
        leadership: Leadership,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                kafka,
                lease,
                join_quiet,
                names,
                wake: Notify::new(),
                watchers: Mutex::new(HashMap::new()),
                version: Default::default(),
                round: tokio::sync::Mutex::new(()),
                publishing: tokio::sync::Mutex::new(()),
                joins: Mutex::new(None),
                leadership,
            }),
        }
    }

    /// This process's --lease-ms: what it writes as the cluster's worker lease when it takes office, and what
    /// workers get while no leader ever wrote one.
    fn lease_ms(&self) -> i64 {
        self.inner.lease.as_millis() as i64
    }

    /// Four heartbeats a lease: a worker can miss one (and retry) and still keep it.
    fn heartbeat_interval_ms(lease_ms: i64) -> u64 {
        (lease_ms / 4).max(50) as u64
    }

    pub fn leadership(&self) -> &Leadership {
        &self.inner.leadership
    }

    /// A worker registered: the scheduling loop places it with the others joining about now, in one round.
    fn joined(&self) {
        let now = Instant::now();
        let mut joins = self.inner.joins.lock().expect("joins lock");
        let first = joins.map_or(now, |j| j.first);
        *joins = Some(Joins { first, last: now });
        drop(joins);
        self.inner.wake.notify_one();
    }

    /// True while joins wait for their round.
    fn joins_pending(&self) -> bool {
        self.inner.joins.lock().expect("joins lock").is_some()
    }

    /// When the pending joins' round is due, if it is not yet; None when no joins wait or their round is due now
    /// (the burst is then closed: a join from here on starts the next one).
    fn joins_due(&self) -> Option<Instant> {
        let mut joins = self.inner.joins.lock().expect("joins lock");
        let j = (*joins)?;
        // A quiet time longer than half a lease is cut there: a lapsed lease must still be acted on in time.
        let quiet = self.inner.join_quiet.min(self.inner.lease / 2);
        let max_wait = JOIN_MAX_WAIT.min(self.inner.lease / 4).max(quiet);
        let due = (j.last + quiet).min(j.first + max_wait);
        if Instant::now() < due {
            return Some(due);
        }
        *joins = None;
        None
    }

    /// Wakes the scheduling loop: placements may have to change.
    pub fn plan_changed(&self) {
        self.inner.wake.notify_one();
    }

    /// After an apply: read the partition counts of the topics it may have created, then schedule at once, so
    /// that when the apply returns every changed unit has been re-sent to its worker at a new epoch.
    pub async fn plan_applied(&self) {
        self.refresh_partitions().await;
        if let Err(e) = self.reschedule().await {
            tracing::warn!(error = %e, "scheduling after an apply failed; the scheduling loop retries");
            self.plan_changed();
        }
    }

    /// While leading: reschedules on every wake-up, and often enough to notice an expired lease within a quarter
    /// lease; partition counts are refreshed beside it, so a slow broker never delays lease expiry. While
    /// following: publishes the stored sets as often (a safety net beside the notifications). Both listen for what
    /// other control planes announce.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let _refresher = {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    if me.inner.leadership.leading() && me.refresh_partitions().await {
                        me.plan_changed();
                    }
                    tokio::time::sleep(PARTITION_REFRESH).await;
                }
            }))
        };
        let _listener = AbortOnDrop(tokio::spawn(self.clone().listen()));
        let mut leadership = self.inner.leadership.subscribe();
        let mut term = None;
        let tick = (self.inner.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            let now = self.inner.leadership.term();
            if now != term {
                tracing::info!(term = ?now, "leadership changed: {}", if now.is_some() { "running rounds" } else { "following" });
                term = now;
            }
            if term.is_some() {
                // No round while joins are being gathered, not even a periodic one: it would place them one by one.
                if let Some(due) = self.joins_due() {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = self.inner.wake.notified() => {}
                        _ = leadership.changed() => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    continue;
                }
                if let Err(e) = self.reschedule().await {
                    tracing::warn!(error = %e, "scheduling round failed; retrying");
                }
            } else if let Err(e) = self.publish().await {
                tracing::debug!(error = %e, "publishing the stored sets failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                // Taking office runs a round at once; renewals change nothing here.
                _ = leadership.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn check_live(&self, worker_id: &str, generation: u64) -> Result<(), Error> {
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM workers WHERE worker_id = $1 AND generation = $2 AND lease_expires_at > now())",
        )
        .bind(worker_id)
        .bind(generation as i64)
        .fetch_one(self.inner.store.pool())
        .await?;
        if live {
            Ok(())
        } else {
            Err(lease_lost(worker_id))
        }
    }

    /// Ends every assignment stream (on shutdown: graceful shutdown waits for open streams, and these never
    /// end on their own). Workers reconnect to whichever control plane answers next.
    pub fn close_streams(&self) {
        self.inner.watchers.lock().expect("watchers lock").clear();
    }

    pub async fn live_workers(&self) -> usize {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers WHERE lease_expires_at > now()")
            .fetch_one(self.inner.store.pool())
            .await
            .unwrap_or(0) as usize
    }

    /// Units no live worker holds: unplaced, or placed on a worker whose lease ran out.
    pub async fn list_unassigned(&self) -> Result<Vec<UnitAssignmentInfo>, Error> {
        let rows = sqlx::query(
            "SELECT a.unit_id, a.epoch, a.committed_offset, a.lag, a.error FROM assignments a
             LEFT JOIN workers w ON w.worker_id = a.worker_id AND w.lease_expires_at > now()
             WHERE w.worker_id IS NULL ORDER BY a.unit_id",
        )
        .fetch_all(self.inner.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let epoch: i64 = r.get("epoch");
                UnitAssignmentInfo {
                    unit_id: r.get("unit_id"),
                    epoch: epoch as u64,
                    committed_offset: r.get("committed_offset"),
                    lag: r.get("lag"),
                    error: r.get("error"),
                }
            })
            .collect())
    }

    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, Error> {
        let pool = self.inner.store.pool();
        let workers = sqlx::query(
            "SELECT worker_id, name, http_address, generation, lease_expires_at, lease_expires_at > now() AS live
             FROM workers ORDER BY name, worker_id",
        )
        .fetch_all(pool)
        .await?;
        let mut units: HashMap<String, Vec<UnitAssignmentInfo>> = HashMap::new();
        for r in sqlx::query(
            "SELECT unit_id, worker_id, epoch, committed_offset, lag, error FROM assignments
             WHERE worker_id IS NOT NULL ORDER BY unit_id",
        )
        .fetch_all(pool)
        .await?
        {
            let epoch: i64 = r.get("epoch");
            units.entry(r.get("worker_id")).or_default().push(UnitAssignmentInfo {
                unit_id: r.get("unit_id"),
                epoch: epoch as u64,
                committed_offset: r.get("committed_offset"),
                lag: r.get("lag"),
                error: r.get("error"),
            });
        }
        Ok(workers
            .into_iter()
            .map(|r| {
                let id: String = r.get("worker_id");
                let expires: chrono::DateTime<chrono::Utc> = r.get("lease_expires_at");
                let generation: i64 = r.get("generation");
                WorkerInfo {
                    assignments: units.remove(&id).unwrap_or_default(),
                    worker_id: id,
                    name: r.get("name"),
                    generation: generation as u64,
                    lease_expires_at: Some(prost_types::Timestamp { seconds: expires.timestamp(), nanos: expires.timestamp_subsec_nanos() as i32 }),
                    live: r.get("live"),
                    http_address: r.get("http_address"),
                }
            })
            .collect())
    }
}
