//! The `WorkerCoordinator` gRPC service, served by every control plane, leader or not: each call is fenced in
//! Postgres, and the workers' lease is the one stored there (the leader's --lease-ms), whatever this one's flags.

use super::notify::Wake;
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
        if r.registration.len() > 64 || !r.registration.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::InvalidArgument("registration must be up to 64 letters, digits and dashes (a uuid)".into()).into());
        }
        let name: String = r.name.chars().take(200).collect();
        let session = super::session::new_secret();
        // A registration made already (its answer lost) is answered again: same worker, same generation while its
        // lease holds (a new generation if it ran out: its units may have moved).
        let (worker_id, generation, lease_ms): (String, i64, i64) = sqlx::query_as(
            "WITH l AS (SELECT COALESCE((SELECT worker_lease_ms FROM leader), $4::bigint) AS ms)
             INSERT INTO workers (worker_id, name, http_address, generation, lease_expires_at, registration, session_hash)
             SELECT $1, $2, $3, nextval('worker_generation'), now() + l.ms * interval '1 millisecond', NULLIF($5, ''), $6 FROM l
             ON CONFLICT (registration) DO UPDATE SET
               session_hash = EXCLUDED.session_hash,
               generation = CASE WHEN workers.lease_expires_at > now() THEN workers.generation ELSE EXCLUDED.generation END,
               lease_expires_at = GREATEST(workers.lease_expires_at, EXCLUDED.lease_expires_at)
             RETURNING worker_id, generation, (SELECT ms FROM l)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&name)
        .bind(r.http_address.chars().take(200).collect::<String>())
        .bind(self.lease_ms())
        .bind(&r.registration)
        .bind(super::session::hash(&session))
        .fetch_one(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        tracing::info!(worker_id, name, generation, lease_ms, "worker registered");
        // Placed by the next round after a burst of joins, not one round per join (see `joined`).
        self.want_round(Wake::Join).await;
        Ok(Response::new(RegisterResponse {
            worker_id,
            generation: generation as u64,
            lease_ms: lease_ms as u64,
            heartbeat_interval_ms: Self::heartbeat_interval_ms(lease_ms),
            session,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        self.check_session(&r.worker_id, &r.session).await?;
        let renewed: Option<i64> = sqlx::query_scalar(
            "WITH l AS (SELECT COALESCE((SELECT worker_lease_ms FROM leader), $3::bigint) AS ms)
             UPDATE workers SET lease_expires_at = now() + (SELECT ms FROM l) * interval '1 millisecond'
             WHERE worker_id = $1 AND generation = $2 AND lease_expires_at > now()
             RETURNING (SELECT ms FROM l)",
        )
        .bind(&r.worker_id)
        .bind(r.generation as i64)
        .bind(self.lease_ms())
        .fetch_optional(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        let Some(lease_ms) = renewed else {
            return Err(lease_lost(&r.worker_id).into());
        };
        // The lease as the cluster grants it now: a worker registered under another --lease-ms (before a restart,
        // or with another control plane) must count with this one, or it would believe it holds units Postgres
        // already moved.
        Ok(Response::new(HeartbeatResponse {
            lease_remaining_ms: lease_ms as u64,
            lease_ms: lease_ms as u64,
            heartbeat_interval_ms: Self::heartbeat_interval_ms(lease_ms),
        }))
    }

    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(&self, req: Request<WatchAssignmentsRequest>) -> Result<Response<AssignmentStream>, Status> {
        let r = req.into_inner();
        self.check_session(&r.worker_id, &r.session).await?;
        self.check_live(&r.worker_id, r.generation).await?;
        let (tx, rx) = watch::channel(None);
        // A new stream replaces an older one of the same worker, and is sent the whole set.
        self.inner.watchers.lock().expect("watchers lock").insert(r.worker_id.clone(), Watcher { tx, last: None });
        if self.inner.leadership.leading() {
            // While joins are being gathered, their round sends this set (a round of its own would place the
            // joiners one by one); otherwise a round now sends it at once (a reopened stream).
            if !self.joins_pending() {
                self.reschedule().await?;
            }
        } else {
            // A follower runs no round: it sends the stored set at once (a worker whose control plane went away
            // keeps its units and epochs), and asks the leader to place the worker if it is new.
            self.want_round(Wake::Join).await;
            self.publish().await?;
        }
        let stream = tokio_stream::wrappers::WatchStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::filter_map(stream, |s| async move { s.map(Ok) }))))
    }

    async fn report_progress(&self, req: Request<ReportProgressRequest>) -> Result<Response<ReportProgressResponse>, Status> {
        let r = req.into_inner();
        self.check_session(&r.worker_id, &r.session).await?;
        let ids: Vec<String> = r.units.iter().map(|u| u.unit_id.clone()).collect();
        let epochs: Vec<i64> = r.units.iter().map(|u| u.epoch as i64).collect();
        let offsets: Vec<i64> = r.units.iter().map(|u| u.committed_offset).collect();
        let lags: Vec<i64> = r.units.iter().map(|u| u.lag).collect();
        let errors: Vec<String> = r.units.iter().map(|u| u.error.chars().take(2000).collect()).collect();
        let cannot_run: Vec<bool> = r.units.iter().map(|u| u.cannot_run_here).collect();
        // A unit whose source topic was recreated outside Millrace commits the new topic's lower offset.
        let resets: Vec<bool> = r.units.iter().map(|u| u.offset_reset).collect();
        // What the unit had read as of that offset (opaque here), and the source incarnation its outputs carry:
        // the greatest is kept (a worker counts its own resets; see migration 0008 for the others).
        let provenance: Vec<Vec<u8>> = r.units.iter().map(|u| u.provenance.clone()).collect();
        let incarnations: Vec<i64> = r.units.iter().map(|u| u.source_incarnation.min(i64::MAX as u64) as i64).collect();
        // Fencing and commit in one statement: only the live holder at the current epoch writes. So are the
        // refusals: a unit the worker holds and says it cannot run is recorded as refused by this registration
        // (new, or renewed once expired), and a unit it runs clears its refusal (one it lets go of says nothing
        // of that: it stopped, so it reports no error).
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "WITH u AS (
               SELECT * FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::bool[], $10::bool[], $11::bytea[], $12::bigint[], $13::bool[])
                 AS u(unit_id, epoch, off, lag, error, refused, reset, provenance, incarnation, released)
             ), granted AS (
               UPDATE assignments a
               SET committed_offset = CASE WHEN u.reset AND u.incarnation > a.source_incarnation THEN u.off
                                           ELSE GREATEST(a.committed_offset, u.off) END,
                 lag = u.lag, error = u.error, updated_at = now(),
                 provenance = CASE WHEN (u.reset AND u.incarnation > a.source_incarnation) OR u.off >= a.committed_offset
                                   THEN u.provenance ELSE a.provenance END,
                 source_incarnation = GREATEST(a.source_incarnation, u.incarnation)
               FROM u
               WHERE a.unit_id = u.unit_id AND a.epoch = u.epoch AND a.worker_id = $1
                 AND EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = $1 AND w.generation = $2 AND w.lease_expires_at > now())
               RETURNING a.unit_id, u.refused, u.error, u.released
             ), refusals AS (
               INSERT INTO unit_refusals (unit_id, worker_id, generation, reason)
               SELECT unit_id, $1::text, $2::bigint, error FROM granted WHERE refused
               ON CONFLICT (unit_id, worker_id) DO UPDATE SET refused_at = now(), reason = EXCLUDED.reason
                 WHERE unit_refusals.refused_at <= now() - $9 * interval '1 millisecond'
               RETURNING unit_id
             ), cleared AS (
               DELETE FROM unit_refusals r USING granted g
               WHERE r.unit_id = g.unit_id AND r.worker_id = $1 AND NOT g.refused AND g.error = '' AND NOT g.released
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
        .bind(&resets)
        .bind(&provenance)
        .bind(&incarnations)
        .bind(r.units.iter().map(|u| u.released).collect::<Vec<bool>>())
        .fetch_all(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        for u in r.units.iter().filter(|u| u.offset_reset && rows.iter().any(|(id, _)| *id == u.unit_id)) {
            tracing::warn!(worker_id = r.worker_id, unit = u.unit_id, offset = u.committed_offset, "offset reset: the unit's source topic was recreated outside Millrace");
        }
        let refused: Vec<&String> = rows.iter().filter(|(_, new)| *new).map(|(u, _)| u).collect();
        if !refused.is_empty() {
            // A new refusal: the next round moves the unit to a worker that can run it. Known ones move nothing.
            tracing::info!(worker_id = r.worker_id, ?refused, "units refused: this worker's sidecars cannot run their function; moving them");
            self.want_round(Wake::Change).await;
        }
        let granted: Vec<String> = rows.into_iter().map(|(u, _)| u).collect();
        let released: Vec<&UnitProgress> = r.units.iter().filter(|u| u.released && granted.contains(&u.unit_id)).collect();
        if !released.is_empty() {
            self.hand_over(&r.worker_id, &released).await?;
        }
        let revoked: Vec<String> = ids.into_iter().filter(|u| !granted.contains(u)).collect();
        if !revoked.is_empty() {
            tracing::info!(worker_id = r.worker_id, ?revoked, "commit refused: units no longer held");
        }
        Ok(Response::new(ReportProgressResponse { granted, revoked }))
    }

    async fn deregister(&self, req: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        let r = req.into_inner();
        self.check_session(&r.worker_id, &r.session).await?;
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
        // Hand its units over before answering, so they are running elsewhere as soon as possible (a follower
        // asks the leader to).
        if self.inner.leadership.leading() {
            self.reschedule().await?;
        } else {
            self.want_round(Wake::Change).await;
        }
        Ok(Response::new(DeregisterResponse {}))
    }
}

