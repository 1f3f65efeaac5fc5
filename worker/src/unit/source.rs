//! Reading a unit's source partition: the consumer (bounded prefetch, lag from fetch responses), and finding the
//! first record to process. A fetch that starts inside a record batch returns that batch on Apache Kafka, but
//! some brokers (Tansu 0.6.0) answer with the next batch, silently skipping records; and a broker whose retention
//! deleted the records at the start offset moves on as well. So a first record past the start offset, or none
//! while the partition's high watermark is past it, makes the reader step back until it finds a record at or
//! before the start (dropping those before it). What cannot be found was deleted, and is counted as lost.

use super::pipeline::UnitError;
use super::{UnitState, WorkerCtx};
use crate::metrics::Metrics;
use millrace_proto::v1::InputRecord;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the first record may take before the high watermark is consulted.
const PROBE_WAIT: Duration = Duration::from_millis(1200);

/// Lag from librdkafka's statistics: the high watermark of fetch responses (correct on every broker, unlike
/// ListOffsets on some) less the next offset to read, and less the safe (committable) offset.
pub struct LagContext {
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
        self.st.high_watermark.store(p.hi_offset, Ordering::Relaxed);
        let or_start = |o: i64| if o >= 0 { o } else { p.lo_offset.max(0) };
        let read_lag = (p.hi_offset - or_start(self.st.position.load(Ordering::Relaxed))).max(0);
        let commit_lag = (p.hi_offset - or_start(self.st.safe_offset.load(Ordering::Relaxed))).max(0);
        self.st.lag.store(commit_lag, Ordering::Relaxed);
        let labels = [u.name.as_str(), u.source_topic.as_str(), &u.partition.to_string()];
        self.metrics.consumer_lag.with_label_values(&labels).set(read_lag);
        self.metrics.commit_lag.with_label_values(&labels).set(commit_lag);
    }
}

impl ConsumerContext for LagContext {}

pub type Source = StreamConsumer<LagContext>;

pub fn consumer(ctx: &WorkerCtx, st: &Arc<UnitState>, start: i64) -> Result<Source, KafkaError> {
    let c: Source = ClientConfig::new()
        .set("bootstrap.servers", &ctx.kafka_brokers)
        // Partitions are assigned by the control plane; the group id only names the client.
        .set("group.id", format!("millrace-{}", st.unit.name))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An offset the broker no longer has restarts at the log start; `first_record` counts what was lost.
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        // Each unit has its own consumer: bound its prefetch so a worker's memory does not grow with its units.
        .set("queued.max.messages.kbytes", ctx.fetch_buffer_kb.max(1).to_string())
        // With a prefetch that small, librdkafka's default 1 s pause after a full queue stalls a busy partition for
        // a second at a time: fetch again soon after the unit has taken records.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "50")
        .set("statistics.interval.ms", "1000")
        .create_with_context(LagContext { st: st.clone(), metrics: ctx.metrics.clone() })?;
    seek(&c, st, start)?;
    Ok(c)
}

fn seek(c: &Source, st: &UnitState, offset: i64) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let offset = if offset >= 0 { Offset::Offset(offset) } else { Offset::Beginning };
    tpl.add_partition_offset(&st.unit.source_topic, st.unit.partition, offset)?;
    c.assign(&tpl)
}

pub type Messages<'a> = rdkafka::consumer::MessageStream<'a, LagContext>;
pub type Record<'a> = BorrowedMessage<'a>;

/// Bytes a record takes in a batch.
pub fn size(m: &Record<'_>) -> usize {
    m.payload_len() + m.key().map_or(0, <[u8]>::len) + 32
}

/// Where one record of a batch lies in the batch's buffer, and where it came from.
pub struct Slot {
    value: Range<usize>,
    key: Range<usize>,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
}

/// The records of one batch, copied into one buffer (one allocation a batch, not two a record).
#[derive(Default)]
pub struct BatchBuilder {
    buf: BytesMut,
    records: Vec<Slot>,
    pub bytes: usize,
}

