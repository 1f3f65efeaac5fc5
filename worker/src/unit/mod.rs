//! One unit of work: a source partition read in batches, each batch run through the sidecar, every output (and
//! dead letter) produced, and the unit's safe offset advanced only when all of a batch's records are acknowledged
//! by the broker. This module runs a unit's life: it checks the function against the sidecar, runs the pipeline
//! (`pipeline`), and after a failure decides with `recovery` how to go on so that no record stalls the partition.

pub(crate) mod pipeline;
pub(crate) mod probation;
pub(crate) mod produce;
pub(crate) mod provenance;
pub(crate) mod recovery;
pub(crate) mod results;
pub(crate) mod source;
pub(crate) mod sync;

use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::sidecar::{SidecarError, Sidecars};
use millrace_proto::v1::{UnitKind, WorkUnit};
use pipeline::{RunPlan, UnitError};
use recovery::Recovery;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What every unit of a worker shares.
pub struct WorkerCtx {
    pub kafka_brokers: String,
    pub sidecars: Sidecars,
    pub clickhouse: crate::clickhouse::ClickHouse,
    pub metrics: Metrics,
    pub batch_size: usize,
    pub batch_max_bytes: usize,
    pub batch_linger: Duration,
    pub max_in_flight: usize,
    /// Input bytes in flight across all units, in KiB permits: what bounds a worker's memory, whatever its units.
    pub in_flight_kib: Arc<Semaphore>,
    /// The same budget again for table syncs' batches, apart: a sync waiting out a ClickHouse outage with its
    /// batches in hand must not stall the transforms and consumers.
    pub sync_in_flight_kib: Arc<Semaphore>,
    pub max_in_flight_kib: u32,
    pub fetch_buffer_kb: usize,
    pub max_message_bytes: usize,
    pub poison_tries: u32,
    pub probations: probation::Probations,
}

/// What the units of one lease share: the lease, and a producer whose queue cannot outlive it. A record waits in
/// the producer at most `delivery_timeout`, and units produce only with at least that much lease left, so nothing
/// is delivered after the control plane could have given the unit away. The producer is dropped (its queue purged)
/// when the lease ends.
pub struct Fence {
    pub lease: Arc<Lease>,
    pub producer: produce::Producer,
    pub delivery_timeout: Duration,
}

impl Fence {
    pub fn may_produce(&self) -> bool {
        self.lease.valid_for(self.delivery_timeout)
    }
}

/// Run numbers, across the process (see `UnitState::next_run`).
static NEXT_RUN: AtomicU64 = AtomicU64::new(0);

/// A running unit, as the worker's supervisor and progress reporter see it.
pub struct UnitState {
    pub unit: WorkUnit,
    pub epoch: u64,
    /// The next source offset to process: everything before it is handled and durable. -1 = nothing yet.
    pub safe_offset: AtomicI64,
    /// The last safe offset the control plane accepted.
    pub reported_offset: AtomicI64,
    /// The next offset the reader will read, for lag.
    pub position: AtomicI64,
    /// Records between the safe offset and the high watermark; -1 = unknown.
    pub lag: AtomicI64,
    /// The partition's high watermark as the last fetch response gave it; -1 = unknown.
    pub high_watermark: AtomicI64,
    /// Times the source was found recreated (see `UnitError::SourceRecreated`), and of those the control plane
    /// has accepted: while they differ, progress reports ask it to take the lower offset.
    pub source_resets: AtomicU64,
    /// The unit left its worker's set and finished what it had in flight: its next report lets go of it.
    pub released: AtomicBool,
    pub reported_resets: AtomicU64,
    /// The source incarnation its assignment gave (see `provenance`); its outputs carry this plus `source_resets`.
    pub source_incarnation: u64,
    /// The run of the unit's pipeline on this worker its outputs carry: a restart is a new run when an output
    /// may have been lost while a later one was delivered (see `provenance` and `next_run`).
    pub runs: AtomicU64,
    /// Such restarts: each also raises the source incarnation, so that a later holder's re-emits (which compare
    /// by offset only) are not dropped as seen either.
    pub gaps: AtomicU64,
    /// The source incarnation the control plane last accepted from this unit: outputs never carry a higher one
    /// before it has (a holder after this one starts from the stored one, and its outputs must not look older).
    pub reported_incarnation: AtomicU64,
    /// The unit's outputs in the producer, and failed deliveries (of which `failures_seen` were before this run).
    pub delivery: Arc<produce::Delivery>,
    failures_seen: AtomicU64,
    /// What the unit had read as of its safe offset (see `provenance`).
    pub marks: Mutex<provenance::Committed>,
    /// Why the unit cannot run; "" while it runs.
    pub error: Mutex<String>,
    /// The error the control plane last accepted.
    pub reported_error: Mutex<String>,
    /// The error is this worker's own (its sidecar lacks the function, or it has no such sidecar): another worker
    /// may run the unit, and the control plane moves it there. Set before `error`.
    pub cannot_run_here: AtomicBool,
    /// Stop at once (revoked, lease lost).
    pub stop: CancellationToken,
    /// Stop reading, finish what is in flight (clean shutdown).
    pub drain: CancellationToken,
}

