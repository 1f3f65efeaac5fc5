//! Reading a unit's source partition: the consumer (bounded prefetch, lag from fetch responses), and finding the
//! first record to process. A fetch that starts inside a record batch returns that batch on Apache Kafka, but
//! some brokers (Tansu 0.6.0) answer with the next batch, silently skipping records; and a broker whose retention
//! deleted the records at the start offset moves on as well. So a first record past the start offset, or none
//! while the partition's high watermark is past it, makes the reader step back until it finds a record at or
//! before the start (dropping those before it). What cannot be found was deleted, and is counted as lost.
//!
//! Replayed dead letters (`millrace dlq replay`) go back to their source stream with a `millrace-replay-for`
//! header naming the one function (a transform's or consumer's name, or `table:<table>`) that failed them: every
//! other unit reading the stream skips such a record, counts it, and commits past it, so only the failed function
//! processes it again.

use super::pipeline::UnitError;
use super::{UnitState, WorkerCtx};
use crate::metrics::Metrics;
use millrace_proto::v1::{InputRecord, UnitKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use rdkafka::message::{BorrowedMessage, Headers, Message};
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

/// The header of a replayed record: the function it is replayed for (see the module's comment).
pub const REPLAY_HEADER: &str = "millrace-replay-for";

/// A unit's consumer, and what it needs to skip records replayed for other functions.
pub struct Source {
    consumer: StreamConsumer<LagContext>,
    /// What this unit answers to in a replay header: its name, or `table:<table>` for a table sync.
    replay_name: Vec<u8>,
    replays_skipped: prometheus::IntCounter,
    /// The safe offset the unit starts from.
    start: i64,
}

impl Source {
    pub fn stream(&self) -> Messages<'_> {
        Messages { inner: self.consumer.stream(), source: self, after: self.start, skipped_to: None }
    }

    /// Whether the record was replayed for another function than this unit's.
    fn replayed_for_another(&self, m: &Record<'_>) -> bool {
        // Most records carry no header, or only the origin one: a few comparisons, no allocation.
        let Some(headers) = m.headers() else { return false };
        headers.iter().any(|h| h.key == REPLAY_HEADER && h.value != Some(self.replay_name.as_slice()))
    }
}

pub fn consumer(ctx: &WorkerCtx, st: &Arc<UnitState>, start: i64) -> Result<Source, KafkaError> {
    let u = &st.unit;
    let replay_name = match (&u.table, u.kind == UnitKind::UnitTableSync as i32) {
        (Some(t), true) => format!("table:{}", t.table),
        _ => u.name.clone(),
    };
    let replays_skipped = ctx.metrics.replays_skipped.with_label_values(&[&u.name]);
    let c = ClientConfig::new()
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
    Ok(Source { consumer: c, replay_name: replay_name.into_bytes(), replays_skipped, start })
}

fn seek(c: &StreamConsumer<LagContext>, st: &UnitState, offset: i64) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let offset = if offset >= 0 { Offset::Offset(offset) } else { Offset::Beginning };
    tpl.add_partition_offset(&st.unit.source_topic, st.unit.partition, offset)?;
    c.assign(&tpl)
}

/// The records of a unit's partition, less those replayed for other functions.
pub struct Messages<'a> {
    inner: rdkafka::consumer::MessageStream<'a, LagContext>,
    source: &'a Source,
    /// The offset after the last record handed out: the safe offset once the unit has handled it.
    after: i64,
    /// The offset after the last record skipped since then, while the unit has not committed past it.
    skipped_to: Option<i64>,
}

pub type Record<'a> = BorrowedMessage<'a>;

/// How often a unit with skipped records to commit past, and nothing else to read, checks its safe offset.
const SKIP_COMMIT_POLL: Duration = Duration::from_millis(50);

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

/// The next record to process (waiting at most until `until`), or None at the deadline or once the unit is told to
/// drain. Records replayed for another function are skipped (see the module's comment).
pub async fn next_record<'a>(st: &UnitState, messages: &mut Messages<'a>, until: Option<Instant>) -> Result<Option<Record<'a>>, UnitError> {
    loop {
        let Some(m) = next_any(st, messages, until).await? else { return Ok(None) };
        if !messages.source.replayed_for_another(&m) {
            messages.handed_out(&m);
            return Ok(Some(m));
        }
        messages.skip(st, &m);
    }
}

