//! The `ControlPlane` gRPC service: apply, get, list, delete, status. Every control plane serves the reads; the
//! writes (apply, delete) are made by the leader, to which the others forward them (`crate::forward`).

use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::forward::{self, Route};
use crate::provision::Provisioner;
use crate::resource::{kind_label, ResourceKey};
use crate::store::{Store, StoredRow};
use chrono::{DateTime, Utc};
use millrace_proto::v1::control_plane_server::ControlPlane;
use millrace_proto::v1::*;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// How long a status waits for each dependency's answer.
const STATUS_PING: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub provisioner: Provisioner,
    pub coordinator: Coordinator,
    pub started: Instant,
    /// Bound on a write forwarded to the leader.
    pub forward_timeout: std::time::Duration,
    /// How long a write waits for a leader while none leads.
    pub leader_wait: std::time::Duration,
    /// How writes reach the leader (TLS).
    pub via: forward::Via,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn stored_proto(r: StoredRow) -> StoredResource {
    StoredResource {
        resource: Some(r.resource),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        physical_name: r.physical_name,
    }
}

/// Who is calling: the name the request gives, else the peer address.
fn client_of<T>(req: &Request<T>, given: &str) -> String {
    if !given.is_empty() {
        return given.chars().take(200).collect();
    }
    req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
}

/// Set when dropped before `answered`: the handler's future was dropped, its caller gone.
#[derive(Default)]
struct Gone(std::sync::Arc<std::sync::atomic::AtomicBool>, bool);

impl Gone {
    fn answered(mut self) {
        self.1 = true;
    }
}

impl Drop for Gone {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn key_from(kind: i32, name: String, version: String) -> Result<ResourceKey, Error> {
    match ResourceKind::try_from(kind) {
        Ok(ResourceKind::Unspecified) | Err(_) => {
            Err(Error::InvalidArgument(format!("kind {kind} is not a resource kind: use STREAM, TABLE, TRANSFORM, CONSUMER, INGEST_API or DEAD_LETTER_QUEUE")))
        }
        Ok(kind) => Ok(ResourceKey { kind, name, version }),
    }
}


impl Api {
    /// The intent in `apply_intents`, described for `millrace status` ("" if none, or unreadable now).
    async fn apply_in_progress(&self) -> String {
        let Ok(mut conn) = self.store.pool().acquire().await else { return String::new() };
        match crate::intent::pending(&mut conn).await {
            Ok(Some(p)) => {
                let what = p.intent.as_ref().map(crate::intent::Intent::label).unwrap_or("apply");
                format!("{what} by {} since {} (intent {}, term {})", p.client, p.started_at.format("%Y-%m-%d %H:%M:%S UTC"), p.id, p.term)
            }
            _ => String::new(),
        }
    }
}

#[tonic::async_trait]
impl ControlPlane for Api {
    async fn apply_plan(&self, req: Request<ApplyPlanRequest>) -> Result<Response<ApplyPlanResponse>, Status> {
        let client = client_of(&req, &req.get_ref().client);
        let was_forwarded = req.metadata().contains_key(forward::FORWARDED);
        let via = self.via.with_caller(&req);
        let r = req.into_inner();
        // A dry run writes nothing: any control plane answers it.
        if !r.dry_run {
            if let Route::Leader(at) = forward::route(self.coordinator.leadership(), self.store.pool(), was_forwarded, self.leader_wait).await? {
                // The leader records who applied, not which control plane passed it on.
                let r = ApplyPlanRequest { client, ..r };
                return Ok(Response::new(forward::apply(&at, r, self.forward_timeout, &via).await?));
            }
        }
        // Run to its end even if the caller hangs up: an apply cut short mid-provisioning would be left to the
        // next apply to finish.
        // (Not begun at all if the caller hangs up while it waits its turn.)
        let (api, gone) = (self.clone(), Gone::default());
        let flag = gone.0.clone();
        let applied = tokio::spawn(async move { api.apply_unless(r.plan.unwrap_or_default(), r.dry_run, &client, &flag).await });
        let answer = applied.await.map_err(|e| Error::Internal(format!("the apply failed: {e}")))??;
        gone.answered();
        Ok(Response::new(answer))
    }

    async fn get_resource(&self, req: Request<GetResourceRequest>) -> Result<Response<GetResourceResponse>, Status> {
        let r = req.into_inner();
        let key = key_from(r.kind, r.name, r.version)?;
        match self.store.get(&key).await? {
            Some(row) => Ok(Response::new(GetResourceResponse { resource: Some(stored_proto(row)) })),
            None => Err(Error::NotFound(format!("{key} is not declared")).into()),
        }
    }

