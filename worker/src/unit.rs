//! One unit of work: a source partition read in batches, each batch run through the sidecar, every output
//! (and dead letter) produced, and the unit's safe offset advanced only when all of a batch's records are
//! acknowledged by the broker. Three stages run concurrently with a bounded number of batches between the
//! first and the last; any error tears the pipeline down and it resumes from the safe offset.

use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::output::{output_key, DeadLetter, OriginalRecord};
use crate::sidecar::{SidecarError, Sidecars};
use millrace_proto::v1::{record_result, InputRecord, RecordBatch, UnitKind, WorkUnit};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What every unit of a worker shares.
pub struct WorkerCtx {
    pub kafka_brokers: String,
    pub sidecars: Sidecars,
    pub producer: FutureProducer,
    pub metrics: Metrics,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub max_in_flight: usize,
}

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
    pub lag: AtomicI64,
    pub stop: CancellationToken,
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
            stop: CancellationToken::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UnitError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error("the sidecar answered batch {got} where batch {want} was expected, or with the wrong record count")]
    Protocol { want: u64, got: u64 },
    #[error("the lease is lost or the unit was revoked: stopping before producing")]
    Fenced,
    #[error("a produce was not acknowledged: {0}")]
    Produce(String),
}

/// Runs the unit until it is stopped, resuming from its safe offset after every error.
pub async fn run(ctx: Arc<WorkerCtx>, st: Arc<UnitState>, lease: Arc<Lease>) {
    let function = st.unit.name.clone();
    ctx.metrics.units.with_label_values(&[&function]).inc();
    let mut backoff = Duration::from_millis(100);
    loop {
        let start = st.safe_offset.load(Ordering::SeqCst);
        let result = tokio::select! {
            _ = st.stop.cancelled() => break,
            r = pipeline(&ctx, &st, &lease, start) => r,
        };
        let Err(e) = result else { break };
        if st.safe_offset.load(Ordering::SeqCst) != start {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(unit = st.unit.unit_id, epoch = st.epoch, error = %e, retry_in = ?backoff, "unit pipeline failed; resuming from the last safe offset");
        ctx.metrics.unit_restarts.with_label_values(&[&function]).inc();
        tokio::select! {
            _ = st.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    ctx.metrics.units.with_label_values(&[&function]).dec();
    tracing::info!(unit = st.unit.unit_id, epoch = st.epoch, "unit stopped");
}

/// Lag from librdkafka's statistics: the high watermark of fetch responses (correct on every broker, unlike
/// ListOffsets on some) less the next offset to read.
struct LagContext {
    st: Arc<UnitState>,
    metrics: Metrics,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let u = &self.st.unit;
        let Some(p) = stats.topics.get(&u.source_topic).and_then(|t| t.partitions.get(&u.partition)) else { return };
        if p.hi_offset < 0 {
            return;
        }
        let pos = match self.st.position.load(Ordering::Relaxed) {
            p if p >= 0 => p,
            _ => p.lo_offset.max(0),
        };
        let lag = (p.hi_offset - pos).max(0);
        self.st.lag.store(lag, Ordering::Relaxed);
        self.metrics
            .consumer_lag
            .with_label_values(&[&u.name, &u.source_topic, &u.partition.to_string()])
            .set(lag);
    }
}

impl ConsumerContext for LagContext {}

fn consumer(ctx: &WorkerCtx, st: &Arc<UnitState>, start: i64) -> Result<StreamConsumer<LagContext>, KafkaError> {
    let c: StreamConsumer<LagContext> = ClientConfig::new()
        .set("bootstrap.servers", &ctx.kafka_brokers)
        // Partitions are assigned by the control plane; the group id only names the client.
        .set("group.id", format!("millrace-{}", st.unit.name))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("statistics.interval.ms", "1000")
        .create_with_context(LagContext { st: st.clone(), metrics: ctx.metrics.clone() })?;
    let mut tpl = TopicPartitionList::new();
    let offset = if start >= 0 { Offset::Offset(start) } else { Offset::Beginning };
    tpl.add_partition_offset(&st.unit.source_topic, st.unit.partition, offset)?;
    c.assign(&tpl)?;
    Ok(c)
}

/// A batch sent to the sidecar, waiting for its result.
struct Sent {
    batch_id: u64,
    records: Vec<InputRecord>,
    sent_at: Instant,
    permit: OwnedSemaphorePermit,
}

/// A batch whose outputs are with the producer, waiting for acknowledgements.
struct Pending {
    next_offset: i64,
    outputs: Vec<DeliveryFuture>,
    dead_letters: Vec<DeliveryFuture>,
    _permit: OwnedSemaphorePermit,
}

async fn pipeline(ctx: &WorkerCtx, st: &Arc<UnitState>, lease: &Lease, start: i64) -> Result<(), UnitError> {
    let function = st.unit.function.clone().unwrap_or_default();
    let consumer = consumer(ctx, st, start)?;
    let session = ctx.sidecars.open(&function.runtime, &function.name, ctx.max_in_flight).await?;
    let permits = Arc::new(Semaphore::new(ctx.max_in_flight));
    let (sent_tx, sent_rx) = mpsc::channel::<Sent>(ctx.max_in_flight);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(ctx.max_in_flight);
    let sender = session.sender();
    tokio::try_join!(
        read(ctx, st, &consumer, sender, permits, sent_tx),
        respond(ctx, st, lease, session, sent_rx, pending_tx),
        acknowledge(ctx, st, pending_rx),
    )?;
    Ok(())
}

async fn read(
    ctx: &WorkerCtx,
    st: &UnitState,
    consumer: &StreamConsumer<LagContext>,
    sidecar: mpsc::Sender<millrace_proto::v1::ProcessRequest>,
    permits: Arc<Semaphore>,
    sent: mpsc::Sender<Sent>,
) -> Result<(), UnitError> {
    let input = |m: &rdkafka::message::BorrowedMessage<'_>| InputRecord {
        value: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        key: bytes::Bytes::copy_from_slice(m.key().unwrap_or_default()),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    };
    let mut batch_id = 0u64;
    loop {
        let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
        let first = consumer.recv().await?;
        let mut records = Vec::with_capacity(ctx.batch_size);
        records.push(input(&first));
        drop(first);
        let deadline = Instant::now() + ctx.batch_linger;
        while records.len() < ctx.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(m) => records.push(input(&m?)),
            }
        }
        let last = records.last().map(|r| r.offset).unwrap_or(-1);
        st.position.store(last + 1, Ordering::Relaxed);
        ctx.metrics.records_in.with_label_values(&[&st.unit.name]).inc_by(records.len() as u64);
        batch_id += 1;
        let msg = millrace_proto::v1::ProcessRequest {
            message: Some(millrace_proto::v1::process_request::Message::Batch(RecordBatch { batch_id, records: records.clone() })),
        };
        if sidecar.send(msg).await.is_err() {
            return Err(SidecarError::Failed { name: "sidecar".into(), detail: "stream closed".into() }.into());
        }
        if sent.send(Sent { batch_id, records, sent_at: Instant::now(), permit }).await.is_err() {
            return Ok(());
        }
    }
}

