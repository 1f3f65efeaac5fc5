//! Reading a unit's source partition: the consumer (bounded prefetch, lag from fetch responses), and finding the
//! first record to process. A fetch that starts inside a record batch returns that batch on Apache Kafka, but
//! some brokers (Tansu 0.6.0) answer with the next batch, silently skipping records; and a broker whose retention
//! deleted the records at the start offset moves on as well. So a first record past the start offset, or none
//! while the partition's high watermark is past it, makes the reader step back until it finds a record at or
//! before the start (dropping those before it). What cannot be found was deleted, and is counted as lost.
//!
//! A partition that ends before the start offset, or whose offsets go back while a unit reads it, was deleted and
//! created again (or truncated) outside Millrace: the unit says so (`UnitError::SourceRecreated`), counts what it
//! had not read of the old one as lost, and reads the new one from its beginning, rather than skip the new one's
//! records up to the old offset. A topic recreated while no unit ran and already past the old offset when one
//! starts cannot be told from the old one (offsets alone do not say), and is read on from the committed offset.
//!
//! Replayed dead letters (`millrace dlq replay`) go back to their source stream with a `millrace-replay-for`
//! header naming the one function (a transform's or consumer's name, or `table:<table>`) that failed them: every
//! other unit reading the stream skips such a record, counts it, and commits past it, so only the failed function
//! processes it again.
//!
//! Records a unit has already read (re-emits of an upstream unit after a fault, known by their provenance header)
//! are skipped and committed past the same way, and counted (see `provenance`).

use super::pipeline::UnitError;
use super::produce::ORIGIN_HEADER;
use super::provenance::{self, Marks};
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
    duplicates_dropped: prometheus::IntCounter,
    /// The safe offset the unit starts from.
    start: i64,
    /// What the unit had read before `start` (see `provenance`).
    marks: Marks,
}

impl Source {
    pub fn stream(&self) -> Messages<'_> {
        Messages { inner: self.consumer.stream(), source: self, after: self.start, skipped_to: None, since: Instant::now(), below_since: None, marks: self.marks.clone(), snapshot: None }
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
    let duplicates_dropped = ctx.metrics.duplicates_dropped.with_label_values(&[&u.name]);
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
    // Only this consumer's fetches tell where the partition ends now (a recreated topic ends elsewhere).
    st.high_watermark.store(-1, Ordering::Relaxed);
    seek(&c, st, start)?;
    Ok(Source { consumer: c, replay_name: replay_name.into_bytes(), replays_skipped, duplicates_dropped, start, marks: st.marks_at(start) })
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
    /// When the last record came (or the reader started).
    since: Instant,
    /// Since when the partition has been seen ending before `after` (see `END_CONFIRM`).
    below_since: Option<Instant>,
    /// What the unit has read (see `provenance`), and a copy of it once taken, while it holds.
    marks: Marks,
    snapshot: Option<Arc<Marks>>,
}

pub type Record<'a> = BorrowedMessage<'a>;

/// How often a unit with skipped records to commit past, and nothing else to read, checks its safe offset.
const SKIP_COMMIT_POLL: Duration = Duration::from_millis(50);
/// How often a unit with nothing to read checks that its partition still reaches its position (a topic deleted
/// and created again starts over below it; some brokers then answer fetches with nothing rather than an error).
const END_CHECK: Duration = Duration::from_millis(1000);

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
        // Offsets only grow within a partition: one below the last handed out is a new topic's.
        if m.offset() < messages.after {
            let unread = (st.high_watermark.load(Ordering::Relaxed) - messages.after).max(0);
            let detail = format!("offset {} came after offset {}", m.offset(), messages.after - 1);
            return Err(recreated(st, detail, unread));
        }
        if messages.source.replayed_for_another(&m) {
            messages.skip(st, &m);
        } else if messages.seen_before(&m) {
            messages.drop_duplicate(st, &m);
        } else {
            messages.handed_out(&m);
            return Ok(Some(m));
        }
    }
}

