//! The `WorkerCoordinator` service: registration, leases, assignment streams, fenced offset commits, and the
//! loop that keeps placements current. Leases, epochs and offsets live in Postgres and are judged by its clock
//! alone, so a restarted control plane carries on where it stopped.

use crate::error::Error;
use crate::scheduler::{desired_units, place, Placement};
use crate::store::Store;
use millrace_proto::v1::worker_coordinator_server::WorkerCoordinator;
use millrace_proto::v1::*;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tonic::{Request, Response, Status};

/// Key of the advisory lock that serialises scheduling rounds (several control planes may share a database).
const SCHEDULE_LOCK: i64 = 0x6d69_6c6c_7363_6864;

/// A worker's open assignment stream, and what it was last sent (units and epochs, not offsets).
struct Watcher {
    tx: watch::Sender<Option<AssignmentSet>>,
    last: Option<Vec<(String, u64)>>,
}

struct Inner {
    store: Store,
    lease: Duration,
    topic_namespace: String,
    wake: Notify,
    watchers: Mutex<HashMap<String, Watcher>>,
    version: std::sync::atomic::AtomicU64,
    /// One round at a time in this process, so sets are published in the order they were computed.
    round: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

fn lease_lost(worker_id: &str) -> Error {
    Error::FailedPrecondition(format!("worker {worker_id} holds no live lease (expired, or replaced): register again"))
}

impl Coordinator {
    pub fn new(store: Store, lease: Duration, topic_namespace: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                lease,
                topic_namespace,
                wake: Notify::new(),
                watchers: Mutex::new(HashMap::new()),
                version: Default::default(),
                round: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn lease_ms(&self) -> i64 {
        self.inner.lease.as_millis() as i64
    }

    /// Called after every apply or delete, registration and stream: placements may have to change.
    pub fn plan_changed(&self) {
        self.inner.wake.notify_one();
    }

    /// Reschedules on every wake-up, and often enough to notice an expired lease within a quarter lease.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let tick = (self.inner.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.reschedule().await {
                tracing::warn!(error = %e, "scheduling round failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One scheduling round: place every desired unit, store what moved, and send each watching worker its
    /// set when it changed.
    pub async fn reschedule(&self) -> Result<(), Error> {
        let _round = self.inner.round.lock().await;
        let pool = self.inner.store.pool();
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SCHEDULE_LOCK).execute(&mut *tx).await?;
        let state = Store::load_state(&mut *tx).await?;
        let units = desired_units(&state, &self.inner.topic_namespace);
        let live: Vec<String> =
            sqlx::query_scalar("SELECT worker_id FROM workers WHERE lease_expires_at > now() ORDER BY worker_id")
                .fetch_all(&mut *tx)
                .await?;
        let current: HashMap<String, Placement> = sqlx::query("SELECT unit_id, worker_id, epoch FROM assignments")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                let epoch: i64 = r.get("epoch");
                (r.get("unit_id"), Placement { worker: r.get("worker_id"), epoch: epoch as u64 })
            })
            .collect();
        let ids: Vec<String> = units.keys().cloned().collect();
        let placed = place(&ids, &live, &current);
        let gone: Vec<&String> = current.keys().filter(|u| !units.contains_key(*u)).collect();
        if !gone.is_empty() {
            sqlx::query("DELETE FROM assignments WHERE unit_id = ANY($1)").bind(&gone).execute(&mut *tx).await?;
        }
        for (unit, p) in &placed {
            if current.get(unit) != Some(p) {
                sqlx::query(
                    "INSERT INTO assignments (unit_id, worker_id, epoch) VALUES ($1, $2, $3)
                     ON CONFLICT (unit_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, epoch = EXCLUDED.epoch, updated_at = now()",
                )
                .bind(unit)
                .bind(&p.worker)
                .bind(p.epoch as i64)
                .execute(&mut *tx)
                .await?;
                tracing::info!(unit, worker = p.worker.as_deref().unwrap_or("-"), epoch = p.epoch, "unit placed");
            }
        }
        // Forget workers long dead, so the list stays readable.
        sqlx::query("DELETE FROM workers WHERE lease_expires_at < now() - interval '1 hour'").execute(&mut *tx).await?;
        tx.commit().await?;
        self.publish(&units, &live).await
    }

