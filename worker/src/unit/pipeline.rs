//! One run of a unit's pipeline, from a start offset until an error, a stop or a drain. Three stages run
//! concurrently with a bounded number of batches between the first and the last: `read` (batches bounded by
//! records and bytes), `respond` (sidecar results turned into outputs and dead letters, produced under the fence)
//! and `acknowledge` (the safe offset moves once a batch's every record is acknowledged).

use super::produce::{send, too_large, BatchAcks};
use super::provenance::{Marks, Origin};
use super::recovery::{BatchFailure, Condemned, Poison};
use super::source::{consumer, first_record, next_record, size, BatchBuilder, Held, Messages, Record};
use super::{Fence, UnitState, WorkerCtx};
use crate::output::{output_key, DeadLetter, OriginalRecord};
use crate::sidecar::SidecarError;
use super::results::{outcomes, Answer};
use millrace_proto::v1::{process_request, ProcessRequest, RecordBatch, Route, UnitKind, WorkUnit};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a partition stays on another sidecar process than its own before it tries its own again.
const REJOIN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Room left in a broker message for the key, headers and record framing.
const RECORD_OVERHEAD: usize = 512;

/// How one run batches: records per batch, batches in flight, and a record to dead-letter instead of processing.
pub struct RunPlan {
    pub cap: usize,
    pub in_flight: usize,
    pub condemned: Option<Condemned>,
    /// Run alone on the sidecar process among units on probation (see `probation`): one batch, or while
    /// isolating until `stop_at`.
    pub probation: bool,
    /// While isolating: stop once past this offset, so that the next run has normal batches again.
    pub stop_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error("batch at offset {} ({} records) failed: {}: {}", .0.first, .0.len, .0.kind.error_type(), .0.detail)]
    Batch(BatchFailure),
    #[error("{0}: the sidecar and this worker disagree (an SDK of another version, or an app changed but not applied yet): update or apply it; the unit retries")]
    Protocol(String),
    #[error("the lease is lost (or about to be) or the unit was revoked: stopping before producing")]
    Fenced,
    #[error("moving back to the partition's own sidecar process")]
    Rejoin,
    #[error("{0}; not yet held against this unit's records: its next batch runs alone on the process")]
    Suspect(String),
    #[error("the sidecar reached batch {0} after its deadline and did not run it (a slow function, or a lease running short): running it again")]
    Expired(u64),
    #[error("a produce was not acknowledged: {0}")]
    Produce(String),
    #[error("the pipeline ended without being asked to")]
    Ended,
    #[error("stopped while the insert could not be made: {0}")]
    Table(String),
    /// The source partition holds fewer records than were committed, or its offsets went back: the topic was
    /// deleted and created again (or truncated) outside Millrace. The unit reads the new topic from its start.
    #[error("the source topic {topic} partition {partition} was deleted and created again outside Millrace ({detail}): reading it from its beginning; records of the old topic not yet read ({unread}) are lost")]
    SourceRecreated { topic: String, partition: i32, detail: String, unread: i64 },
}

/// A batch on its way: at the sidecar (or, condemned, going straight to the dead letter queue).
struct Sent {
    batch_id: u64,
    records: Held,
    sent_at: Instant,
    condemned: Option<Condemned>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// What the unit had read once this batch was read (see `provenance`).
    marks: Arc<Marks>,
}

