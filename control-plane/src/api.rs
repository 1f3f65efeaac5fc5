//! The `ControlPlane` gRPC service: apply, get, list, delete, status. Every control plane serves the reads; the
//! writes (apply, delete) are made by the leader, to which the others forward them (`crate::forward`).

use crate::coordinator::Coordinator;
use crate::diff::{diff, Planned};
use crate::error::Error;
use crate::forward::{self, Route};
use crate::plan;
use crate::provision::Provisioner;
use crate::resource::{kind_label, life_cycle, physical_name, spec, ResourceKey, State};
use millrace_proto::v1::resource::Spec;
use crate::store::{Store, StoredRow};
use chrono::{DateTime, Utc};
use millrace_proto::v1::control_plane_server::ControlPlane;
use millrace_proto::v1::*;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// How long workers get to stop the units of a deleted topic before the topic goes (they stop them at once).
const UNITS_STOP_WITHIN: std::time::Duration = std::time::Duration::from_millis(1000);

pub struct Api {
    pub store: Store,
    pub provisioner: Provisioner,
    pub coordinator: Coordinator,
    pub started: Instant,
    /// Bound on a write forwarded to the leader.
    pub forward_timeout: std::time::Duration,
    /// How long a write waits for a leader while none leads.
    pub leader_wait: std::time::Duration,
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

fn key_from(kind: i32, name: String, version: String) -> Result<ResourceKey, Error> {
    match ResourceKind::try_from(kind) {
        Ok(ResourceKind::Unspecified) | Err(_) => {
            Err(Error::InvalidArgument(format!("kind {kind} is not a resource kind: use STREAM, TABLE, TRANSFORM, CONSUMER, INGEST_API or DEAD_LETTER_QUEUE")))
        }
        Ok(kind) => Ok(ResourceKey { kind, name, version }),
    }
}

impl Api {
    /// Validates, diffs and (unless a dry run) provisions and records a plan, all under the apply lock. A dry run
    /// takes no lock: it reads what is stored and judges the plan against it.
    pub async fn apply(&self, plan: Plan, dry_run: bool, client: &str) -> Result<ApplyPlanResponse, Error> {
        let desired = plan::validate(plan)?;
        if dry_run {
            let stored = Store::load_state(self.store.pool()).await?;
            let (changes, _, _) = self.judge(&desired, &stored, true).await?;
            return Ok(ApplyPlanResponse { changes, dry_run, apply_id: 0 });
        }
        let (gate, mut tx) = self.store.begin_apply().await?;
        // Only the leader records plans, and only while it still leads in the term it began in (checked again,
        // holding the leader row, just before the commit: provisioning takes a while).
        // (Not held from here: a row lock held across provisioning would hold up the leader's renewals.)
        let leadership = self.coordinator.leadership();
        let term = leadership.current()?;
        let stored = Store::load_state(&mut *tx).await?;
        let (changes, planned, refused) = self.judge(&desired, &stored, false).await?;
        if !refused.is_empty() {
            return Err(Error::FailedPrecondition(format!("the plan was not applied: {}", refused.join("; "))));
        }
        self.provisioner.execute(&planned).await?;
        let apply_id = Store::record(&mut tx, &planned, client, &self.provisioner.topic_namespace).await?;
        leadership.fence(&mut tx, term).await?;
        tx.commit().await?;
        // Dropping topics below takes the gate again.
        drop(gate);
        let changed = planned.iter().filter(|p| p.action != ChangeAction::Unchanged).count();
        tracing::info!(apply_id, client, changed, "plan applied");
        self.coordinator.plan_applied().await;
        self.drop_topics_after_their_units(&planned).await?;
        Ok(ApplyPlanResponse { changes, dry_run, apply_id })
    }