    async fn list_resources(&self, req: Request<ListResourcesRequest>) -> Result<Response<ListResourcesResponse>, Status> {
        let kind = match ResourceKind::try_from(req.get_ref().kind) {
            Ok(ResourceKind::Unspecified) => None,
            Ok(k) => Some(k),
            Err(_) => return Err(Error::InvalidArgument(format!("kind {} is not a resource kind", req.get_ref().kind)).into()),
        };
        let rows = self.store.list(kind).await?;
        Ok(Response::new(ListResourcesResponse { resources: rows.into_iter().map(stored_proto).collect() }))
    }

    async fn delete_resource(&self, req: Request<DeleteResourceRequest>) -> Result<Response<DeleteResourceResponse>, Status> {
        let client = client_of(&req, &req.get_ref().client);
        let was_forwarded = req.metadata().contains_key(forward::FORWARDED);
        let via = self.via.with_caller(&req);
        let r = req.into_inner();
        if let Route::Leader(at) = forward::route(self.coordinator.leadership(), self.store.pool(), was_forwarded, self.leader_wait).await? {
            let r = DeleteResourceRequest { client, ..r };
            return Ok(Response::new(forward::delete(&at, r, self.forward_timeout, &via).await?));
        }
        let key = key_from(r.kind, r.name, r.version)?;
        let (api, gone) = (self.clone(), Gone::default());
        let flag = gone.0.clone();
        let deleted = tokio::spawn(async move { api.delete_unless(key, &client, &flag).await });
        let change = deleted.await.map_err(|e| Error::Internal(format!("the delete failed: {e}")))??;
        gone.answered();
        Ok(Response::new(DeleteResourceResponse { change: Some(change) }))
    }

    async fn list_applies(&self, req: Request<ListAppliesRequest>) -> Result<Response<ListAppliesResponse>, Status> {
        let limit = match req.get_ref().limit {
            0 => 20,
            n => n.min(1000),
        };
        let applies = self
            .store
            .list_applies(limit)
            .await?
            .into_iter()
            .map(|a| ApplyRecord { id: a.id, client: a.client, applied_at: Some(ts(a.applied_at)), changes: a.changes })
            .collect();
        Ok(Response::new(ListAppliesResponse { applies }))
    }

    async fn get_status(&self, _req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        // A status is for a person waiting: a dependency that does not answer within a few seconds is shown as
        // such, rather than holding the answer for the whole dependency timeout.
        async fn bounded(what: &'static str, ping: impl std::future::Future<Output = Result<(), Error>>) -> Result<(), Error> {
            tokio::time::timeout(STATUS_PING, ping).await.unwrap_or_else(|_| Err(Error::unavailable(what, format!("no answer within {STATUS_PING:?}"))))
        }
        let (pg, kafka, ch) = tokio::join!(
            bounded("Postgres", self.store.ping()),
            bounded("the broker", self.provisioner.kafka.ping()),
            bounded("ClickHouse", self.provisioner.clickhouse.ping())
        );
        let dep = |name: &str, r: Result<(), Error>| DependencyStatus {
            name: name.into(),
            reachable: r.is_ok(),
            detail: r.err().map(|e| e.to_string()).unwrap_or_default(),
        };
        let leadership = self.coordinator.leadership();
        let leader = if pg.is_ok() { leadership.leader(self.store.pool()).await.ok().filter(|l| l.live) } else { None };
        let mut resource_counts = std::collections::HashMap::new();
        if pg.is_ok() {
            for row in self.store.list(None).await? {
                let kind = crate::resource::kind_of(crate::resource::spec(&row.resource));
                *resource_counts.entry(kind_label(kind).to_string()).or_insert(0u64) += 1;
            }
        }
        let apply_in_progress = if pg.is_ok() { self.apply_in_progress().await } else { String::new() };
        Ok(Response::new(GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            dependencies: vec![dep("postgres", pg), dep("kafka", kafka), dep("clickhouse", ch)],
            resource_counts,
            live_workers: self.coordinator.live_workers().await as u32,
            leader_address: leader.as_ref().map(|l| l.address.clone()).unwrap_or_default(),
            leader_term: leader.as_ref().map_or(0, |l| l.term as u64),
            is_leader: self.coordinator.leadership().leading(),
            apply_in_progress,
        }))
    }

    async fn list_workers(&self, _req: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.coordinator.list_workers().await?,
            unassigned: self.coordinator.list_unassigned().await?,
        }))
    }
}