    /// Sends each watching worker its set if its units or epochs changed; ends the streams of dead workers.
    async fn publish(&self, units: &BTreeMap<String, WorkUnit>, live: &[String]) -> Result<(), Error> {
        let watching: Vec<String> = self.inner.watchers.lock().expect("watchers lock").keys().cloned().collect();
        if watching.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query("SELECT unit_id, worker_id, epoch, committed_offset FROM assignments WHERE worker_id = ANY($1) ORDER BY unit_id")
            .bind(&watching)
            .fetch_all(self.inner.store.pool())
            .await?;
        let mut sets: HashMap<String, Vec<Assignment>> = HashMap::new();
        for r in rows {
            let unit_id: String = r.get("unit_id");
            let Some(unit) = units.get(&unit_id) else { continue };
            let worker: String = r.get("worker_id");
            let epoch: i64 = r.get("epoch");
            sets.entry(worker).or_default().push(Assignment {
                unit: Some(unit.clone()),
                epoch: epoch as u64,
                committed_offset: r.get("committed_offset"),
            });
        }
        let mut watchers = self.inner.watchers.lock().expect("watchers lock");
        watchers.retain(|w, _| live.contains(w));
        for (worker, watcher) in watchers.iter_mut() {
            let assignments = sets.remove(worker).unwrap_or_default();
            let key: Vec<(String, u64)> =
                assignments.iter().map(|a| (a.unit.as_ref().map(|u| u.unit_id.clone()).unwrap_or_default(), a.epoch)).collect();
            if watcher.last.as_ref() == Some(&key) {
                continue;
            }
            let version = self.inner.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let _ = watcher.tx.send(Some(AssignmentSet { version, assignments }));
            watcher.last = Some(key);
        }
        Ok(())
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

    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, Error> {
        let pool = self.inner.store.pool();
        let workers = sqlx::query(
            "SELECT worker_id, name, http_address, generation, lease_expires_at, lease_expires_at > now() AS live
             FROM workers ORDER BY name, worker_id",
        )
        .fetch_all(pool)
        .await?;
        let mut units: HashMap<String, Vec<UnitAssignmentInfo>> = HashMap::new();
        for r in sqlx::query("SELECT unit_id, worker_id, epoch, committed_offset FROM assignments WHERE worker_id IS NOT NULL ORDER BY unit_id")
            .fetch_all(pool)
            .await?
        {
            let epoch: i64 = r.get("epoch");
            units.entry(r.get("worker_id")).or_default().push(UnitAssignmentInfo {
                unit_id: r.get("unit_id"),
                epoch: epoch as u64,
                committed_offset: r.get("committed_offset"),
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

type AssignmentStream = Pin<Box<dyn futures::Stream<Item = Result<AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerCoordinator for Coordinator {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        let worker_id = uuid::Uuid::new_v4().to_string();
        let name: String = r.name.chars().take(200).collect();
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO workers (worker_id, name, http_address, generation, lease_expires_at)
             VALUES ($1, $2, $3, nextval('worker_generation'), now() + $4 * interval '1 millisecond') RETURNING generation",
        )
        .bind(&worker_id)
        .bind(&name)
        .bind(r.http_address.chars().take(200).collect::<String>())
        .bind(self.lease_ms())
        .fetch_one(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        tracing::info!(worker_id, name, generation, "worker registered");
        self.plan_changed();
        Ok(Response::new(RegisterResponse {
            worker_id,
            generation: generation as u64,
            lease_ms: self.lease_ms() as u64,
            heartbeat_interval_ms: (self.lease_ms() / 4).max(50) as u64,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let renewed = sqlx::query(
            "UPDATE workers SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE worker_id = $1 AND generation = $2 AND lease_expires_at > now()",
        )
        .bind(&r.worker_id)
        .bind(r.generation as i64)
        .bind(self.lease_ms())
        .execute(self.inner.store.pool())
        .await
        .map_err(Error::from)?
        .rows_affected();
        if renewed == 0 {
            return Err(lease_lost(&r.worker_id).into());
        }
        Ok(Response::new(HeartbeatResponse { lease_remaining_ms: self.lease_ms() as u64 }))
    }

    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(&self, req: Request<WatchAssignmentsRequest>) -> Result<Response<AssignmentStream>, Status> {
        let r = req.into_inner();
        self.check_live(&r.worker_id, r.generation).await?;
        let (tx, rx) = watch::channel(None);
        // A new stream replaces an older one of the same worker, and is sent the whole set.
        self.inner.watchers.lock().expect("watchers lock").insert(r.worker_id.clone(), Watcher { tx, last: None });
        self.reschedule().await?;
        let stream = tokio_stream::wrappers::WatchStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::filter_map(stream, |s| async move { s.map(Ok) }))))
    }

    async fn report_progress(&self, req: Request<ReportProgressRequest>) -> Result<Response<ReportProgressResponse>, Status> {
        let r = req.into_inner();
        let ids: Vec<String> = r.units.iter().map(|u| u.unit_id.clone()).collect();
        let epochs: Vec<i64> = r.units.iter().map(|u| u.epoch as i64).collect();
        let offsets: Vec<i64> = r.units.iter().map(|u| u.committed_offset).collect();
        let lags: Vec<i64> = r.units.iter().map(|u| u.lag).collect();
        // Fencing and commit in one statement: only the live holder at the current epoch writes.
        let granted: Vec<String> = sqlx::query_scalar(
            "UPDATE assignments a
             SET committed_offset = GREATEST(a.committed_offset, u.off), lag = u.lag, updated_at = now()
             FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) AS u(unit_id, epoch, off, lag)
             WHERE a.unit_id = u.unit_id AND a.epoch = u.epoch AND a.worker_id = $1
               AND EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = $1 AND w.generation = $2 AND w.lease_expires_at > now())
             RETURNING a.unit_id",
        )
        .bind(&r.worker_id)
        .bind(r.generation as i64)
        .bind(&ids)
        .bind(&epochs)
        .bind(&offsets)
        .bind(&lags)
        .fetch_all(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        let revoked: Vec<String> = ids.into_iter().filter(|u| !granted.contains(u)).collect();
        if !revoked.is_empty() {
            tracing::info!(worker_id = r.worker_id, ?revoked, "commit refused: units no longer held");
        }
        Ok(Response::new(ReportProgressResponse { granted, revoked }))
    }
}