    /// The plan's changes against what is stored, with notes, and the refusals (each "key: reason").
    async fn judge(&self, desired: &State, stored: &State, dry_run: bool) -> Result<(Vec<ResourceChange>, Vec<Planned>, Vec<String>), Error> {
        let mut planned = diff(desired, stored);
        self.note_partition_counts(&mut planned).await;
        self.refuse_what_clickhouse_lacks(&mut planned, dry_run).await?;
        let changes: Vec<ResourceChange> = planned.iter().map(Planned::to_proto).collect();
        let refused: Vec<String> = planned
            .iter()
            .filter(|p| p.action == ChangeAction::Refused)
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect();
        if refused.is_empty() {
            // What the plan keeps (protected resources it drops) must still resolve against what it declares.
            let resulting: State =
                planned.iter().filter_map(|p| p.resulting().map(|r| (p.key.clone(), r.clone()))).collect();
            plan::check_state(&resulting)?;
        }
        Ok((changes, planned, refused))
    }

    /// Says where a stream's topic has another partition count than declared: units follow the topic, so every
    /// partition is read, but the user should know. Best effort: an unreachable broker adds no notes.
    async fn note_partition_counts(&self, planned: &mut [Planned]) {
        let streams = planned.iter().any(|p| matches!(p.desired.as_ref().map(spec), Some(Spec::Stream(_))));
        if !streams {
            return;
        }
        let Ok(actual) = self.provisioner.kafka.topics().await else { return };
        for p in planned.iter_mut() {
            let Some(Spec::Stream(s)) = p.desired.as_ref().map(spec) else { continue };
            let external = life_cycle(spec(p.desired.as_ref().expect("desired"))) == LifeCycle::ExternallyManaged;
            // Creates and updates of managed topics set the count themselves (or are refused).
            if !external && matches!(p.action, ChangeAction::Create | ChangeAction::Update) {
                continue;
            }
            let topic = physical_name(&Spec::Stream(s.clone()), &self.provisioner.topic_namespace);
            let declared = s.parallelism.unwrap_or(1) as usize;
            let note = match actual.get(&topic) {
                None if external => format!("topic `{topic}` does not exist yet: its units wait for it"),
                Some(&n) if n != declared => {
                    format!("topic `{topic}` has {n} partitions where {declared} are declared: all {n} are processed")
                }
                _ => continue,
            };
            p.reason = if p.reason.is_empty() { note } else { format!("{}; {note}", p.reason) };
        }
    }

    /// Refuses the table changes the ClickHouse server cannot make (an option newer than it, a Replicated engine
    /// without a keeper), naming the feature and the version that has it. A dry run without ClickHouse skips this:
    /// the apply checks it.
    async fn refuse_what_clickhouse_lacks(&self, planned: &mut [Planned], dry_run: bool) -> Result<(), Error> {
        if !crate::table::touches_tables(planned) {
            return Ok(());
        }
        match self.provisioner.clickhouse.server().await {
            Ok(server) => crate::table::refuse_what_the_server_lacks(planned, &server),
            Err(e) if dry_run => tracing::debug!(error = %e, "plan not checked against ClickHouse"),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Deletes one resource as its life cycle allows.
    pub async fn delete(&self, key: ResourceKey, client: &str) -> Result<ResourceChange, Error> {
        let (gate, mut tx) = self.store.begin_apply().await?;
        let leadership = self.coordinator.leadership();
        let term = leadership.current()?;
        let stored = Store::load_state(&mut *tx).await?;
        if !stored.contains_key(&key) {
            return Err(Error::NotFound(format!("{key} is not declared")));
        }
        let users: Vec<String> =
            plan::referrers(&stored, &key).into_iter().filter(|k| **k != key).map(|k| k.to_string()).collect();
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!("{key} is still referred to by {}: remove those first", users.join(", "))));
        }
        let mut desired = stored.clone();
        desired.remove(&key);
        let planned: Vec<Planned> = diff(&desired, &stored).into_iter().filter(|p| p.key == key).collect();
        if planned[0].action == ChangeAction::Blocked {
            return Err(Error::FailedPrecondition(format!(
                "{key} is deletion protected: change its life_cycle in a plan before deleting it"
            )));
        }
        self.provisioner.execute(&planned).await?;
        Store::record(&mut tx, &planned, client, &self.provisioner.topic_namespace).await?;
        leadership.fence(&mut tx, term).await?;
        tx.commit().await?;
        drop(gate);
        tracing::info!(%key, client, "resource deleted");
        self.coordinator.plan_applied().await;
        self.drop_topics_after_their_units(&planned).await?;
        Ok(planned[0].to_proto())
    }

