//! The worker's side of the coordinator protocol: register, keep the lease, follow the assignment stream,
//! start and stop units to match it, commit their offsets through the control plane, and on shutdown finish,
//! commit and hand over.

use crate::lease::Lease;
use crate::unit::produce;
use crate::unit::{self, Fence, UnitState, WorkerCtx};
use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use millrace_proto::endpoints::Failover;
use tonic::Code;

/// Calls go to the control plane address that last answered, and to the next one within the same call when it
/// fails (see `millrace_proto::endpoints`).
type Client = WorkerCoordinatorClient<Failover>;

/// Bound on every unary call to the control plane, so a host that vanished is noticed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unit leaving this worker may take to finish its in-flight batches before it is stopped (the control
/// plane waits 10 s for it to let go, then moves it anyway).
const RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// Bound on one control plane address's answer to a call, before the call goes to the next address: under
/// `CALL_TIMEOUT`, so that a second address still has time within the call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// First wait before trying a heartbeat again that failed or got no answer in time (then doubled, up to an
/// interval): within the lease, so that a hiccup shorter than the lease costs no unit.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(100);

/// `d` scaled by a random factor in [0.5, 1.5): workers that failed together (a control plane restarting) do not
/// all come back in the same instant, nor one exactly after the other at the same cadence.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has fresh keys: a random number without another dependency.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d.mul_f64(0.5 + (r % 1024) as f64 / 1024.0)
}

/// How the worker takes part in the cluster.
pub struct Settings {
    pub name: String,
    pub http_address: String,
    pub progress_every: Duration,
    pub shutdown_timeout: Duration,
    pub produce_timeout: Duration,
    pub producer_buffer_kb: usize,
}

struct Running {
    st: Arc<UnitState>,
    task: JoinHandle<()>,
}

type Units = Arc<Mutex<HashMap<String, Running>>>;

/// One registration: lives until the lease is lost or the worker has shut down.
struct Session {
    worker_id: String,
    generation: u64,
    /// The secret Register answered: every later call sends it (a worker id alone is no credential).
    secret: String,
    fence: Arc<Fence>,
    units: Units,
    /// Units that left the set and finished: their next progress report lets go of them (`released`).
    releasing: Arc<Mutex<Vec<Arc<UnitState>>>>,
    /// Units that left the set and are finishing their in-flight batches, each cancelled once it has.
    draining: Arc<Mutex<HashMap<String, Arc<CancellationToken>>>>,
    /// Cancelled when the lease is lost, or once the session is over.
    over: CancellationToken,
    /// Cancelled when the lease became too short for the session's producer (its delivery timeout was set from
    /// the lease at registration): the units are handed over and the worker registers again with a producer
    /// that fits.
    rejoin: CancellationToken,
}