impl Messages<'_> {
    fn handed_out(&mut self, m: &Record<'_>) {
        // Whatever was skipped before this record is committed with it.
        self.after = m.offset() + 1;
        self.skipped_to = None;
    }

    fn skip(&mut self, st: &UnitState, m: &Record<'_>) {
        tracing::debug!(unit = st.unit.unit_id, offset = m.offset(), "skipping a record replayed for another function");
        self.source.replays_skipped.inc();
        self.skipped_to = Some(m.offset() + 1);
        st.position.fetch_max(m.offset() + 1, Ordering::Relaxed);
        self.commit_skipped(st);
    }

    /// Moves the safe offset past the records skipped since the last one handed out, once that one is handled
    /// (the safe offset is then exactly `after`): skipped records at the end of a partition are committed too.
    fn commit_skipped(&mut self, st: &UnitState) {
        if let Some(to) = self.skipped_to {
            let moved = st.safe_offset.compare_exchange(self.after, to, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if moved || st.safe_offset.load(Ordering::SeqCst) >= to {
                self.after = to;
                self.skipped_to = None;
            }
        }
    }
}

/// The next record of the partition, whatever its headers.
async fn next_any<'a>(st: &UnitState, messages: &mut Messages<'a>, until: Option<Instant>) -> Result<Option<Record<'a>>, UnitError> {
    // A record already fetched is taken without a timer or a wake-up.
    let got = match messages.inner.next().now_or_never() {
        Some(got) => got,
        None => loop {
            // Skipped records waiting for the unit's last batch: look again now and then while waiting.
            messages.commit_skipped(st);
            let poll = messages.skipped_to.map(|_| Instant::now() + SKIP_COMMIT_POLL);
            let wake = match (until, poll) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let recv = async {
                match wake {
                    None => Some(messages.inner.next().await),
                    Some(t) => tokio::time::timeout_at(t, messages.inner.next()).await.ok(),
                }
            };
            tokio::select! {
                _ = st.drain.cancelled() => return Ok(None),
                got = recv => match got {
                    Some(got) => break got,
                    None if until.is_some_and(|t| Instant::now() >= t) => return Ok(None),
                    None => continue,
                },
            }
        },
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
    // Found by offset alone: records before the start are dropped whatever their headers.
    let first = loop {
        let got = next_any(st, messages, Some(Instant::now() + PROBE_WAIT)).await?;
        if st.drain.is_cancelled() {
            return Ok(None);
        }
        let high = st.high_watermark.load(Ordering::Relaxed);
        match got {
            // Nothing there yet (or not known yet): keep waiting where we are.
            None if high <= start => continue,
            Some(r) if r.offset() <= start => match skip_to(st, messages, r, start).await? {
                Some(r) => break r,
                None => return Ok(None),
            },
            Some(r) if back >= start => {
                let lost = r.offset() - start;
                tracing::warn!(unit = st.unit.unit_id, from = start, to = r.offset(), lost, "records were deleted before they were read (retention): going on after them");
                ctx.metrics.records_lost_to_retention.with_label_values(&[&st.unit.name]).inc_by(lost as u64);
                break r;
            }
            _ => {
                back = (back * 2).clamp(1, start);
                tracing::debug!(unit = st.unit.unit_id, start, from = start - back, "the broker skipped past the start offset: stepping back");
                seek(&consumer.consumer, st, start - back)?;
            }
        }
    };
    if consumer.replayed_for_another(&first) {
        messages.skip(st, &first);
        return next_record(st, messages, None).await;
    }
    messages.handed_out(&first);
    Ok(Some(first))
}

/// Drops records before `start`, returning the one at it (or the first after it, where offsets have gaps).
async fn skip_to<'a>(st: &UnitState, messages: &mut Messages<'a>, mut r: Record<'a>, start: i64) -> Result<Option<Record<'a>>, UnitError> {
    while r.offset() < start {
        match next_any(st, messages, None).await? {
            Some(next) => r = next,
            None => return Ok(None),
        }
    }
    Ok(Some(r))
}