impl Messages<'_> {
    /// Whether the record is a re-emit of one the unit read already; if not, it counts as read now.
    fn seen_before(&mut self, m: &Record<'_>) -> bool {
        let origin = m.headers().and_then(|hs| hs.iter().find(|h| h.key == ORIGIN_HEADER)).and_then(|h| h.value);
        match origin.and_then(provenance::parse) {
            Some((unit, at)) => {
                let seen = self.marks.read(unit, at);
                if !seen {
                    self.snapshot = None;
                }
                seen
            }
            None => {
                self.marks.read_other();
                false
            }
        }
    }

    /// The marks as of the last record handed out (shared while they do not change: one copy a batch at most).
    pub fn marks(&mut self) -> Arc<Marks> {
        self.snapshot.get_or_insert_with(|| Arc::new(self.marks.clone())).clone()
    }

    /// The marks as of the record before the last one handed out (which waits for the next batch).
    pub fn marks_before_last(&self) -> Arc<Marks> {
        Arc::new(self.marks.without_last())
    }

    fn drop_duplicate(&mut self, st: &UnitState, m: &Record<'_>) {
        tracing::debug!(unit = st.unit.unit_id, offset = m.offset(), "skipping a record already read (a re-emit after a fault upstream)");
        self.source.duplicates_dropped.inc();
        self.skipped(st, m);
    }

    fn handed_out(&mut self, m: &Record<'_>) {
        // Whatever was skipped before this record is committed with it.
        self.after = m.offset() + 1;
        self.skipped_to = None;
    }

    fn skip(&mut self, st: &UnitState, m: &Record<'_>) {
        tracing::debug!(unit = st.unit.unit_id, offset = m.offset(), "skipping a record replayed for another function");
        self.source.replays_skipped.inc();
        self.skipped(st, m);
    }

    fn skipped(&mut self, st: &UnitState, m: &Record<'_>) {
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
                if moved {
                    // Skipped records change no marks: those as of the last record handed out hold here too.
                    let marks = self.marks();
                    st.commit_marks(to, &marks);
                }
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
            // Checked here, not only when a wait times out: callers may give up waiting sooner than that.
            if messages.since.elapsed() >= END_CHECK {
                check_end(st, messages)?;
            }
            let poll = messages.skipped_to.map_or(Instant::now() + END_CHECK, |_| Instant::now() + SKIP_COMMIT_POLL);
            let wake = until.map_or(poll, |u| u.min(poll));
            let recv = async { tokio::time::timeout_at(wake, messages.inner.next()).await.ok() };
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
        Some(Ok(m)) => {
            messages.since = Instant::now();
            Ok(Some(m))
        }
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
    // Since when the partition has been seen ending before the start (see `END_CONFIRM`).
    let mut below_since: Option<Instant> = None;
    // Found by offset alone: records before the start are dropped whatever their headers.
    let first = loop {
        let got = next_any(st, messages, Some(Instant::now() + PROBE_WAIT)).await?;
        if st.drain.is_cancelled() {
            return Ok(None);
        }
        let high = st.high_watermark.load(Ordering::Relaxed);
        let ends_before = |high: i64| (0..start).contains(&high);
        if !ends_before(high) {
            below_since = None;
        }
        match got {
            None if ends_before(high) => {
                if below_since.get_or_insert_with(Instant::now).elapsed() >= END_CONFIRM {
                    return Err(ends_early(st, start, high));
                }
                continue;
            }
            // Nothing there yet (or not known yet): keep waiting where we are.
            None if high <= start => continue,
            // Not stepping back, yet a record before the start: the batch holding the start (Apache Kafka), or a
            // log that ends before it (recreated; the consumer went back to its start). Its end tells which.
            Some(r) if r.offset() < start && back == 0 && stays_below(st, start).await => {
                return Err(ends_early(st, start, st.high_watermark.load(Ordering::Relaxed)))
            }
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
    if messages.seen_before(&first) {
        messages.drop_duplicate(st, &first);
        return next_record(st, messages, None).await;
    }
    messages.handed_out(&first);
    Ok(Some(first))
}

/// How long a partition must be seen ending before a unit's offset before the unit takes it as recreated: a newly
/// elected partition leader may briefly answer with a lower high watermark, and reading a whole partition again
/// on one such answer would be far worse than waiting.
const END_CONFIRM: Duration = Duration::from_secs(5);

/// A unit waiting at the end of its partition: does the partition still reach as far as what was read?
fn check_end(st: &UnitState, messages: &mut Messages<'_>) -> Result<(), UnitError> {
    let high = st.high_watermark.load(Ordering::Relaxed);
    if !(0..messages.after).contains(&high) {
        messages.below_since = None;
        return Ok(());
    }
    if messages.below_since.get_or_insert_with(Instant::now).elapsed() < END_CONFIRM {
        return Ok(());
    }
    let detail = format!("it ends at offset {high}, before offset {} already reached", messages.after);
    Err(recreated(st, detail, 0))
}

/// How long a unit waits for the first fetch statistics to say where its partition ends (they come each second).
const HIGH_WAIT: Duration = Duration::from_millis(2500);

/// Whether the partition ends before `start` by this consumer's fetches, and keeps doing so for `END_CONFIRM`
/// (waiting briefly for the first statistics). False as soon as it reaches `start`, or if its end stays unknown.
/// (ListOffsets would answer sooner, but undercounts by up to a batch on some brokers: a false "recreated" would
/// read the whole partition again.)
async fn stays_below(st: &UnitState, start: i64) -> bool {
    let first = Instant::now() + HIGH_WAIT;
    let mut below_since: Option<Instant> = None;
    loop {
        let high = st.high_watermark.load(Ordering::Relaxed);
        if high >= start || (high < 0 && Instant::now() >= first) || st.drain.is_cancelled() {
            return false;
        }
        if high >= 0 && below_since.get_or_insert_with(Instant::now).elapsed() >= END_CONFIRM {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn recreated(st: &UnitState, detail: String, unread: i64) -> UnitError {
    UnitError::SourceRecreated { topic: st.unit.source_topic.clone(), partition: st.unit.partition, detail, unread }
}

/// The partition ends at `high`, before the committed `start`. What the old topic held past `start` is unknown.
fn ends_early(st: &UnitState, start: i64, high: i64) -> UnitError {
    recreated(st, format!("it ends at offset {high}, before the committed offset {start}"), 0)
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