/// A batch whose outputs are with the producer, waiting for acknowledgements.
struct Pending {
    first: i64,
    len: usize,
    next_offset: i64,
    acks: Arc<BatchAcks>,
    outputs: u64,
    dead_letters: u64,
    marks: Arc<Marks>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

pub async fn run(ctx: &WorkerCtx, st: &Arc<UnitState>, fence: &Fence, start: i64, plan: RunPlan) -> Result<(), UnitError> {
    let function = st.unit.function.clone().unwrap_or_default();
    let consumer = consumer(ctx, st, start)?;
    // The first record before the sidecar: a unit on probation takes its turn only once it has a batch to run.
    let mut messages = consumer.stream();
    let Some(first) = first_record(ctx, st, &consumer, &mut messages, start).await? else { return Ok(()) };
    let open = || ctx.sidecars.open(&function.runtime, &function.name, st.unit.partition, plan.in_flight);
    let mut session = open().await?;
    // On probation the turn comes first and the stream after it: a stream opened before would have been broken
    // by the crash of whoever held the turn.
    let _turn = match plan.probation {
        true => {
            // The turn must be for the process the run is on: a process that came back (or went away) meanwhile
            // changes which one `open` picks.
            let mut tries = 0;
            loop {
                let turn = tokio::select! {
                    t = ctx.probations.turn(&session.url) => t,
                    _ = st.stop.cancelled() => return Ok(()),
                };
                let turn_on = std::mem::take(&mut session.url);
                session = open().await?;
                tries += 1;
                if session.url == turn_on {
                    tracing::info!(unit = st.unit.unit_id, process = session.url, start, "probation: alone on the sidecar process");
                    break Some(turn);
                }
                if tries >= 5 {
                    return Err(UnitError::Sidecar(crate::sidecar::SidecarError::Unreachable {
                        name: function.runtime.clone(),
                        detail: "its processes keep changing while a unit waits for its probation turn".into(),
                    }));
                }
            }
        }
        false => None,
    };
    let call_timeout = session.timeout();
    // A partition moved off its own process (which was down) goes back to it once that process could be up again.
    let rejoin_at = session.fallback.then(|| Instant::now() + REJOIN_AFTER);
    let permits = Arc::new(Semaphore::new(plan.in_flight.max(1)));
    let (sent_tx, sent_rx) = mpsc::channel::<Sent>(plan.in_flight.max(1));
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(plan.in_flight.max(1));
    let sender = session.sender();
    let (rejoin, ..) = tokio::try_join!(
        read(ctx, st, fence, (messages, first), &plan, (sender, call_timeout, [rejoin_at, (plan.probation && plan.stop_at.is_none()).then(Instant::now)].into_iter().flatten().min()), permits, sent_tx),
        respond(ctx, st, fence, session, sent_rx, pending_tx),
        acknowledge(ctx, st, pending_rx),
    )?;
    if rejoin {
        return Err(UnitError::Rejoin);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn read(
    ctx: &WorkerCtx,
    st: &UnitState,
    fence: &Fence,
    (mut messages, first): (Messages<'_>, Record<'_>),
    plan: &RunPlan,
    (sidecar, call_timeout, rejoin_at): (crate::sidecar::BatchSender, std::time::Duration, Option<Instant>),
    permits: Arc<Semaphore>,
    sent: mpsc::Sender<Sent>,
) -> Result<bool, UnitError> {
    let mut batch_id = 0u64;
    // The offset after the last record sent in this run.
    let mut sent_to = i64::MIN;
    let mut carry = Some(first);
    loop {
        // Stops reading; what is in flight finishes, and the unit reopens on its own process (or, on probation,
        // ends its turn after one batch).
        if batch_id > 0 && rejoin_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(true);
        }
        if plan.stop_at.is_some_and(|end| sent_to >= end) {
            return Ok(true);
        }
        let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
        let first = match carry.take() {
            Some(r) => r,
            None => match next_record(st, &mut messages, None).await? {
                Some(r) => r,
                None => return Ok(false),
            },
        };
        let condemned = plan.condemned.as_ref().filter(|c| c.offset == first.offset()).cloned();
        let mut batch = BatchBuilder::default();
        batch.push(&first);
        drop(first);
        if condemned.is_none() {
            let deadline = Instant::now() + ctx.batch_linger;
            while batch.len() < plan.cap {
                let Some(r) = next_record(st, &mut messages, Some(deadline)).await? else { break };
                // A condemned record goes alone, and so does whatever would take the batch over its byte bound.
                let condemned_next = plan.condemned.as_ref().is_some_and(|c| c.offset == r.offset());
                if condemned_next || batch.bytes + size(&r) > ctx.batch_max_bytes {
                    carry = Some(r);
                    break;
                }
                batch.push(&r);
            }
        }
        let bytes = batch.bytes;
        // A record read but left for the next batch is not this batch's: its offset is not committed with it.
        let marks = if carry.is_some() { messages.marks_before_last() } else { messages.marks() };
        let (records, held) = batch.finish();
        sent_to = held.last_offset() + 1;
        st.position.store(sent_to, Ordering::Relaxed);
        ctx.metrics.records_in.with_label_values(&[&st.unit.name]).inc_by(held.len() as u64);
        let kib = (bytes.div_ceil(1024) as u32).clamp(1, ctx.max_in_flight_kib);
        let memory = ctx.in_flight_kib.clone().acquire_many_owned(kib).await.expect("semaphore never closed");
        // Fencing before the function runs: a consumer's side effects happen at the sidecar.
        if !fence.lease.valid() || st.stop.is_cancelled() {
            return Err(UnitError::Fenced);
        }
        let to_sidecar = condemned.is_none().then(|| {
            batch_id += 1;
            let deadline_unix_ms = deadline_unix_ms(st, fence, call_timeout);
            ProcessRequest { message: Some(process_request::Message::Batch(RecordBatch { batch_id, records, deadline_unix_ms })) }
        });
        let batch = Sent { batch_id, records: held, sent_at: Instant::now(), condemned, permits: (permit, memory), marks };
        if sent.send(batch).await.is_err() {
            return Ok(false);
        }
        // A stream the sidecar broke is reported by `respond`, against the batch it was working on.
        if let Some(msg) = to_sidecar {
            if sidecar.send(msg).await.is_err() {
                return Ok(false);
            }
        }
    }
}

/// When the sidecar must no longer start a batch sent now: once the worker stops waiting for its result, or once
/// the unit's lease could be gone by the time it is done (a transform's outputs also need the delivery timeout).
/// Wall-clock milliseconds, as the sidecar may run on another host (clocks kept by NTP).
fn deadline_unix_ms(st: &UnitState, fence: &Fence, call_timeout: std::time::Duration) -> i64 {
    let mut held = fence.lease.remaining();
    if st.unit.kind == UnitKind::UnitTransform as i32 {
        held = held.saturating_sub(fence.delivery_timeout);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now + held.min(call_timeout)).as_millis().min(i64::MAX as u128) as i64
}

async fn respond(
    ctx: &WorkerCtx,
    st: &UnitState,
    fence: &Fence,
    mut session: crate::sidecar::Session,
    mut sent: mpsc::Receiver<Sent>,
    pending: mpsc::Sender<Pending>,
) -> Result<(), UnitError> {
    let u = &st.unit;
    let label = [u.name.as_str()];
    let transform = u.kind == UnitKind::UnitTransform as i32;
    let source: &'static str = if transform { "transform" } else { "consumer" };
    // What it re-emits after a lost delivery may fill a gap the producer left: then it is a new run (see
    // `provenance`). Earlier runs' outputs settle within the delivery timeout.
    let run = st.next_run(fence.delivery_timeout * 2).await;
    // A raised incarnation (a gap, a recreated source) is used only once the control plane keeps it: outputs of
    // a later holder, which starts from the stored one, must not look older than these to downstream units.
    if !st.incarnation_granted().await {
        return Err(UnitError::Fenced);
    }
    let mut origin = Origin::new(&u.unit_id, st.epoch, st.incarnation(), run);
    let mut key_buf = Vec::new();
    while let Some(batch) = sent.recv().await {
        let first = batch.records.first_offset();
        let answer = match &batch.condemned {
            Some(c) => Answer { outcomes: vec![Err((c.kind.error_type().to_string(), c.detail.clone()))], routes: vec![] },
            None => {
                let result = session.next().await.map_err(|e| match e.poison() {
                    Some(kind) => UnitError::Batch(BatchFailure { first, len: batch.records.len(), exact: None, kind, detail: e.to_string() }),
                    None => e.into(),
                })?;
                if result.expired && result.batch_id == batch.batch_id {
                    return Err(UnitError::Expired(batch.batch_id));
                }
                if result.batch_id != batch.batch_id {
                    return Err(UnitError::Protocol(format!("the sidecar answered batch {} where batch {} was expected", result.batch_id, batch.batch_id)));
                }
                ctx.metrics.batch_latency.with_label_values(&label).observe(batch.sent_at.elapsed().as_secs_f64());
                outcomes(result, batch.records.len()).map_err(UnitError::Protocol)?
            }
        };
        // Fencing: nothing is produced for a unit this worker may no longer hold by the time it is delivered.
        if !fence.may_produce() || st.stop.is_cancelled() {
            return Err(UnitError::Fenced);
        }
        let acks = BatchAcks::of_unit(&st.delivery);
        let (mut outputs, mut dead_letters) = (0u64, 0u64);
        let (mut filtered, mut failed) = (0u64, 0u64);
        // More streams named than the unit has routes: some are not its (and resolving them would cost the answer's
        // size times the routes' on this thread).
        if answer.routes.len() > u.routes.len() {
            return Err(UnitError::Protocol(format!("the sidecar routed outputs to {} streams; this transform has {} routes", answer.routes.len(), u.routes.len())));
        }
        let targets = Targets::new(u, &answer.routes);
        // A route the plan does not give this unit means the sidecar's app and the applied one differ (a deploy
        // under way): not the records' fault, so the batch is retried, with the reason as the unit's error, until
        // they agree. Checked before anything of the batch is produced.
        if transform {
            if let Some(why) = answer.outcomes.iter().flatten().flatten().find_map(|v| targets.get(v.route).err()) {
                return Err(UnitError::Protocol(why));
            }
        }
        for (rec, res) in batch.records.iter().zip(answer.outcomes) {
            let source_key = (!rec.key.is_empty()).then_some(rec.key);
            // An output the broker would refuse sends its input to the dead letter queue instead.
            let res = match res {
                Ok(values) if transform && values.iter().any(|v| v.value.len() + RECORD_OVERHEAD > ctx.max_message_bytes) => {
                    let biggest = values.iter().map(|v| v.value.len()).max().unwrap_or(0);
                    let limit = ctx.max_message_bytes;
                    Err((Poison::OutputTooLarge.error_type().to_string(), format!("an output of {biggest} bytes is over the broker's limit of {limit} bytes")))
                }
                other => other,
            };
            match res {
                Ok(values) if transform => {
                    if values.is_empty() {
                        filtered += 1;
                    }
                    for (index, v) in values.iter().enumerate() {
                        let (topic, key_fields) = targets.get(v.route).map_err(UnitError::Protocol)?;
                        let key = output_key(&v.value, key_fields, source_key, &mut key_buf);
                        let origin = origin.at(rec.offset, index as u32);
                        send(st, fence, &acks, origin, topic, key, &v.value, rec.offset).await?;
                        outputs += 1;
                    }
                }
                Ok(_) => {}
                Err((error_type, message)) => {
                    failed += 1;
                    let letter = DeadLetter {
                        original_record: OriginalRecord::of(rec.value),
                        error_message: &message,
                        error_type: &error_type,
                        failed_at: chrono::Utc::now().to_rfc3339(),
                        source,
                        function: &u.name,
                        topic: &u.source_topic,
                        partition: u.partition,
                        offset: rec.offset,
                        original_record_truncated: None,
                        original_bytes: None,
                    };
                    let bytes = letter.to_bytes(rec.value, ctx.max_message_bytes.saturating_sub(RECORD_OVERHEAD));
                    send(st, fence, &acks, origin.at(rec.offset, 0), &u.dead_letter_topic, source_key, &bytes, rec.offset).await?;
                    dead_letters += 1;
                }
            }
        }
        ctx.metrics.records_filtered.with_label_values(&label).inc_by(filtered);
        ctx.metrics.records_failed.with_label_values(&label).inc_by(failed);
        let next_offset = batch.records.last_offset() + 1;
        let p = Pending { first, len: batch.records.len(), next_offset, acks, outputs, dead_letters, marks: batch.marks, _permits: batch.permits };
        if pending.send(p).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn acknowledge(ctx: &WorkerCtx, st: &UnitState, mut pending: mpsc::Receiver<Pending>) -> Result<(), UnitError> {
    let label = [st.unit.name.as_str()];
    while let Some(p) = pending.recv().await {
        match p.acks.wait().await {
            Ok(()) => {}
            // The broker's limit is below ours: find the record by splitting the batch.
            Err(e) if too_large(&e) => {
                let detail = format!("the broker refused an output: {e}");
                return Err(UnitError::Batch(BatchFailure { first: p.first, len: p.len, exact: None, kind: Poison::OutputTooLarge, detail }));
            }
            Err(e) => return Err(UnitError::Produce(e.to_string())),
        }
        ctx.metrics.records_out.with_label_values(&label).inc_by(p.outputs);
        ctx.metrics.dead_letters.with_label_values(&label).inc_by(p.dead_letters);
        st.safe_offset.store(p.next_offset, Ordering::SeqCst);
        st.commit_marks(p.next_offset, &p.marks);
    }
    Ok(())
}

/// Where a transform's outputs go: its destination, or for a multi-transform the route each output names (the
/// batch's route names resolved once against the unit's routes).
struct Targets<'a> {
    unit: &'a WorkUnit,
    named: Vec<(&'a str, Option<&'a Route>)>,
}

impl<'a> Targets<'a> {
    fn new(unit: &'a WorkUnit, routes: &'a [String]) -> Self {
        let named = routes.iter().map(|name| (name.as_str(), unit.routes.iter().find(|r| r.stream == *name))).collect();
        Self { unit, named }
    }

    /// The topic and key fields of an output routed to `route`, or why it cannot go anywhere.
    fn get(&self, route: Option<u32>) -> Result<(&'a str, &'a [String]), String> {
        let u = self.unit;
        match (route, u.routes.is_empty()) {
            (None, true) => Ok((&u.destination_topic, &u.key_fields)),
            (None, false) => Err("a multi-transform's output must name its stream: return `stream.routed(record)`".into()),
            (Some(_), true) => Err("the function routed an output to a stream, but this transform has one destination".into()),
            (Some(i), false) => match self.named.get(i as usize) {
                Some((_, Some(r))) => Ok((&r.topic, &r.key_fields)),
                Some((name, None)) => {
                    let known: Vec<&str> = u.routes.iter().map(|r| r.stream.as_str()).collect();
                    Err(format!("routed to stream `{name}`, which is not among this multi-transform's routes ({}): declare it in the app and apply it again", known.join(", ")))
                }
                None => Err(format!("route {i} is not in the batch's answer")),
            },
        }
    }
}
