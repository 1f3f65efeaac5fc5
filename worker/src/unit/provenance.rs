//! Provenance, and dropping re-emits so duplicates do not compound down a chain.
//!
//! Every output of a transform carries one header,
//! `millrace-origin: <unit>@<epoch>;<incarnation>;<run>;<offset>;<index>`: the unit that made it, the epoch it
//! held the unit at, its source incarnation (source resets its row has committed, plus its own since), the run of
//! the unit's pipeline on this worker (see below), the source offset of the record it came from and its index
//! among that record's outputs.
//!
//! Within one partition an upstream unit's outputs arrive in order, so every unit keeps, per upstream unit, the
//! greatest position it has read (its marks) and drops a record at or below the mark: a re-emit of one it read.
//! Positions compare by incarnation first (a source read again from its start makes new records), then, between
//! outputs of one holding (same epoch), by run. A pipeline restarted after a failure re-emits from the safe
//! offset; if one of the unit's deliveries failed meanwhile (a record that timed out while a later one was
//! delivered: a gap), what it re-emits may fill the gap and must not be dropped, so it produces as a new run
//! (`UnitState::next_run`); otherwise its re-emits are dropped like any other. Between holdings (a unit that
//! moved, the fault this exists for) only the source offset and index count: the new holder's re-emits of what
//! the old one delivered are dropped.
//!
//! The marks as of a batch go with its offset to the control plane, so a unit restarted at its committed offset
//! knows what it had read before it. They are used only for the source topic and offset they were taken at (a
//! unit whose source or offset changed otherwise starts with none: at worst a duplicate, never a drop). At most
//! `MAX_MARKS` upstream units are kept; the one read least recently goes first.

use millrace_proto::v1::{ProvenanceMark, ProvenanceMarks};
use prost::Message;
use std::cmp::Ordering;
use std::fmt::Write;
use std::sync::Arc;

/// Upstream units a unit keeps marks for. A partition is written by one unit per upstream function and partition:
/// far fewer in practice. An evicted upstream unit's re-emits are no longer dropped (duplicates, never loss).
pub const MAX_MARKS: usize = 1024;

/// The longest unit id a provenance header may name (ids are `<kind>/<function>/<partition>`, names at most 128).
const MAX_UNIT_ID: usize = 300;

/// Where an output came from, as its provenance header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub incarnation: u64,
    pub run: u64,
    pub offset: i64,
    pub index: u32,
}

impl Position {
    /// Whether `self` was read already, given `mark`, the greatest position read of its unit (see the module's
    /// comment for the order).
    pub fn seen(&self, mark: &Position) -> bool {
        let order = self.incarnation.cmp(&mark.incarnation).then_with(|| match self.epoch == mark.epoch {
            true => self.run.cmp(&mark.run),
            false => Ordering::Equal,
        });
        order.then_with(|| (self.offset, self.index).cmp(&(mark.offset, mark.index))) != Ordering::Greater
    }
}

/// Splits a provenance header into the unit and its position; None for one without a position (an older worker's
/// `<unit>@<epoch>`, or a dead letter of a table sync, whose retries are not ordered).
pub fn parse(value: &[u8]) -> Option<(&[u8], Position)> {
    let mut fields = value.rsplitn(5, |b| *b == b';');
    let index = number(fields.next()?)?;
    let offset = number(fields.next()?)?;
    let run = number(fields.next()?)?;
    let incarnation = number(fields.next()?)?;
    let rest = fields.next()?;
    let at = rest.iter().rposition(|b| *b == b'@')?;
    // A unit id is short; anything longer is no header of ours (and would bloat the marks a report carries).
    if at > MAX_UNIT_ID || rest[..at].is_empty() {
        return None;
    }
    let epoch = number(&rest[at + 1..])?;
    let p = Position { epoch, incarnation, run, offset: i64::try_from(offset).ok()?, index: u32::try_from(index).ok()? };
    Some((&rest[..at], p))
}

fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| if d.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(d - b'0')) } else { None })
}

