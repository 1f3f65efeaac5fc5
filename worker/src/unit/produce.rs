//! Producing a unit's outputs and dead letters. Acknowledgements are counted per batch, not awaited per record: the
//! producer's delivery callback decrements the batch's count, so a record costs one reference count, not a channel.

use super::pipeline::UnitError;
use super::recovery::{BatchFailure, Poison};
use super::{Fence, UnitState};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub type Producer = ThreadedProducer<AckContext>;

/// The header every output and dead letter carries: `<unit id>@<epoch>` of the unit that produced it, followed for
/// a transform's outputs and dead letters by their position (see `provenance::Origin`).
pub const ORIGIN_HEADER: &str = "millrace-origin";

/// The header without a position, for a table sync's dead letters (retried one by one, out of order: a reader
/// must never drop one as already read).
pub fn origin(st: &UnitState) -> String {
    format!("{}@{}", st.unit.unit_id, st.epoch)
}

/// A unit's outputs still in the producer, whatever run of its pipeline queued them, and the deliveries that
/// failed: a failed one may leave a gap (a later record delivered), which decides whether the next run's
/// re-emits may be dropped downstream (see `provenance`).
#[derive(Default)]
pub struct Delivery {
    outstanding: AtomicUsize,
    failures: AtomicU64,
}

impl Delivery {
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Waits until every output handed over is delivered or failed, at most `limit`; whether they all were.
    pub async fn settled(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.outstanding.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// The acknowledgements one batch still waits for, and the first failure among them.
pub struct BatchAcks {
    /// Records not yet acknowledged, plus one while the batch is still being produced.
    pending: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    done: Notify,
    unit: Option<Arc<Delivery>>,
}

impl BatchAcks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { pending: AtomicUsize::new(1), failed: Mutex::new(None), done: Notify::new(), unit: None })
    }

    /// A batch whose deliveries also count in its unit's `Delivery`.
    pub fn of_unit(unit: &Arc<Delivery>) -> Arc<Self> {
        Arc::new(Self { pending: AtomicUsize::new(1), failed: Mutex::new(None), done: Notify::new(), unit: Some(unit.clone()) })
    }

    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Waits until every record of the batch is acknowledged; the first failure, if any.
    pub async fn wait(&self) -> Result<(), KafkaError> {
        self.release();
        while self.pending.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
        match self.failed.lock().expect("acks lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<BatchAcks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<BatchAcks>) {
        if let Err((e, _)) = result {
            acks.failed.lock().expect("acks lock").get_or_insert_with(|| e.clone());
        }
        if let Some(u) = &acks.unit {
            if result.is_err() {
                u.failures.fetch_add(1, Ordering::SeqCst);
            }
            u.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
        acks.release();
    }
}

/// Producer settings for the units of one lease (see `Fence`).
pub fn producer(brokers: &str, delivery_timeout: Duration, buffer_kb: usize, max_message_bytes: usize, linger_ms: u64) -> Result<Producer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        // Retries never reorder or duplicate records within a partition.
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", delivery_timeout.as_millis().max(10).to_string())
        .set("queue.buffering.max.kbytes", buffer_kb.max(1024).to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("message.max.bytes", max_message_bytes.to_string())
        // A unit must never recreate a topic the plan deleted.
        .set("allow.auto.create.topics", "false")
        .create_with_context(AckContext)
}

pub fn queue_full(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
}

/// Hands one record to the producer, counted in `acks`; with `origin`, it carries the provenance header (which
/// unit, at which epoch, produced it: one header, as each costs an allocation).
pub fn hand_over(
    producer: &Producer,
    acks: &Arc<BatchAcks>,
    origin: Option<&str>,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<(), KafkaError> {
    let mut rec = BaseRecord::with_opaque_to(topic, acks.clone()).payload(value);
    if let Some(origin) = origin {
        rec = rec.headers(OwnedHeaders::new_with_capacity(1).insert(Header { key: ORIGIN_HEADER, value: Some(origin) }));
    }
    if let Some(k) = key {
        rec = rec.key(k);
    }
    acks.pending.fetch_add(1, Ordering::AcqRel);
    if let Some(u) = &acks.unit {
        u.outstanding.fetch_add(1, Ordering::SeqCst);
    }
    producer.send(rec).map_err(|(e, _)| {
        acks.pending.fetch_sub(1, Ordering::AcqRel);
        if let Some(u) = &acks.unit {
            u.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
        e
    })
}

pub fn too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// Hands one record to the producer, counted in `acks`, waiting while its queue is full (and the fence holds). A
/// record the producer refuses as too large is known exactly: its input goes to the dead letter queue.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    st: &UnitState,
    fence: &Fence,
    acks: &Arc<BatchAcks>,
    origin: &str,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    offset: i64,
) -> Result<(), UnitError> {
    loop {
        match hand_over(&fence.producer, acks, Some(origin), topic, key, value) {
            Ok(()) => return Ok(()),
            Err(e) if queue_full(&e) => {
                if !fence.may_produce() || st.stop.is_cancelled() {
                    return Err(UnitError::Fenced);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) if too_large(&e) => {
                let detail = format!("the producer refused a record of {} bytes: {e}", value.len());
                return Err(UnitError::Batch(BatchFailure { first: offset, len: 1, exact: Some(offset), kind: Poison::OutputTooLarge, detail }));
            }
            Err(e) => return Err(UnitError::Produce(e.to_string())),
        }
    }
}