    /// Deletes the topics of an applied diff once the units reading them had time to stop: they were revoked when
    /// the apply rescheduled, and their workers close their consumers at once. A consumer whose topic vanishes
    /// under it fills its logs with errors on any broker, and on Tansu 0.6 crashes librdkafka (a fetch answer for
    /// the deleted topic names it by neither name nor id). The plan is recorded by then: a topic that cannot be
    /// deleted is reported, not rolled back.
    async fn drop_topics_after_their_units(&self, planned: &[Planned]) -> Result<(), Error> {
        let drops = self.provisioner.topic_drops(planned);
        if drops.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(UNITS_STOP_WITHIN).await;
        let dropped = async {
            // Under the apply lock again: a plan applied meanwhile may have declared the resource anew. Another
            // apply running is waited for (a few times), never raced.
            let mut tries = 0;
            let (_gate, mut tx) = loop {
                match self.store.begin_apply().await {
                    Err(Error::Busy(_)) if tries < 2 => tries += 1,
                    other => break other?,
                }
            };
            let stored = Store::load_state(&mut *tx).await?;
            let gone: Vec<&Planned> = drops.into_iter().filter(|p| !stored.contains_key(&p.key)).collect();
            self.provisioner.drop_topics(&gone).await?;
            // Their partition counts go with them: a stream declared again may have fewer partitions.
            let topics: Vec<String> = gone
                .iter()
                .filter_map(|p| p.stored.as_ref())
                .map(|r| crate::resource::physical_name(spec(r), &self.provisioner.topic_namespace))
                .collect();
            self.coordinator.forget_topics(&topics).await
        };
        dropped.await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "the plan was applied, but a topic it removes could not be deleted ({e}); it is no longer used: \
                 delete it by hand once no apply is running, if `millrace ls` does not show it declared again"
            ))
        })
    }
}

#[tonic::async_trait]
impl ControlPlane for Api {
    async fn apply_plan(&self, req: Request<ApplyPlanRequest>) -> Result<Response<ApplyPlanResponse>, Status> {
        let client = client_of(&req, &req.get_ref().client);
        let was_forwarded = req.metadata().contains_key(forward::FORWARDED);
        let r = req.into_inner();
        // A dry run writes nothing: any control plane answers it.
        if !r.dry_run {
            if let Route::Leader(at) = forward::route(self.coordinator.leadership(), self.store.pool(), was_forwarded, self.leader_wait).await? {
                // The leader records who applied, not which control plane passed it on.
                let r = ApplyPlanRequest { client, ..r };
                return Ok(Response::new(forward::apply(&at, r, self.forward_timeout).await?));
            }
        }
        Ok(Response::new(self.apply(r.plan.unwrap_or_default(), r.dry_run, &client).await?))
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
        let r = req.into_inner();
        if let Route::Leader(at) = forward::route(self.coordinator.leadership(), self.store.pool(), was_forwarded, self.leader_wait).await? {
            let r = DeleteResourceRequest { client, ..r };
            return Ok(Response::new(forward::delete(&at, r, self.forward_timeout).await?));
        }
        let key = key_from(r.kind, r.name, r.version)?;
        Ok(Response::new(DeleteResourceResponse { change: Some(self.delete(key, &client).await?) }))
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
        let (pg, kafka, ch) =
            tokio::join!(self.store.ping(), self.provisioner.kafka.ping(), self.provisioner.clickhouse.ping());
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
        Ok(Response::new(GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            dependencies: vec![dep("postgres", pg), dep("kafka", kafka), dep("clickhouse", ch)],
            resource_counts,
            live_workers: self.coordinator.live_workers().await as u32,
            leader_address: leader.as_ref().map(|l| l.address.clone()).unwrap_or_default(),
            leader_term: leader.as_ref().map_or(0, |l| l.term as u64),
            is_leader: self.coordinator.leadership().leading(),
        }))
    }

    async fn list_workers(&self, _req: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.coordinator.list_workers().await?,
            unassigned: self.coordinator.list_unassigned().await?,
        }))
    }
}