/// The provenance header of one unit's run, rewritten in place for each output: no allocation per record.
pub struct Origin {
    buf: String,
    prefix: usize,
}

impl Origin {
    pub fn new(unit_id: &str, epoch: u64, incarnation: u64, run: u64) -> Self {
        let mut buf = String::with_capacity(unit_id.len() + 64);
        let _ = write!(buf, "{unit_id}@{epoch};{incarnation};{run};");
        let prefix = buf.len();
        Self { buf, prefix }
    }

    /// The header of the output `index` of the source record at `offset`.
    pub fn at(&mut self, offset: i64, index: u32) -> &str {
        self.buf.truncate(self.prefix);
        let _ = write!(self.buf, "{};{index}", offset.max(0));
        &self.buf
    }
}

#[derive(Clone, Debug)]
struct Mark {
    unit: Arc<[u8]>,
    at: Position,
    /// When it was last read (a count of records read), to evict the stalest.
    read: u64,
}

/// How to take back the last record read (see `Marks::without_last`).
#[derive(Clone, Debug, Default)]
enum Undo {
    #[default]
    Nothing,
    /// Entry `.0` was at `.1`.
    Moved(usize, Position),
    /// An entry was added last, after evicting the one at `.0` (if any).
    Added(Option<(usize, Mark)>),
}

/// The greatest position read per upstream unit.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    marks: Vec<Mark>,
    reads: u64,
    /// The entry of the last upstream unit read: most records come from the same few.
    last: usize,
    undo: Undo,
}

impl Marks {
    /// Whether the record of `unit` at `at` was read already; if not, it is now.
    pub fn read(&mut self, unit: &[u8], at: Position) -> bool {
        self.reads += 1;
        self.undo = Undo::Nothing;
        let found = match self.marks.get(self.last) {
            Some(m) if *m.unit == *unit => Some(self.last),
            _ => self.marks.iter().position(|m| *m.unit == *unit),
        };
        match found {
            Some(i) => {
                self.last = i;
                let m = &mut self.marks[i];
                m.read = self.reads;
                if at.seen(&m.at) {
                    return true;
                }
                self.undo = Undo::Moved(i, m.at);
                m.at = at;
            }
            None => self.insert(Mark { unit: unit.into(), at, read: self.reads }),
        }
        false
    }

    fn insert(&mut self, m: Mark) {
        let mut evicted = None;
        if self.marks.len() >= MAX_MARKS {
            let stalest = self.marks.iter().enumerate().min_by_key(|(_, m)| m.read).map_or(0, |(i, _)| i);
            evicted = Some((stalest, self.marks.swap_remove(stalest)));
        }
        self.undo = Undo::Added(evicted);
        self.marks.push(m);
        self.last = self.marks.len() - 1;
    }

    /// The last record read had no provenance: nothing to take back.
    pub fn read_other(&mut self) {
        self.undo = Undo::Nothing;
    }

