//! The worker's side of the coordinator protocol: register, keep the lease, follow the assignment stream,
//! start and stop units to match it, and commit their offsets through the control plane.

use crate::lease::Lease;
use crate::unit::{self, UnitState, WorkerCtx};
use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

type Client = WorkerCoordinatorClient<Channel>;

struct Running {
    st: Arc<UnitState>,
    task: JoinHandle<()>,
}

type Units = Arc<Mutex<HashMap<String, Running>>>;

/// One registration: lives until the lease is lost or the worker shuts down.
struct Session {
    worker_id: String,
    generation: u64,
    lease: Arc<Lease>,
    heartbeat: Duration,
    units: Units,
    /// Cancelled when the lease is lost (or on shutdown).
    over: CancellationToken,
}

/// Registers (again and again, as leases come and go) until `shutdown`.
pub async fn run(ctx: Arc<WorkerCtx>, mut client: Client, name: String, http_address: String, progress_every: Duration, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let sent = Instant::now();
        let reg = RegisterRequest { name: name.clone(), http_address: http_address.clone() };
        let r = match client.register(reg).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e.message(), code = ?e.code(), retry_in = ?backoff, "cannot register with the control plane");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        tracing::info!(worker_id = r.worker_id, generation = r.generation, lease_ms = r.lease_ms, "registered");
        let session = Arc::new(Session {
            worker_id: r.worker_id,
            generation: r.generation,
            lease: Arc::new(Lease::new(sent, Duration::from_millis(r.lease_ms))),
            heartbeat: Duration::from_millis(r.heartbeat_interval_ms.max(20)),
            units: Arc::default(),
            over: shutdown.child_token(),
        });
        let hb = tokio::spawn(heartbeat(session.clone(), client.clone()));
        let pr = tokio::spawn(progress(session.clone(), client.clone(), progress_every, ctx.clone()));
        follow(&session, &ctx, &mut client).await;
        session.over.cancel();
        let running: Vec<Running> = session.units.lock().expect("units lock").drain().map(|(_, r)| r).collect();
        for r in &running {
            r.st.stop.cancel();
        }
        for r in running {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        }
        // A clean shutdown still holds the lease: commit what is done so a successor starts there.
        if shutdown.is_cancelled() && session.lease.valid() {
            report(&session, &mut client, &ctx, true).await;
        }
        hb.abort();
        pr.abort();
    }
}

async fn heartbeat(s: Arc<Session>, mut client: Client) {
    loop {
        tokio::select! { _ = s.over.cancelled() => return, _ = tokio::time::sleep(s.heartbeat) => {} }
        let sent = Instant::now();
        let req = HeartbeatRequest { worker_id: s.worker_id.clone(), generation: s.generation };
        match tokio::time::timeout(s.heartbeat * 2, client.heartbeat(req)).await {
            Ok(Ok(_)) => s.lease.renewed(sent),
            Ok(Err(e)) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::warn!(worker_id = s.worker_id, "lease lost: stopping every unit and registering again");
                s.over.cancel();
                return;
            }
            other => {
                if !s.lease.valid() {
                    tracing::warn!(worker_id = s.worker_id, ?other, "lease ran out without a successful heartbeat: stopping every unit");
                    s.over.cancel();
                    return;
                }
            }
        }
    }
}