/// Registers (again and again, as leases come and go) until `shutdown`.
pub async fn run(ctx: Arc<WorkerCtx>, mut client: Client, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    // Sent again with every retry of one registration: one that got no answer but was made is answered again,
    // not made twice (a second registration would hold units until its lease ran out).
    let mut registration = uuid::Uuid::new_v4().to_string();
    while !shutdown.is_cancelled() {
        let sent = Instant::now();
        let reg = RegisterRequest {
            name: settings.name.clone(),
            http_address: settings.http_address.clone(),
            registration: registration.clone(),
        };
        let failure = match tokio::time::timeout(CALL_TIMEOUT, client.register(reg)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => Err(format!("{:?}: {}", e.code(), e.message())),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        let r = match failure {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(error, retry_in = ?backoff, "cannot register with the control plane");
                tokio::select! { _ = shutdown.cancelled() => return Ok(()), _ = tokio::time::sleep(jitter(backoff)) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        registration = uuid::Uuid::new_v4().to_string();
        tracing::info!(worker_id = r.worker_id, generation = r.generation, lease_ms = r.lease_ms, "registered");
        let lease = Arc::new(Lease::new(sent, Duration::from_millis(r.lease_ms), Duration::from_millis(r.heartbeat_interval_ms)));
        // Nothing may wait in the producer longer than 30% of the lease (see `Fence`).
        let delivery_timeout = settings.produce_timeout.min(lease.length() * 3 / 10);
        let producer = produce::producer(&ctx.kafka_brokers, delivery_timeout, settings.producer_buffer_kb, ctx.max_message_bytes, 5)
            .map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))?;
        let session = Arc::new(Session {
            worker_id: r.worker_id,
            generation: r.generation,
            secret: r.session,
            fence: Arc::new(Fence { lease, producer, delivery_timeout }),
            units: Arc::default(),
            releasing: Arc::default(),
            draining: Arc::default(),
            over: CancellationToken::new(),
            rejoin: CancellationToken::new(),
        });
        let hb = tokio::spawn(heartbeat(session.clone(), client.clone()));
        let pr = tokio::spawn(progress(session.clone(), client.clone(), settings.progress_every, ctx.clone()));
        follow(&session, &ctx, &mut client, &shutdown).await;
        let clean = shutdown.is_cancelled() && !session.over.is_cancelled();
        // The lease still holds, but its producer no longer fits it: stop at once (the producer could not deliver
        // within the lease anyway), commit, and hand the units over now rather than after the lease.
        let rejoin = !clean && !session.over.is_cancelled() && session.rejoin.is_cancelled();
        let running: Vec<Running> = session.units.lock().expect("units lock").drain().map(|(_, r)| r).collect();
        let states: Vec<Arc<UnitState>> = running.iter().map(|r| r.st.clone()).collect();
        if clean {
            tracing::info!(units = running.len(), "shutting down: finishing in-flight batches");
            stop_units(running, |st| st.drain.cancel(), settings.shutdown_timeout).await;
        } else {
            stop_units(running, |st| st.stop.cancel(), Duration::from_secs(10)).await;
        }
        // What is durable is committed; the control plane takes it only from a unit's live holder (after a lost
        // lease it refuses, and the refusal is counted).
        report(&session, &mut client, &ctx, &states, true).await;
        if clean || rejoin {
            deregister(&session, &mut client).await;
        }
        session.over.cancel();
        hb.abort();
        pr.abort();
        let _ = tokio::join!(hb, pr);
        // The session's producer goes with it; dropping a producer purges what it still holds, so nothing queued
        // under this lease is delivered later.
        if Arc::strong_count(&session.fence) > 1 {
            tracing::warn!("a unit outlived its session; its producer goes when it does");
        }
    }
    Ok(())
}

/// Tells every unit to end (`how`), and waits for them, abandoning what takes longer than `limit`.
async fn stop_units(running: Vec<Running>, how: impl Fn(&UnitState), limit: Duration) {
    for r in &running {
        how(&r.st);
    }
    let deadline = Instant::now() + limit;
    for r in running {
        let mut task = r.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!(unit = r.st.unit.unit_id, "unit did not finish in time: abandoning its in-flight batches");
            r.st.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

async fn deregister(s: &Session, client: &mut Client) {
    let req = DeregisterRequest { worker_id: s.worker_id.clone(), generation: s.generation, session: s.secret.clone() };
    match tokio::time::timeout(CALL_TIMEOUT, client.deregister(req)).await {
        Ok(Ok(_)) => tracing::info!(worker_id = s.worker_id, "deregistered: units handed over"),
        Ok(Err(e)) => tracing::warn!(error = %e.message(), "deregistering failed: units move when the lease runs out"),
        Err(_) => tracing::warn!("deregistering timed out: units move when the lease runs out"),
    }
}

/// Keeps the lease: a heartbeat every interval, counted with the lease length and interval of the latest answer.
/// An attempt unanswered within an interval is given up and tried again promptly (with backoff), for as long as
/// the lease holds: waiting out a long timeout and then a whole interval more let one stalled request cost the
/// lease, and every unit with it.
async fn heartbeat(s: Arc<Session>, mut client: Client) {
    let lease = &s.fence.lease;
    let mut wait = lease.interval();
    let mut retry = HEARTBEAT_RETRY;
    loop {
        tokio::select! { _ = s.over.cancelled() => return, _ = tokio::time::sleep(wait) => {} }
        let sent = Instant::now();
        let attempt = lease.interval().clamp(Duration::from_millis(200), CALL_TIMEOUT);
        // The deadline travels with the call, so that a control plane that does not answer within it is left: the
        // prompt retry goes to the next address (and a refused connection moves on within this attempt).
        let mut req = tonic::Request::new(HeartbeatRequest { worker_id: s.worker_id.clone(), generation: s.generation, session: s.secret.clone() });
        req.set_timeout(attempt);
        match tokio::time::timeout(attempt + Duration::from_millis(250), client.heartbeat(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let was = lease.length();
                lease.renewed(sent, Some(Duration::from_millis(r.lease_ms)), Some(Duration::from_millis(r.heartbeat_interval_ms)));
                if lease.length() != was {
                    tracing::info!(worker_id = s.worker_id, lease_ms = r.lease_ms, heartbeat_interval_ms = r.heartbeat_interval_ms, "the control plane grants another lease length: counting with it from now on");
                }
                // Records may wait in the producer up to its delivery timeout, which must stay within 30% of the
                // lease (see `Fence`); one set for a longer lease cannot be changed, so the session starts over.
                if s.fence.delivery_timeout > lease.length() * 3 / 10 && !s.rejoin.is_cancelled() {
                    tracing::warn!(worker_id = s.worker_id, delivery_timeout = ?s.fence.delivery_timeout, lease = ?lease.length(), "the lease is now too short for this session's producer: handing the units over and registering again");
                    // Records queued under the longer lease could still be delivered after the shorter one ran
                    // out, while the units' next holder produces: end the lease here (nothing more is handed to
                    // the producer) and purge what it holds before the units are handed over.
                    lease.end();
                    let purge = rdkafka::producer::PurgeConfig::default().queue().inflight();
                    rdkafka::producer::Producer::purge(&s.fence.producer, purge);
                    s.rejoin.cancel();
                    return;
                }
                wait = lease.interval();
                retry = HEARTBEAT_RETRY;
            }
            Ok(Err(e)) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::warn!(worker_id = s.worker_id, "lease lost: stopping every unit and registering again");
                s.over.cancel();
                return;
            }
            other => {
                if !lease.valid() {
                    tracing::warn!(worker_id = s.worker_id, ?other, "lease ran out without a successful heartbeat: stopping every unit");
                    s.over.cancel();
                    return;
                }
                let why = match other {
                    Ok(Err(e)) => format!("{:?}: {}", e.code(), e.message()),
                    _ => format!("no answer within {attempt:?}"),
                };
                tracing::warn!(worker_id = s.worker_id, error = why, retry_in = ?retry, lease_left = ?lease.remaining(), "heartbeat failed; trying again");
                wait = jitter(retry);
                retry = (retry * 2).min(lease.interval());
            }
        }
    }
}

/// Follows the assignment stream until the lease is lost or the worker shuts down, reopening it when it breaks.
async fn follow(s: &Session, ctx: &Arc<WorkerCtx>, client: &mut Client, shutdown: &CancellationToken) {
    let req = WatchAssignmentsRequest { worker_id: s.worker_id.clone(), generation: s.generation, session: s.secret.clone() };
    loop {
        let opened = tokio::select! {
            _ = s.over.cancelled() => return,
            _ = s.rejoin.cancelled() => return,
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CALL_TIMEOUT, client.watch_assignments(req.clone())) => r,
        };
        match opened {
            Ok(Ok(stream)) => {
                let mut stream = stream.into_inner();
                loop {
                    let msg = tokio::select! {
                        _ = s.over.cancelled() => return,
                        _ = s.rejoin.cancelled() => return,
                        _ = shutdown.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(set)) => reconcile(s, ctx, set),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Ok(Err(e)) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => return,
            Ok(Err(e)) => tracing::debug!(error = %e.message(), "assignment stream unavailable; retrying"),
            Err(_) => tracing::debug!("no answer opening the assignment stream; retrying"),
        }
        tokio::select! {
            _ = s.over.cancelled() => return,
            _ = s.rejoin.cancelled() => return,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Makes the running units equal to the set: units gone or at another epoch (moved, or redefined) stop, new ones
/// start.
fn reconcile(s: &Session, ctx: &Arc<WorkerCtx>, set: AssignmentSet) {
    let mut units = s.units.lock().expect("units lock");
    let wanted: HashMap<String, Assignment> =
        set.assignments.into_iter().filter_map(|a| a.unit.as_ref().map(|u| (u.unit_id.clone(), a.clone()))).collect();
    let leaving: Vec<String> = units
        .iter()
        .filter(|(id, r)| !(wanted.get(*id).is_some_and(|a| a.epoch == r.st.epoch) && !r.st.stop.is_cancelled()))
        .map(|(id, _)| id.clone())
        .collect();
    for id in leaving {
        let Some(r) = units.remove(&id) else { continue };
        if wanted.contains_key(&id) || r.st.stop.is_cancelled() {
            // Redefined (a new epoch here) or fenced: stop at once.
            tracing::info!(unit = id, epoch = r.st.epoch, "unit revoked");
            r.st.stop.cancel();
            continue;
        }
        // Left out of the set: handed over to another worker (or removed). Finish what is in flight, commit, and
        // let go; the other worker starts only then, from the last offset, so nothing is processed twice.
        tracing::info!(unit = id, epoch = r.st.epoch, "unit leaving this worker: finishing its in-flight batches");
        r.st.drain.cancel();
        let releasing = s.releasing.clone();
        // Until it has, the unit does not start here again (a hand-over called off): two pipelines of one
        // partition would process its records twice and out of order.
        let drained = Arc::new(CancellationToken::new());
        s.draining.lock().expect("draining lock").insert(id.clone(), drained.clone());
        let draining = s.draining.clone();
        tokio::spawn(async move {
            let _done = DoneOnDrop(drained, draining, r.st.unit.unit_id.clone());
            let mut task = r.task;
            if tokio::time::timeout(RELEASE_LIMIT, &mut task).await.is_err() {
                // Not let go: the control plane moves it once its hand-over times out.
                tracing::warn!(unit = r.st.unit.unit_id, "unit did not finish its in-flight batches in time: abandoning them");
                r.st.stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                return;
            }
            r.st.released.store(true, Ordering::SeqCst);
            releasing.lock().expect("releasing lock").push(r.st);
        });
    }
    for (id, a) in wanted {
        if units.contains_key(&id) {
            continue;
        }
        let Some(unit) = a.unit else { continue };
        tracing::info!(unit = id, epoch = a.epoch, from_offset = a.committed_offset, "unit assigned");
        let st = Arc::new(UnitState::new(unit, a.epoch, a.committed_offset).with_provenance(a.source_incarnation, &a.provenance));
        let after = s.draining.lock().expect("draining lock").get(&id).cloned();
        let run = unit::run(ctx.clone(), st.clone(), s.fence.clone());
        let task = tokio::spawn(async move {
            if let Some(drained) = after {
                drained.cancelled().await;
            }
            run.await
        });
        units.insert(id, Running { st, task });
    }
}

/// Marks a unit drained (its token cancelled, its entry gone) however its draining task ends.
struct DoneOnDrop(Arc<CancellationToken>, Arc<Mutex<HashMap<String, Arc<CancellationToken>>>>, String);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let mut draining = self.1.lock().expect("draining lock");
        if draining.get(&self.2).is_some_and(|t| Arc::ptr_eq(t, &self.0)) {
            draining.remove(&self.2);
        }
        self.0.cancel();
    }
}

async fn progress(s: Arc<Session>, mut client: Client, every: Duration, ctx: Arc<WorkerCtx>) {
    let mut round = 0u64;
    loop {
        tokio::select! { _ = s.over.cancelled() => return, _ = tokio::time::sleep(every) => {} }
        round += 1;
        let mut states: Vec<Arc<UnitState>> = s.units.lock().expect("units lock").values().map(|r| r.st.clone()).collect();
        states.extend(s.releasing.lock().expect("releasing lock").iter().cloned());
        // Lag alone is refreshed about every 5 s; offsets and errors as soon as they change.
        report(&s, &mut client, &ctx, &states, round.is_multiple_of(25)).await;
    }
}

/// Commits the units' safe offsets and reports their errors; units the control plane no longer grants are
/// stopped. `all` reports every unit, changed or not (for lag refreshes and the last report of a session). The
/// control plane, not the worker's own view of its lease, judges each commit.
async fn report(s: &Session, client: &mut Client, ctx: &WorkerCtx, states: &[Arc<UnitState>], all: bool) {
    let mut sent = Vec::new();
    let units: Vec<UnitProgress> = states
        .iter()
        .filter_map(|st| {
            // Resets before the offset: the unit stores the reset offset before counting the reset, so a report
            // that carries a reset never carries the offset from before it.
            // Marks before the offset too: they are stored after it, so they are never ahead of the offset sent (a
            // unit restarted there uses them only if taken exactly there).
            let marks = st.marks.lock().expect("marks lock").clone();
            let resets = st.source_resets.load(Ordering::SeqCst);
            let safe = st.safe_offset.load(Ordering::SeqCst);
            let error = st.error();
            // Written before the error and read after it: the flag is never older than the error sent with it.
            let cannot_run_here = st.cannot_run_here.load(Ordering::SeqCst) && !error.is_empty();
            let offset_reset = resets != st.reported_resets.load(Ordering::SeqCst);
            let incarnation = st.source_incarnation + resets + st.gaps.load(Ordering::SeqCst);
            let changed = offset_reset || incarnation != st.reported_incarnation.load(Ordering::SeqCst) || safe != st.reported_offset.load(Ordering::SeqCst) || error != *st.reported_error.lock().expect("lock");
            let released = st.released.load(Ordering::SeqCst);
            if !released && !all && (!changed || st.stop.is_cancelled()) {
                return None;
            }
            sent.push((st.clone(), safe, error.clone(), resets, incarnation));
            Some(UnitProgress {
                unit_id: st.unit.unit_id.clone(),
                epoch: st.epoch,
                committed_offset: safe,
                lag: st.lag.load(Ordering::Relaxed),
                error,
                cannot_run_here,
                offset_reset,
                provenance: marks.marks.encode(&st.unit.source_topic, marks.offset),
                source_incarnation: incarnation,
                released,
            })
        })
        .collect();
    if units.is_empty() {
        return;
    }
    let req = ReportProgressRequest { worker_id: s.worker_id.clone(), generation: s.generation, units, session: s.secret.clone() };
    match tokio::time::timeout(CALL_TIMEOUT, client.report_progress(req)).await {
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            for (st, safe, error, resets, incarnation) in sent {
                if st.released.load(Ordering::SeqCst) {
                    // Answered either way: let go (granted), or no longer this worker's (revoked).
                    s.releasing.lock().expect("releasing lock").retain(|r| !Arc::ptr_eq(r, &st));
                    continue;
                }
                if resp.granted.contains(&st.unit.unit_id) {
                    st.reported_offset.store(safe, Ordering::SeqCst);
                    st.reported_resets.store(resets, Ordering::SeqCst);
                    st.reported_incarnation.fetch_max(incarnation, Ordering::SeqCst);
                    *st.reported_error.lock().expect("lock") = error;
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
