//! The dead letters a table sync batch owes once its insert is done: the rows refused before the insert or by
//! ClickHouse. They are produced until the broker takes them (bounded backoff), and the batch is never inserted
//! again meanwhile; only a unit that must stop (revoked, lease lost, abandoned at shutdown) leaves them owed, and
//! the unit that takes the partition over inserts that one batch again. A letter the broker refuses as too large
//! (its key, or a broker limit under the worker's) is cut down and sent again, so it never stalls the partition.

use super::super::pipeline::UnitError;
use super::super::produce::{origin, send, too_large, BatchAcks};
use super::super::{Fence, UnitState, WorkerCtx, MAX_BACKOFF, MIN_BACKOFF};
use crate::output::{DeadLetter, OriginalRecord};
use std::sync::Arc;

/// Room left in a broker message for the headers and record framing.
const RECORD_OVERHEAD: usize = 512;

/// One refused row's dead letter, still to be delivered.
pub struct Owed<'a> {
    pub offset: i64,
    pub value: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub message: String,
    pub kind: &'static str,
    /// Bytes the letter may take (the original record is cut to fit).
    limit: usize,
}

impl<'a> Owed<'a> {
    /// A letter sized to fit the broker's limit with its key; a key that would leave the letter little room is
    /// left off (the letter names the record's offset).
    pub fn new(ctx: &WorkerCtx, offset: i64, value: &'a [u8], key: &'a [u8], message: String, kind: &'static str) -> Self {
        let room = ctx.max_message_bytes.saturating_sub(RECORD_OVERHEAD);
        let key = (!key.is_empty() && key.len() <= room / 2).then_some(key);
        let limit = room - key.map_or(0, <[u8]>::len);
        Self { offset, value, key, message, kind, limit }
    }

    /// The broker refused the letter as too large: without its key, then at half the size.
    fn shrink(&mut self) {
        match self.key.take() {
            Some(k) => self.limit += k.len(),
            None => self.limit /= 2,
        }
    }
}

/// Delivers every owed letter, retrying what the broker does not take; Err only once the unit must stop.
pub async fn deliver(st: &UnitState, fence: &Fence, table: &str, mut owed: Vec<Owed<'_>>) -> Result<(), UnitError> {
    let origin = origin(st);
    let function = format!("table:{table}");
    let failed_at = chrono::Utc::now().to_rfc3339();
    let mut backoff = MIN_BACKOFF;
    loop {
        if st.stop.is_cancelled() || !fence.lease.valid() {
            return Err(UnitError::Fenced);
        }
        let mut failure = None;
        if fence.may_produce() {
            // Each letter acknowledged on its own: a retry sends only what the broker did not take.
            let mut handed: Vec<(usize, Arc<BatchAcks>)> = Vec::with_capacity(owed.len());
            for (i, o) in owed.iter_mut().enumerate() {
                let letter = DeadLetter {
                    original_record: OriginalRecord::of(o.value),
                    error_message: &o.message,
                    error_type: o.kind,
                    failed_at: failed_at.clone(),
                    source: "table",
                    function: &function,
                    topic: &st.unit.source_topic,
                    partition: st.unit.partition,
                    offset: o.offset,
                    original_record_truncated: None,
                    original_bytes: None,
                };
                let bytes = letter.to_bytes(o.value, o.limit);
                let acks = BatchAcks::new();
                match send(st, fence, &acks, &origin, &st.unit.dead_letter_topic, o.key, &bytes, o.offset).await {
                    Ok(()) => handed.push((i, acks)),
                    Err(UnitError::Batch(f)) => {
                        o.shrink();
                        failure = Some(f.detail);
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            let mut delivered = vec![false; owed.len()];
            for (i, acks) in handed {
                match acks.wait().await {
                    Ok(()) => delivered[i] = true,
                    Err(e) => {
                        if too_large(&e) {
                            owed[i].shrink();
                        }
                        failure = Some(e.to_string());
                    }
                }
            }
            let mut flags = delivered.into_iter();
            owed.retain(|_| !flags.next().unwrap_or(false));
            if owed.is_empty() {
                if backoff > MIN_BACKOFF {
                    st.error.lock().expect("error lock").clear();
                }
                return Ok(());
            }
        } else {
            failure = Some("the lease runs out sooner than a dead letter could be delivered".into());
        }
        let failure = failure.unwrap_or_default();
        tracing::warn!(unit = st.unit.unit_id, owed = owed.len(), error = %failure, retry_in = ?backoff, "dead letters of an inserted batch not produced; retrying them (not the insert)");
        *st.error.lock().expect("error lock") = format!("{} dead letters cannot be produced to `{}`: {failure}", owed.len(), st.unit.dead_letter_topic);
        // A drain waits for them too: the shutdown timeout ends the wait (as a stop).
        tokio::select! {
            _ = st.stop.cancelled() => return Err(UnitError::Fenced),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