impl UnitState {
    pub fn new(unit: WorkUnit, epoch: u64, committed_offset: i64) -> Self {
        Self {
            unit,
            epoch,
            safe_offset: AtomicI64::new(committed_offset),
            reported_offset: AtomicI64::new(committed_offset),
            position: AtomicI64::new(committed_offset),
            lag: AtomicI64::new(-1),
            high_watermark: AtomicI64::new(-1),
            source_resets: AtomicU64::new(0),
            released: AtomicBool::new(false),
            reported_resets: AtomicU64::new(0),
            source_incarnation: 0,
            runs: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            reported_incarnation: AtomicU64::new(0),
            delivery: Arc::default(),
            failures_seen: AtomicU64::new(0),
            marks: Mutex::new(provenance::Committed { offset: committed_offset, marks: Arc::default() }),
            error: Mutex::new(String::new()),
            reported_error: Mutex::new(String::new()),
            cannot_run_here: AtomicBool::new(false),
            stop: CancellationToken::new(),
            drain: CancellationToken::new(),
        }
    }

    /// The unit as its assignment left it: the source incarnation, and what it had read before its offset.
    pub fn with_provenance(mut self, source_incarnation: u64, marks: &[u8]) -> Self {
        self.source_incarnation = source_incarnation;
        self.reported_incarnation = AtomicU64::new(source_incarnation);
        let offset = self.safe_offset.load(Ordering::SeqCst);
        let marks = provenance::Marks::decode(marks, &self.unit.source_topic, offset);
        self.marks = Mutex::new(provenance::Committed { offset, marks: Arc::new(marks) });
        self
    }

    /// The run a pipeline starting now produces as. The same as the last unless one of the unit's deliveries
    /// failed (or is not known not to have) since it started: re-emits then may fill a gap the producer left, and
    /// must not be dropped downstream. Waits for what earlier runs left in the producer (its delivery timeout).
    pub async fn next_run(&self, limit: Duration) -> u64 {
        let settled = self.delivery.settled(limit).await;
        let failures = self.delivery.failures();
        let failed = self.failures_seen.swap(failures, Ordering::SeqCst) != failures;
        if !settled || failed || self.runs.load(Ordering::SeqCst) == 0 {
            if !settled || failed {
                self.gaps.fetch_add(1, Ordering::SeqCst);
            }
            // Runs are numbered across the process: a unit started again at the same epoch (a hand-over called
            // off) never produces as a run below one it produced as before.
            let run = NEXT_RUN.fetch_add(1, Ordering::SeqCst) + 1;
            self.runs.store(run, Ordering::SeqCst);
            tracing::debug!(unit = self.unit.unit_id, run, settled, failed, "a new run: its re-emits are not dropped downstream");
            return run;
        }
        self.runs.load(Ordering::SeqCst)
    }

    /// The source incarnation the unit's outputs carry now.
    pub fn incarnation(&self) -> u64 {
        self.source_incarnation + self.source_resets.load(Ordering::SeqCst) + self.gaps.load(Ordering::SeqCst)
    }

    /// Waits until the control plane has accepted the unit's source incarnation (see `reported_incarnation`);
    /// false if the unit is told to stop or drain first.
    pub async fn incarnation_granted(&self) -> bool {
        while self.reported_incarnation.load(Ordering::SeqCst) < self.incarnation() {
            if !self.pause(Duration::from_millis(50)).await {
                return false;
            }
        }
        true
    }

