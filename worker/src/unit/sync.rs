//! A table sync unit: one partition of a stream inserted into its ClickHouse table in batches bounded by rows,
//! bytes and time (and the worker's in-flight byte budget). A batch's offset is committed only once ClickHouse
//! confirmed its insert and its dead letters are delivered. ClickHouse not answering is retried (with backoff,
//! never skipped); rows it refuses are found by splitting the batch (and so is an insert over its memory limit),
//! and go to the dead letter queue with `source: "table"`, so one bad row never stalls the partition. Dead letters
//! the broker does not take are retried without inserting the batch again (`letters`).

mod letters;

use super::pipeline::UnitError;
use super::provenance::Marks;
use super::source::{consumer, first_record, next_record, BatchBuilder, Held, Messages, Record};
use super::{Fence, UnitState, WorkerCtx, MAX_BACKOFF, MIN_BACKOFF};
use crate::clickhouse::InsertError;
use crate::rows::RowWriter;
use bytes::Bytes;
use letters::Owed;
use millrace_proto::v1::TableTarget;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// How long a partition must pause for a substantial batch to be inserted before its delay is up.
const IDLE: Duration = Duration::from_millis(50);

/// The most record bytes one batch holds, whatever its table declares (the control plane refuses more).
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// Record bytes one batch may hold: the table's bound, at most `MAX_BATCH_BYTES` and half the worker's in-flight
/// budget (a unit holds two batches: one inserting while the next is read).
fn batch_bytes(max_bytes: u64, budget_kib: u32) -> u64 {
    max_bytes.min(MAX_BATCH_BYTES).min(u64::from(budget_kib) * 512).max(1)
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The INSERT statement for a table's columns (names were validated by the control plane, and are quoted).
pub fn statement(t: &TableTarget, writer: &RowWriter) -> String {
    let columns: Vec<String> = writer.column_names().map(quote).collect();
    format!("INSERT INTO {}.{} ({}) FORMAT JSONEachRow", quote(&t.database), quote(&t.table), columns.join(", "))
}

/// A batch read and turned into rows, waiting for its insert.
struct Prepared {
    held: Held,
    body: Bytes,
    spans: Vec<(usize, Range<usize>)>,
    refused: Vec<(usize, String, &'static str)>,
    /// What the unit had read once this batch was read (see `provenance`).
    marks: Arc<Marks>,
    /// The batch's share of the worker's in-flight byte budget, given back once the batch is done.
    _memory: OwnedSemaphorePermit,
}

/// A tenth of a batch's rows: a batch this large goes as soon as the partition pauses.
fn substantial(target: &TableTarget) -> usize {
    (target.max_rows as usize / 10).max(1)
}

/// What one unit inserts with.
struct Table<'a> {
    target: &'a TableTarget,
    writer: RowWriter,
    statement: String,
    /// ClickHouse settings of every insert (see `RowWriter::settings`).
    settings: Vec<(&'static str, &'static str)>,
    max_bytes: u64,
}

pub async fn run(ctx: &WorkerCtx, st: &Arc<UnitState>, fence: &Fence, start: i64) -> Result<(), UnitError> {
    let target = st.unit.table.clone().unwrap_or_default();
    let writer = RowWriter::new(&target.columns);
    let max_bytes = batch_bytes(target.max_bytes, ctx.max_in_flight_kib);
    let table = Table { statement: statement(&target, &writer), settings: writer.settings(), writer, target: &target, max_bytes };
    let consumer = consumer(ctx, st, start)?;
    let mut messages = consumer.stream();
    let mut carry = match first_record(ctx, st, &consumer, &mut messages, start).await? {
        Some(r) => Some(r),
        None => return Ok(()),
    };
    // One batch is inserted while the next is read: throughput is the slower of the two, not their sum.
    let mut ready: Option<Prepared> = None;
    // Whether the last batch was substantial: the partition has a backlog (or a flood), and the batch that ends it
    // goes at the first pause, however small (its rows need not wait out the delay behind a burst).
    let mut backlog = false;
    loop {
        let batch = ready.take();
        let finishing = async {
            match batch {
                Some(p) => finish(ctx, st, fence, &table, p).await,
                None => Ok(()),
            }
        };
        let reading = read(ctx, st, &mut messages, &mut carry, &table, backlog);
        tokio::pin!(finishing, reading);
        // A batch that cannot be finished ends the run at once (the read may wait long for a record); a read that
        // fails waits for the batch being finished, so that batch is not inserted again.
        let (mut finished, mut next) = (false, None);
        while !finished || next.is_none() {
            tokio::select! {
                r = &mut finishing, if !finished => {
                    r?;
                    finished = true;
                }
                r = &mut reading, if next.is_none() => next = Some(r),
            }
        }
        match next.expect("read")? {
            Some(p) => {
                backlog = p.held.len() >= substantial(&target);
                ready = Some(p);
            }
            None => return Ok(()),
        }
    }
}

/// The next batch, bounded by rows, bytes and time; None once the unit is told to drain.
async fn read<'a>(
    ctx: &WorkerCtx,
    st: &UnitState,
    messages: &mut Messages<'a>,
    carry: &mut Option<Record<'a>>,
    table: &Table<'_>,
    backlog: bool,
) -> Result<Option<Prepared>, UnitError> {
    let target = table.target;
    let first = match carry.take() {
        Some(r) => r,
        None => match next_record(st, messages, None).await? {
            Some(r) => r,
            None => return Ok(None),
        },
    };
    let mut batch = BatchBuilder::default();
    batch.push(&first);
    drop(first);
    let deadline = Instant::now() + Duration::from_millis(target.max_delay_ms as u64);
    // A batch of a tenth of the rows or more goes as soon as the partition pauses, and so does the one after such a
    // batch, however small (a backlog's tail need not wait out the delay); a trickle of records still waits, so
    // that inserts stay few.
    let eager_from = if backlog { 1 } else { substantial(target) };
    while batch.len() < target.max_rows as usize && (batch.bytes as u64) < table.max_bytes {
        let until = if batch.len() >= eager_from { deadline.min(Instant::now() + IDLE) } else { deadline };
        match next_record(st, messages, Some(until)).await? {
            Some(r) => batch.push(&r),
            None => break,
        }
    }
    let kib = (batch.bytes.div_ceil(1024) as u32).clamp(1, ctx.max_in_flight_kib);
    let marks = messages.marks();
    let (_, held) = batch.finish();
    let memory = ctx.sync_in_flight_kib.clone().acquire_many_owned(kib).await.expect("semaphore never closed");
    ctx.metrics.records_in.with_label_values(&[&st.unit.name]).inc_by(held.len() as u64);
    let mut body = Vec::with_capacity(held.iter().map(|r| r.value.len() + 16).sum());
    let mut spans = Vec::with_capacity(held.len());
    let mut refused = Vec::new();
    for (i, r) in held.iter().enumerate() {
        let at = body.len();
        match table.writer.write(r.value, &mut body) {
            Ok(()) => spans.push((i, at..body.len())),
            Err(e) => refused.push((i, e, "RowConversionError")),
        }
    }
    Ok(Some(Prepared { held, body: Bytes::from(body), spans, refused, marks, _memory: memory }))
}