impl BatchBuilder {
    pub fn push(&mut self, m: &Record<'_>) {
        let v0 = self.buf.len();
        self.buf.extend_from_slice(m.payload().unwrap_or_default());
        let k0 = self.buf.len();
        self.buf.extend_from_slice(m.key().unwrap_or_default());
        let timestamp_ms = m.timestamp().to_millis().unwrap_or(0);
        self.records.push(Slot { value: v0..k0, key: k0..self.buf.len(), partition: m.partition(), offset: m.offset(), timestamp_ms });
        self.bytes += size(m);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The records to send, and what the unit keeps of them meanwhile (the same buffer, not copies).
    pub fn finish(self) -> (Vec<InputRecord>, Held) {
        let buf = self.buf.freeze();
        let records = self
            .records
            .iter()
            .map(|s| InputRecord {
                value: buf.slice(s.value.clone()),
                key: buf.slice(s.key.clone()),
                partition: s.partition,
                offset: s.offset,
                timestamp_ms: s.timestamp_ms,
            })
            .collect();
        (records, Held { buf, records: self.records })
    }
}

/// A batch's records while the sidecar has them: for dead letters, source keys and offsets.
pub struct Held {
    buf: bytes::Bytes,
    records: Vec<Slot>,
}

/// One record of a held batch.
pub struct HeldRecord<'a> {
    pub value: &'a [u8],
    pub key: &'a [u8],
    pub offset: i64,
}

impl Held {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn first_offset(&self) -> i64 {
        self.records.first().map_or(-1, |s| s.offset)
    }

    pub fn last_offset(&self) -> i64 {
        self.records.last().map_or(-1, |s| s.offset)
    }

    pub fn iter(&self) -> impl Iterator<Item = HeldRecord<'_>> {
        self.records.iter().map(|s| HeldRecord { value: &self.buf[s.value.clone()], key: &self.buf[s.key.clone()], offset: s.offset })
    }
}

/// The next record (waiting at most until `until`), or None at the deadline or once the unit is told to drain.
pub async fn next_record<'a>(st: &UnitState, messages: &mut Messages<'a>, until: Option<Instant>) -> Result<Option<Record<'a>>, UnitError> {
    // A record already fetched is taken without a timer or a wake-up.
    let got = match messages.next().now_or_never() {
        Some(got) => got,
        None => {
            let recv = async {
                match until {
                    None => messages.next().await,
                    Some(t) => tokio::time::timeout_at(t, messages.next()).await.ok().flatten(),
                }
            };
            tokio::select! {
                _ = st.drain.cancelled() => return Ok(None),
                got = recv => got,
            }
        }
    };
    match got {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(e.into()),
    }
}

/// The first record at or after `start` (see the module's comment), or None once the unit is told to drain.
pub async fn first_record<'a>(
    ctx: &WorkerCtx,
    st: &UnitState,
    consumer: &'a Source,
    messages: &mut Messages<'a>,
    start: i64,
) -> Result<Option<Record<'a>>, UnitError> {
    if start <= 0 {
        return next_record(st, messages, None).await;
    }
    let mut back = 0i64;
    loop {
        let got = next_record(st, messages, Some(Instant::now() + PROBE_WAIT)).await?;
        if st.drain.is_cancelled() {
            return Ok(None);
        }
        let high = st.high_watermark.load(Ordering::Relaxed);
        match got {
            // Nothing there yet (or not known yet): keep waiting where we are.
            None if high <= start => continue,
            Some(r) if r.offset() <= start => return skip_to(st, messages, r, start).await,
            Some(r) if back >= start => {
                let lost = r.offset() - start;
                tracing::warn!(unit = st.unit.unit_id, from = start, to = r.offset(), lost, "records were deleted before they were read (retention): going on after them");
                ctx.metrics.records_lost_to_retention.with_label_values(&[&st.unit.name]).inc_by(lost as u64);
                return Ok(Some(r));
            }
            _ => {
                back = (back * 2).clamp(1, start);
                tracing::debug!(unit = st.unit.unit_id, start, from = start - back, "the broker skipped past the start offset: stepping back");
                seek(consumer, st, start - back)?;
            }
        }
    }
}

/// Drops records before `start`, returning the one at it (or the first after it, where offsets have gaps).
async fn skip_to<'a>(st: &UnitState, messages: &mut Messages<'a>, mut r: Record<'a>, start: i64) -> Result<Option<Record<'a>>, UnitError> {
    while r.offset() < start {
        match next_record(st, messages, None).await? {
            Some(next) => r = next,
            None => return Ok(None),
        }
    }
    Ok(Some(r))
}