    /// The marks as of the safe offset `offset`, just stored (after it: a report reading the marks first and the
    /// offset next never sends marks ahead of the offset).
    pub fn commit_marks(&self, offset: i64, marks: &Arc<provenance::Marks>) {
        let mut c = self.marks.lock().expect("marks lock");
        if c.offset != offset || !Arc::ptr_eq(&c.marks, marks) {
            *c = provenance::Committed { offset, marks: marks.clone() };
        }
    }

    /// The marks a run starting at `start` begins with: none unless they are as of that offset.
    pub fn marks_at(&self, start: i64) -> provenance::Marks {
        let c = self.marks.lock().expect("marks lock");
        if c.offset == start {
            (*c.marks).clone()
        } else {
            provenance::Marks::default()
        }
    }

    pub fn error(&self) -> String {
        self.error.lock().expect("error lock").clone()
    }

    fn ended(&self) -> bool {
        self.stop.is_cancelled() || self.drain.is_cancelled()
    }

    /// Sleeps unless the unit is told to stop or drain first; false when it was.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.drain.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Why a unit cannot run at all (shown in ListWorkers and as `millrace_unit_errors{reason}`).
struct Problem {
    reason: &'static str,
    message: String,
    /// The worker has no sidecar of the function's runtime (`--sidecar NAME=URL`).
    no_sidecar: bool,
}

impl Problem {
    /// Whether the problem is this worker's alone: its sidecars (none of that name, or one lacking the function),
    /// not the plan or the records. Another worker, configured with other sidecars, may run the unit (a rolling
    /// deploy: old sidecars lack a new function).
    fn here_only(&self) -> bool {
        self.no_sidecar || matches!(self.reason, "missing_function" | "wrong_kind")
    }
}

/// The unit's function must be hosted by its sidecar, as the right kind: otherwise every record would fail.
async fn check_function(ctx: &WorkerCtx, st: &UnitState) -> Result<(), Problem> {
    let u = &st.unit;
    if u.dead_letter_topic.is_empty() {
        let message = "the unit has no dead letter topic: apply the plan again with a current control plane".into();
        return Err(Problem { reason: "no_dead_letter_topic", message, no_sidecar: false });
    }
    if u.kind == UnitKind::UnitTableSync as i32 {
        return match &u.table {
            Some(t) if !t.columns.is_empty() => Ok(()),
            _ => Err(Problem {
                reason: "no_table",
                message: "the sync unit names no table: apply the plan again with a current control plane".into(),
                no_sidecar: false,
            }),
        };
    }
    let f = u.function.clone().unwrap_or_default();
    let described = ctx.sidecars.describe(&f.runtime).await.map_err(|e| Problem {
        reason: "sidecar_unreachable",
        message: e.to_string(),
        no_sidecar: matches!(e, SidecarError::Unknown(_)),
    })?;
    let consumer = u.kind == UnitKind::UnitConsumer as i32;
    let what = if consumer { "consumer" } else { "transform" };
    match described.functions.iter().find(|x| x.name == f.name) {
        None => {
            let hosted: Vec<&str> = described.functions.iter().map(|x| x.name.as_str()).collect();
            Err(Problem {
                reason: "missing_function",
                message: format!(
                    "function `{}` is not hosted by sidecar `{}` (it hosts: {}): deploy it there, or fix the function name of {what} `{}`",
                    f.name,
                    f.runtime,
                    hosted.join(", "),
                    u.name
                ),
                no_sidecar: false,
            })
        }
        Some(info) if info.consumer != consumer => Err(Problem {
            reason: "wrong_kind",
            message: format!(
                "function `{}` on sidecar `{}` is a {}, but {what} `{}` needs a {what}",
                f.name,
                f.runtime,
                if info.consumer { "consumer" } else { "transform" },
                u.name
            ),
            no_sidecar: false,
        }),
        Some(_) => Ok(()),
    }
}

/// Runs the unit until it is stopped or drained. After a failure it resumes from the safe offset; failures a
/// record may cause go through `Recovery`, which isolates such a record and sends it to the dead letter queue.
pub async fn run(ctx: Arc<WorkerCtx>, st: Arc<UnitState>, fence: Arc<Fence>) {
    let u = &st.unit;
    let function = u.name.clone();
    ctx.metrics.units.with_label_values(&[&function]).inc();
    let mut recovery = Recovery::new(ctx.batch_size, ctx.poison_tries, st.safe_offset.load(Ordering::SeqCst));
    let mut backoff = MIN_BACKOFF;
    let mut problem: Option<&'static str> = None;
    // A sidecar process broke while this unit had a batch on it, and nothing says it was another unit's record.
    let mut suspect = false;
    let set_problem = |now: Option<Problem>, was: &mut Option<&'static str>| {
        let reason = now.as_ref().map(|p| p.reason);
        if *was != reason {
            if let Some(r) = *was {
                let _ = ctx.metrics.unit_errors.remove_label_values(&[&function, r]);
            }
            if let Some(r) = reason {
                ctx.metrics.unit_errors.with_label_values(&[&function, r]).set(1);
            }
            *was = reason;
        }
        st.cannot_run_here.store(now.as_ref().is_some_and(Problem::here_only), Ordering::SeqCst);
        *st.error.lock().expect("error lock") = now.map(|p| p.message).unwrap_or_default();
    };
    while !st.ended() {
        if let Err(p) = check_function(&ctx, &st).await {
            tracing::warn!(unit = u.unit_id, epoch = st.epoch, reason = p.reason, error = p.message, retry_in = ?backoff, "unit cannot run");
            set_problem(Some(p), &mut problem);
            if !st.pause(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        set_problem(None, &mut problem);
        let start = st.safe_offset.load(Ordering::SeqCst);
        let plan = RunPlan {
            cap: recovery.cap(),
            in_flight: if recovery.isolating() || suspect { 1 } else { ctx.max_in_flight },
            condemned: recovery.condemned().cloned(),
            probation: suspect,
            stop_at: recovery.isolating_until(),
        };
        tracing::debug!(unit = u.unit_id, start, cap = plan.cap, in_flight = plan.in_flight, condemned = ?plan.condemned, "pipeline starting");
        let result = tokio::select! {
            _ = st.stop.cancelled() => break,
            r = pipeline::run(&ctx, &st, &fence, start, plan), if u.kind != UnitKind::UnitTableSync as i32 => r,
            r = sync::run(&ctx, &st, &fence, start), if u.kind == UnitKind::UnitTableSync as i32 => r,
        };
        recovery.progressed(st.safe_offset.load(Ordering::SeqCst));
        let e = match result {
            Ok(()) if st.ended() => break,
            Ok(()) => UnitError::Ended,
            Err(UnitError::Rejoin) => {
                // A probation run went through (cleared), an isolation ended, or a partition goes back to its own
                // process. While isolating, runs stay on probation: each crash then halves the suspects at once.
                suspect &= recovery.isolating();
                continue;
            }
            // A crash is held against the unit only when it broke its probation run (see `probation`).
            Err(UnitError::Batch(f)) if f.kind == recovery::Poison::SidecarCrashed && !suspect => {
                suspect = true;
                backoff = MIN_BACKOFF;
                UnitError::Suspect(f.detail)
            }
            Err(UnitError::SourceRecreated { topic, partition, detail, unread }) => {
                // The pipeline is over (nothing of it stores an offset any more): the new topic is read from its
                // beginning, and the control plane told to take the lower offset.
                tracing::warn!(unit = u.unit_id, epoch = st.epoch, topic, partition, detail, unread, "source topic recreated outside Millrace: reading it from its beginning");
                ctx.metrics.source_recreated.with_label_values(&[&function]).inc();
                ctx.metrics.records_lost_to_recreation.with_label_values(&[&function]).inc_by(unread.max(0) as u64);
                st.safe_offset.store(-1, Ordering::SeqCst);
                st.position.store(-1, Ordering::SeqCst);
                st.source_resets.fetch_add(1, Ordering::SeqCst);
                recovery = Recovery::new(ctx.batch_size, ctx.poison_tries, -1);
                backoff = MIN_BACKOFF;
                continue;
            }
            Err(e) => e,
        };
        if st.safe_offset.load(Ordering::SeqCst) != start {
            backoff = MIN_BACKOFF;
        }
        if let UnitError::Batch(f) = &e {
            recovery.failed(f.clone());
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(unit = u.unit_id, epoch = st.epoch, error = %e, retry_in = ?backoff, "unit pipeline failed; resuming from the last safe offset");
        ctx.metrics.unit_restarts.with_label_values(&[&function]).inc();
        if !st.pause(backoff).await {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    set_problem(None, &mut problem);
    ctx.metrics.units.with_label_values(&[&function]).dec();
    ctx.metrics.forget_partition(&function, &u.source_topic, u.partition);
    tracing::info!(unit = u.unit_id, epoch = st.epoch, "unit stopped");
}
