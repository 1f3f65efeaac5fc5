//! The `WorkerCoordinator` gRPC service.

use super::{lease_lost, Coordinator, Watcher};
use crate::error::Error;
use millrace_proto::v1::worker_coordinator_server::WorkerCoordinator;
use millrace_proto::v1::*;
use std::pin::Pin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

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
        // Placed by the next round after a burst of joins, not one round per join (see `joined`).
        self.joined();
        Ok(Response::new(RegisterResponse {
            worker_id,
            generation: generation as u64,
            lease_ms: self.lease_ms() as u64,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
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
        // The lease as this control plane grants it now: a worker registered under another --lease-ms (before a
        // restart) must count with this one, or it would believe it holds units Postgres already moved.
        Ok(Response::new(HeartbeatResponse {
            lease_remaining_ms: self.lease_ms() as u64,
            lease_ms: self.lease_ms() as u64,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
        }))
    }

    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(&self, req: Request<WatchAssignmentsRequest>) -> Result<Response<AssignmentStream>, Status> {
        let r = req.into_inner();
        self.check_live(&r.worker_id, r.generation).await?;
        let (tx, rx) = watch::channel(None);
        // A new stream replaces an older one of the same worker, and is sent the whole set.
        self.inner.watchers.lock().expect("watchers lock").insert(r.worker_id.clone(), Watcher { tx, last: None });
        // While joins are being gathered, their round sends this set (a round of its own would place the joiners
        // one by one); otherwise a round now sends it at once (a reopened stream).
        if !self.joins_pending() {
            self.reschedule().await?;
        }
        let stream = tokio_stream::wrappers::WatchStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::filter_map(stream, |s| async move { s.map(Ok) }))))
    }

    async fn report_progress(&self, req: Request<ReportProgressRequest>) -> Result<Response<ReportProgressResponse>, Status> {
        let r = req.into_inner();
        let ids: Vec<String> = r.units.iter().map(|u| u.unit_id.clone()).collect();
        let epochs: Vec<i64> = r.units.iter().map(|u| u.epoch as i64).collect();
        let offsets: Vec<i64> = r.units.iter().map(|u| u.committed_offset).collect();
        let lags: Vec<i64> = r.units.iter().map(|u| u.lag).collect();
        let errors: Vec<String> = r.units.iter().map(|u| u.error.chars().take(2000).collect()).collect();
        let cannot_run: Vec<bool> = r.units.iter().map(|u| u.cannot_run_here).collect();
        // Fencing and commit in one statement: only the live holder at the current epoch writes. So are the
        // refusals: a unit the worker holds and says it cannot run is recorded as refused by this registration
        // (new, or renewed once expired), and a unit it runs clears its refusal.
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "WITH u AS (
               SELECT * FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::bool[])
                 AS u(unit_id, epoch, off, lag, error, refused)
             ), granted AS (
               UPDATE assignments a
               SET committed_offset = GREATEST(a.committed_offset, u.off), lag = u.lag, error = u.error, updated_at = now()
               FROM u
               WHERE a.unit_id = u.unit_id AND a.epoch = u.epoch AND a.worker_id = $1
                 AND EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = $1 AND w.generation = $2 AND w.lease_expires_at > now())
               RETURNING a.unit_id, u.refused, u.error
             ), refusals AS (
               INSERT INTO unit_refusals (unit_id, worker_id, generation, reason)
               SELECT unit_id, $1::text, $2::bigint, error FROM granted WHERE refused
               ON CONFLICT (unit_id, worker_id) DO UPDATE SET refused_at = now(), reason = EXCLUDED.reason
                 WHERE unit_refusals.refused_at <= now() - $9 * interval '1 millisecond'
               RETURNING unit_id
             ), cleared AS (
               DELETE FROM unit_refusals r USING granted g
               WHERE r.unit_id = g.unit_id AND r.worker_id = $1 AND NOT g.refused AND g.error = ''
             )
             SELECT unit_id, unit_id IN (SELECT unit_id FROM refusals) FROM granted",
        )
        .bind(&r.worker_id)
        .bind(r.generation as i64)
        .bind(&ids)
        .bind(&epochs)
        .bind(&offsets)
        .bind(&lags)
        .bind(&errors)
        .bind(&cannot_run)
        .bind(super::refusals::REFUSAL_TTL.as_millis() as i64)
        .fetch_all(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        let refused: Vec<&String> = rows.iter().filter(|(_, new)| *new).map(|(u, _)| u).collect();
        if !refused.is_empty() {
            // A new refusal: the next round moves the unit to a worker that can run it. Known ones move nothing.
            tracing::info!(worker_id = r.worker_id, ?refused, "units refused: this worker's sidecars cannot run their function; moving them");
            self.plan_changed();
        }
        let granted: Vec<String> = rows.into_iter().map(|(u, _)| u).collect();
        let revoked: Vec<String> = ids.into_iter().filter(|u| !granted.contains(u)).collect();
        if !revoked.is_empty() {
            tracing::info!(worker_id = r.worker_id, ?revoked, "commit refused: units no longer held");
        }
        Ok(Response::new(ReportProgressResponse { granted, revoked }))
    }

    async fn deregister(&self, req: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        let r = req.into_inner();
        let ended = sqlx::query(
            "UPDATE workers SET lease_expires_at = now() WHERE worker_id = $1 AND generation = $2 AND lease_expires_at > now()",
        )
        .bind(&r.worker_id)
        .bind(r.generation as i64)
        .execute(self.inner.store.pool())
        .await
        .map_err(Error::from)?
        .rows_affected();
        self.inner.watchers.lock().expect("watchers lock").remove(&r.worker_id);
        if ended == 0 {
            // Already gone (its lease ran out): its units moved or are moving anyway.
            return Ok(Response::new(DeregisterResponse {}));
        }
        tracing::info!(worker_id = r.worker_id, "worker deregistered: moving its units now");
        // Hand its units over before answering, so they are running elsewhere as soon as possible.
        self.reschedule().await?;
        Ok(Response::new(DeregisterResponse {}))
    }
}