/// Follows the assignment stream until the session is over, reopening it when it breaks.
async fn follow(s: &Session, ctx: &Arc<WorkerCtx>, client: &mut Client) {
    let req = WatchAssignmentsRequest { worker_id: s.worker_id.clone(), generation: s.generation };
    loop {
        let opened = tokio::select! {
            _ = s.over.cancelled() => return,
            r = client.watch_assignments(req.clone()) => r,
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let msg = tokio::select! { _ = s.over.cancelled() => return, m = stream.message() => m };
                    match msg {
                        Ok(Some(set)) => reconcile(s, ctx, set),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Err(e) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => return,
            Err(e) => tracing::debug!(error = %e.message(), "assignment stream unavailable; retrying"),
        }
        tokio::select! { _ = s.over.cancelled() => return, _ = tokio::time::sleep(Duration::from_millis(200)) => {} }
    }
}

/// Makes the running units equal to the set: units gone or at another epoch stop, new ones start.
fn reconcile(s: &Session, ctx: &Arc<WorkerCtx>, set: AssignmentSet) {
    let mut units = s.units.lock().expect("units lock");
    let wanted: HashMap<String, Assignment> =
        set.assignments.into_iter().filter_map(|a| a.unit.as_ref().map(|u| (u.unit_id.clone(), a.clone()))).collect();
    units.retain(|id, r| {
        let keep = wanted.get(id).is_some_and(|a| a.epoch == r.st.epoch) && !r.st.stop.is_cancelled();
        if !keep {
            tracing::info!(unit = id, epoch = r.st.epoch, "unit revoked");
            r.st.stop.cancel();
        }
        keep
    });
    for (id, a) in wanted {
        if units.contains_key(&id) {
            continue;
        }
        let Some(unit) = a.unit else { continue };
        tracing::info!(unit = id, epoch = a.epoch, from_offset = a.committed_offset, "unit assigned");
        let st = Arc::new(UnitState::new(unit, a.epoch, a.committed_offset));
        let task = tokio::spawn(unit::run(ctx.clone(), st.clone(), s.lease.clone()));
        units.insert(id, Running { st, task });
    }
}

async fn progress(s: Arc<Session>, mut client: Client, every: Duration, ctx: Arc<WorkerCtx>) {
    let mut round = 0u64;
    loop {
        tokio::select! { _ = s.over.cancelled() => return, _ = tokio::time::sleep(every) => {} }
        round += 1;
        // Lag alone is refreshed about every 5 s; offsets as soon as they move.
        report(&s, &mut client, &ctx, round.is_multiple_of(25)).await;
    }
}

/// Commits the units' safe offsets; units the control plane no longer grants are stopped. `all` reports every
/// unit, moved or not, stopped or not (for lag refreshes and the last report before shutdown).
async fn report(s: &Session, client: &mut Client, ctx: &WorkerCtx, all: bool) {
    if !s.lease.valid() {
        return;
    }
    let states: Vec<Arc<UnitState>> = s.units.lock().expect("units lock").values().map(|r| r.st.clone()).collect();
    let mut sent = Vec::new();
    let units: Vec<UnitProgress> = states
        .iter()
        .filter_map(|st| {
            let safe = st.safe_offset.load(Ordering::SeqCst);
            let unchanged = safe == st.reported_offset.load(Ordering::SeqCst);
            if safe < 0 || (!all && (unchanged || st.stop.is_cancelled())) {
                return None;
            }
            sent.push((st.clone(), safe));
            Some(UnitProgress { unit_id: st.unit.unit_id.clone(), epoch: st.epoch, committed_offset: safe, lag: st.lag.load(Ordering::Relaxed) })
        })
        .collect();
    if units.is_empty() {
        return;
    }
    let req = ReportProgressRequest { worker_id: s.worker_id.clone(), generation: s.generation, units };
    match tokio::time::timeout(Duration::from_secs(5), client.report_progress(req)).await {
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            for (st, safe) in sent {
                if resp.granted.contains(&st.unit.unit_id) {
                    st.reported_offset.store(safe, Ordering::SeqCst);
                } else if resp.revoked.contains(&st.unit.unit_id) {
                    tracing::warn!(unit = st.unit.unit_id, epoch = st.epoch, "commit refused (fenced): stopping the unit");
                    ctx.metrics.commits_refused.with_label_values(&[&st.unit.name]).inc();
                    st.stop.cancel();
                }
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e.message(), "progress report failed; offsets are reported again next round"),
        Err(_) => tracing::debug!("progress report timed out; offsets are reported again next round"),
    }
}