async fn respond(
    ctx: &WorkerCtx,
    st: &UnitState,
    lease: &Lease,
    mut session: crate::sidecar::Session,
    mut sent: mpsc::Receiver<Sent>,
    pending: mpsc::Sender<Pending>,
) -> Result<(), UnitError> {
    let u = &st.unit;
    let label = [u.name.as_str()];
    while let Some(batch) = sent.recv().await {
        let result = session.next().await?;
        if result.batch_id != batch.batch_id || result.results.len() != batch.records.len() {
            return Err(UnitError::Protocol { want: batch.batch_id, got: result.batch_id });
        }
        ctx.metrics.batch_latency.with_label_values(&label).observe(batch.sent_at.elapsed().as_secs_f64());
        // Fencing: nothing is produced for a unit this worker may no longer hold.
        if !lease.valid() || st.stop.is_cancelled() {
            return Err(UnitError::Fenced);
        }
        let mut outputs = Vec::new();
        let mut dead_letters = Vec::new();
        let (mut filtered, mut failed) = (0u64, 0u64);
        for (rec, res) in batch.records.iter().zip(result.results) {
            let source_key = (!rec.key.is_empty()).then_some(&rec.key[..]);
            match res.result {
                Some(record_result::Result::Ok(out)) => {
                    if out.values.is_empty() {
                        filtered += 1;
                    }
                    if u.kind == UnitKind::UnitTransform as i32 {
                        for v in out.values {
                            let key = output_key(&v, &u.key_fields, source_key);
                            outputs.push(produce(ctx, st, &u.destination_topic, key.as_deref(), &v).await?);
                        }
                    }
                }
                other => {
                    failed += 1;
                    let (error_type, message) = match other {
                        Some(record_result::Result::Error(e)) => (e.error_type, e.message),
                        _ => ("ProtocolError".to_string(), "the sidecar returned no result for the record".to_string()),
                    };
                    if u.dead_letter_topic.is_empty() {
                        tracing::warn!(unit = u.unit_id, offset = rec.offset, error_type, message, "record failed and no dead letter queue is configured");
                        continue;
                    }
                    let letter = DeadLetter {
                        original_record: OriginalRecord::of(&rec.value),
                        error_message: &message,
                        error_type: &error_type,
                        failed_at: chrono::Utc::now().to_rfc3339(),
                        source: if u.kind == UnitKind::UnitTransform as i32 { "transform" } else { "consumer" },
                        function: &u.name,
                        topic: &u.source_topic,
                        partition: u.partition,
                        offset: rec.offset,
                    };
                    let bytes = serde_json::to_vec(&letter).expect("dead letters always serialise");
                    dead_letters.push(produce(ctx, st, &u.dead_letter_topic, source_key, &bytes).await?);
                }
            }
        }
        ctx.metrics.records_filtered.with_label_values(&label).inc_by(filtered);
        ctx.metrics.records_failed.with_label_values(&label).inc_by(failed);
        let next_offset = batch.records.last().map(|r| r.offset + 1).unwrap_or(-1);
        let p = Pending { next_offset, outputs, dead_letters, _permit: batch.permit };
        if pending.send(p).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Hands one record to the producer, waiting while its queue is full.
async fn produce(ctx: &WorkerCtx, st: &UnitState, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<DeliveryFuture, UnitError> {
    loop {
        // Provenance: which unit, at which epoch, produced the record.
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: "millrace-unit", value: Some(st.unit.unit_id.as_str()) })
            .insert(Header { key: "millrace-epoch", value: Some(st.epoch.to_string().as_str()) });
        let mut rec = FutureRecord::to(topic).payload(value).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        match ctx.producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                if st.stop.is_cancelled() {
                    return Err(UnitError::Fenced);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(UnitError::Produce(e.to_string())),
        }
    }
}

async fn acknowledge(ctx: &WorkerCtx, st: &UnitState, mut pending: mpsc::Receiver<Pending>) -> Result<(), UnitError> {
    let label = [st.unit.name.as_str()];
    while let Some(p) = pending.recv().await {
        let (outs, dls) = (p.outputs.len() as u64, p.dead_letters.len() as u64);
        for f in p.outputs.into_iter().chain(p.dead_letters) {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(UnitError::Produce(e.to_string())),
                Err(_) => return Err(UnitError::Produce("the producer dropped the record".into())),
            }
        }
        ctx.metrics.records_out.with_label_values(&label).inc_by(outs);
        ctx.metrics.dead_letters.with_label_values(&label).inc_by(dls);
        st.safe_offset.store(p.next_offset, Ordering::SeqCst);
    }
    Ok(())
}