    /// The marks as they were before the last record read (one read but left for the next batch).
    pub fn without_last(&self) -> Self {
        let mut m = self.clone();
        match std::mem::take(&mut m.undo) {
            Undo::Nothing => {}
            Undo::Moved(i, at) => m.marks[i].at = at,
            Undo::Added(evicted) => {
                m.marks.pop();
                if let Some((i, e)) = evicted {
                    if i == m.marks.len() {
                        m.marks.push(e);
                    } else {
                        let moved = std::mem::replace(&mut m.marks[i], e);
                        m.marks.push(moved);
                    }
                }
            }
        }
        m.last = 0;
        m
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The marks as stored with a committed offset: valid for that source topic and offset only.
    pub fn encode(&self, source_topic: &str, offset: i64) -> Vec<u8> {
        if self.marks.is_empty() {
            return Vec::new();
        }
        let marks = self
            .marks
            .iter()
            .map(|m| ProvenanceMark {
                unit_id: m.unit.to_vec(),
                epoch: m.at.epoch,
                incarnation: m.at.incarnation,
                run: m.at.run,
                offset: m.at.offset,
                index: m.at.index,
            })
            .collect();
        ProvenanceMarks { source_topic: source_topic.into(), offset, marks }.encode_to_vec()
    }

    /// The stored marks, if they were taken at this source topic and offset; else none (see the module's comment).
    pub fn decode(bytes: &[u8], source_topic: &str, offset: i64) -> Self {
        let Ok(stored) = ProvenanceMarks::decode(bytes) else { return Self::default() };
        if bytes.is_empty() || stored.source_topic != source_topic || stored.offset != offset {
            return Self::default();
        }
        let mut marks = Self::default();
        for m in stored.marks.into_iter().take(MAX_MARKS) {
            let at = Position { epoch: m.epoch, incarnation: m.incarnation, run: m.run, offset: m.offset, index: m.index };
            marks.reads += 1;
            marks.marks.push(Mark { unit: m.unit_id.into(), at, read: marks.reads });
        }
        marks
    }
}

/// The marks as of a unit's safe offset (taken per batch, so never ahead of it).
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// The safe offset the marks are as of.
    pub offset: i64,
    pub marks: Arc<Marks>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, incarnation: u64, run: u64, offset: i64, index: u32) -> Position {
        Position { epoch, incarnation, run, offset, index }
    }

    #[test]
    fn a_header_round_trips_and_older_or_foreign_ones_carry_no_position() {
        let mut o = Origin::new("transform/a@b/3", 42, 7, 2);
        assert_eq!(o.at(1234, 1), "transform/a@b/3@42;7;2;1234;1");
        let (unit, p) = parse(o.at(99, 0).as_bytes()).unwrap();
        assert_eq!(unit, b"transform/a@b/3");
        assert_eq!(p, at(42, 7, 2, 99, 0));
        assert_eq!(parse(b"transform/a/3@42"), None, "an older worker's header");
        assert_eq!(parse(b"x@1;2;3;four;0"), None);
        assert_eq!(parse(b"x@1;2;3;4;99999999999"), None, "an index beyond u32");
        assert_eq!(parse(b";;;;"), None);
    }

    #[test]
    fn records_at_or_below_the_mark_are_seen_in_offset_then_index_order() {
        let mut m = Marks::default();
        assert!(!m.read(b"u", at(1, 0, 0, 10, 0)));
        assert!(!m.read(b"u", at(1, 0, 0, 10, 1)), "the second output of the same record");
        assert!(m.read(b"u", at(1, 0, 0, 10, 1)), "the same output again");
        assert!(m.read(b"u", at(1, 0, 0, 10, 0)));
        assert!(m.read(b"u", at(1, 0, 0, 9, 5)));
        assert!(!m.read(b"u", at(1, 0, 0, 11, 0)));
        // Another upstream unit has marks of its own.
        assert!(!m.read(b"v", at(1, 0, 0, 3, 0)));
        assert!(m.read(b"v", at(1, 0, 0, 3, 0)));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_new_holder_re_emitting_what_the_old_one_delivered_is_dropped_and_then_goes_on() {
        let mut m = Marks::default();
        for o in 0..100 {
            assert!(!m.read(b"u", at(5, 0, 3, o, 0)));
        }
        // Epoch 9 (moved after a kill) starts at its committed offset 60, in its first run.
        for o in 60..100 {
            assert!(m.read(b"u", at(9, 0, 1, o, 0)), "offset {o} was read from epoch 5");
        }
        assert!(!m.read(b"u", at(9, 0, 1, 100, 0)));
        assert!(m.read(b"u", at(9, 0, 1, 100, 0)));
    }

    #[test]
    fn a_later_run_of_the_same_holding_is_never_dropped_as_it_may_fill_a_producer_gap() {
        let mut m = Marks::default();
        // Run 1 delivered 10 and 12; 11 timed out in the producer. Run 2 re-emits from 10.
        assert!(!m.read(b"u", at(5, 0, 1, 10, 0)));
        assert!(!m.read(b"u", at(5, 0, 1, 12, 0)));
        assert!(!m.read(b"u", at(5, 0, 2, 11, 0)), "the gap is filled");
        assert!(m.read(b"u", at(5, 0, 1, 13, 0)), "an older run's record after a newer run's");
        assert!(!m.read(b"u", at(5, 0, 2, 12, 0)));
        assert!(m.read(b"u", at(5, 0, 2, 12, 0)));
    }

    #[test]
    fn a_new_incarnation_is_never_dropped_and_an_old_one_always_is() {
        let mut m = Marks::default();
        assert!(!m.read(b"u", at(5, 3, 1, 5000, 0)));
        // The upstream unit's source was recreated: its offsets start over.
        assert!(!m.read(b"u", at(5, 4, 2, 0, 0)));
        assert!(!m.read(b"u", at(8, 4, 1, 1, 0)));
        assert!(m.read(b"u", at(8, 3, 1, 9000, 0)), "the old incarnation, however far its offset");
        assert!(m.read(b"u", at(9, 4, 1, 1, 0)), "another holding's re-emit of the new incarnation");
    }

    #[test]
    fn marks_are_bounded_and_the_stalest_go_first() {
        let mut m = Marks::default();
        for u in 0..MAX_MARKS {
            assert!(!m.read(format!("u{u}").as_bytes(), at(1, 0, 0, 1, 0)));
        }
        assert!(m.read(b"u0", at(1, 0, 0, 1, 0)), "u0 is read again: it is now the freshest");
        assert!(!m.read(b"new", at(1, 0, 0, 1, 0)));
        assert_eq!(m.len(), MAX_MARKS);
        assert!(m.read(b"u0", at(1, 0, 0, 1, 0)), "u0 was kept");
        assert!(!m.read(b"u1", at(1, 0, 0, 1, 0)), "u1, the stalest, was evicted: its record is read again");
        assert_eq!(m.len(), MAX_MARKS);
    }

    #[test]
    fn the_marks_before_the_last_record_read_leave_it_unread() {
        let mut m = Marks::default();
        m.read(b"u", at(1, 0, 0, 5, 0));
        m.read(b"u", at(1, 0, 0, 6, 0));
        let mut before = m.without_last();
        assert!(!before.read(b"u", at(1, 0, 0, 6, 0)), "a moved mark goes back");
        m.read(b"v", at(1, 0, 0, 1, 0));
        let mut before = m.without_last();
        assert!(!before.read(b"v", at(1, 0, 0, 1, 0)), "an added mark goes");
        assert!(before.read(b"u", at(1, 0, 0, 6, 0)));
        m.read_other();
        let mut before = m.without_last();
        assert!(before.read(b"v", at(1, 0, 0, 1, 0)), "a record without provenance changed nothing");
        // At the bound, the evicted entry comes back.
        let mut full = Marks::default();
        for u in 0..MAX_MARKS {
            full.read(format!("u{u}").as_bytes(), at(1, 0, 0, 1, 0));
        }
        full.read(b"new", at(1, 0, 0, 1, 0));
        let mut before = full.without_last();
        assert_eq!(before.len(), MAX_MARKS);
        assert!(before.read(b"u0", at(1, 0, 0, 1, 0)), "the evicted entry is back");
        assert!(!before.read(b"new", at(1, 0, 0, 1, 0)));
    }

    #[test]
    fn stored_marks_apply_only_at_the_topic_and_offset_they_were_taken_at() {
        let mut m = Marks::default();
        m.read(b"u", at(5, 1, 2, 77, 1));
        let bytes = m.encode("topic", 40);
        let mut back = Marks::decode(&bytes, "topic", 40);
        assert!(back.read(b"u", at(9, 1, 1, 77, 1)));
        assert!(!back.read(b"u", at(9, 1, 1, 78, 0)));
        assert!(Marks::decode(&bytes, "topic", 41).is_empty(), "another offset");
        assert!(Marks::decode(&bytes, "other", 40).is_empty(), "another source topic");
        assert!(Marks::decode(b"\xff\xff", "topic", 40).is_empty(), "garbage");
        assert!(Marks::default().encode("topic", 40).is_empty(), "no marks, no bytes");
    }
}