/// Inserts a batch, dead-letters what ClickHouse refused (or could not be a row), and moves the safe offset past it.
async fn finish(ctx: &WorkerCtx, st: &UnitState, fence: &Fence, table: &Table<'_>, p: Prepared) -> Result<(), UnitError> {
    let label = [table.target.table.as_str()];
    let Prepared { held, body, spans, mut refused, marks, _memory } = p;
    for (i, e) in insert(ctx, st, fence, table, &body, &spans, &label).await? {
        refused.push((i, e, "ClickHouseRejected"));
    }
    if !refused.is_empty() {
        refused.sort_by_key(|(i, ..)| *i);
        let records: Vec<_> = held.iter().collect();
        let n = refused.len() as u64;
        let owed = refused.into_iter().map(|(i, e, kind)| Owed::new(ctx, records[i].offset, records[i].value, records[i].key, e, kind)).collect();
        // From here on the rows are in the table: whatever happens, this run does not insert them again.
        letters::deliver(st, fence, &table.target.table, owed).await?;
        ctx.metrics.table_rows_dead_lettered.with_label_values(&label).inc_by(n);
        ctx.metrics.dead_letters.with_label_values(&[&st.unit.name]).inc_by(n);
    }
    // Everything up to here is in the table or the dead letter queue.
    st.safe_offset.store(held.last_offset() + 1, Ordering::SeqCst);
    st.commit_marks(held.last_offset() + 1, &marks);
    Ok(())
}

/// Inserts the rows of `spans` (in order, contiguous in `body`); returns the rows ClickHouse refused, found by
/// splitting the batch in halves; an insert over ClickHouse's memory limit is split too. Waits out a ClickHouse that
/// does not answer (or refuses for a reason no row caused, or lacks memory for a single row), unless the unit must
/// stop.
async fn insert(
    ctx: &WorkerCtx,
    st: &UnitState,
    fence: &Fence,
    table: &Table<'_>,
    body: &Bytes,
    spans: &[(usize, Range<usize>)],
    label: &[&str; 1],
) -> Result<Vec<(usize, String)>, UnitError> {
    let mut refused = Vec::new();
    let mut todo: Vec<Range<usize>> = Vec::new();
    if !spans.is_empty() {
        todo.push(0..spans.len());
    }
    let mut backoff = MIN_BACKOFF;
    while let Some(part) = todo.pop() {
        if !fence.lease.valid() || st.stop.is_cancelled() {
            return Err(UnitError::Fenced);
        }
        let rows = body.slice(spans[part.start].1.start..spans[part.end - 1].1.end);
        let started = Instant::now();
        match ctx.clickhouse.insert(&table.statement, &table.settings, rows).await {
            Ok(()) => {
                ctx.metrics.table_insert_latency.with_label_values(label).observe(started.elapsed().as_secs_f64());
                ctx.metrics.table_rows_inserted.with_label_values(label).inc_by(part.len() as u64);
                *st.error.lock().expect("error lock") = String::new();
                backoff = MIN_BACKOFF;
            }
            Err(InsertError::Rows(message)) if part.len() == 1 => refused.push((spans[part.start].0, message)),
            Err(InsertError::Rows(_) | InsertError::Memory(_)) if part.len() > 1 => {
                let mid = part.start + part.len() / 2;
                todo.push(mid..part.end);
                todo.push(part.start..mid);
            }
            Err(e) => {
                tracing::warn!(unit = st.unit.unit_id, error = %e, retry_in = ?backoff, "insert failed; retrying");
                *st.error.lock().expect("error lock") = e.to_string();
                ctx.metrics.table_insert_retries.with_label_values(label).inc();
                todo.push(part);
                if !st.pause(backoff).await {
                    return Err(UnitError::Table(e.to_string()));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_at_most_half_the_in_flight_budget_and_never_more_than_the_bound() {
        assert_eq!(batch_bytes(16 << 20, 64 << 10), 16 << 20);
        assert_eq!(batch_bytes(16 << 20, 64), 32 << 10);
        assert_eq!(batch_bytes(u64::MAX, u32::MAX / 2), MAX_BATCH_BYTES);
        assert_eq!(batch_bytes(0, 64), 1);
    }
}