impl Coordinator {
    /// Units their holder let go of (its last offset committed just now, nothing of them in flight) go to the
    /// worker they were being handed over to, at a new epoch; every control plane then sends the sets.
    async fn hand_over(&self, worker_id: &str, released: &[&UnitProgress]) -> Result<(), Status> {
        let ids: Vec<String> = released.iter().map(|u| u.unit_id.clone()).collect();
        let epochs: Vec<i64> = released.iter().map(|u| u.epoch as i64).collect();
        let moved: Vec<(String, Option<String>)> = sqlx::query_as(
            "WITH moved AS (
               UPDATE assignments a SET worker_id = a.handover_to, handover_to = NULL, handover_since = NULL,
                 epoch = GREATEST(nextval('unit_epoch'), a.epoch + 1), error = '', updated_at = now()
               FROM UNNEST($1::text[], $2::bigint[]) AS u(unit_id, epoch)
               WHERE a.unit_id = u.unit_id AND a.epoch = u.epoch AND a.worker_id = $3 AND a.handover_to IS NOT NULL
               RETURNING a.unit_id, a.worker_id
             )
             SELECT unit_id, worker_id FROM moved, pg_notify($4, '')",
        )
        .bind(&ids)
        .bind(&epochs)
        .bind(worker_id)
        .bind(super::notify::ASSIGNMENTS)
        .fetch_all(self.inner.store.pool())
        .await
        .map_err(Error::from)?;
        for (unit, to) in &moved {
            tracing::info!(unit, from = worker_id, to = to.as_deref().unwrap_or("-"), "handed over");
        }
        Ok(())
    }
}
