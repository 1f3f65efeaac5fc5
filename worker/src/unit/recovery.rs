//! What a unit does after a failed batch, so that no record stalls its partition. A batch that fails the same way
//! `tries` times is split in halves, one batch in flight at a time, until the failing record stands alone; that
//! record then goes to the dead letter queue and the partition moves on. Failures that say nothing about the records
//! (a sidecar that cannot be reached, a broker that is down, a lost lease) are retried as they are, forever.
//! Pure state, so the rules are tested without a broker.

/// Why a batch failed in a way one of its records may have caused. The names are the dead letters' `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// The batch was refused as too large (the sidecar's gRPC limit).
    RecordTooLarge,
    /// The sidecar's stream broke while it had the batch: it crashed or was killed.
    SidecarCrashed,
    /// The sidecar did not answer within the call timeout.
    SidecarTimeout,
    /// An output is larger than the broker takes.
    OutputTooLarge,
}

impl Poison {
    pub fn error_type(self) -> &'static str {
        match self {
            Poison::RecordTooLarge => "RecordTooLarge",
            Poison::SidecarCrashed => "SidecarCrashed",
            Poison::SidecarTimeout => "SidecarTimeout",
            Poison::OutputTooLarge => "OutputTooLarge",
        }
    }
}

/// A failed batch: its first offset and record count, and, when the failure names it, the exact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    pub first: i64,
    pub len: usize,
    pub exact: Option<i64>,
    pub kind: Poison,
    pub detail: String,
}

/// A record to send to the dead letter queue instead of its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condemned {
    pub offset: i64,
    pub kind: Poison,
    pub detail: String,
}

#[derive(Debug)]
pub struct Recovery {
    normal_cap: usize,
    tries: u32,
    strikes: u32,
    /// While isolating: the offset past which batches are normal again.
    isolating_until: Option<i64>,
    cap: usize,
    condemned: Option<Condemned>,
    last_safe: i64,
}

impl Recovery {
    pub fn new(normal_cap: usize, tries: u32, safe: i64) -> Self {
        let normal_cap = normal_cap.max(1);
        Self { normal_cap, tries: tries.max(1), strikes: 0, isolating_until: None, cap: normal_cap, condemned: None, last_safe: safe }
    }

    /// Records per batch for the next run.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// One batch at a time while isolating, so each failure is exactly the batch it names.
    pub fn isolating(&self) -> bool {
        self.isolating_until.is_some()
    }

    /// While isolating: the offset past which batches are normal again.
    pub fn isolating_until(&self) -> Option<i64> {
        self.isolating_until
    }

    pub fn condemned(&self) -> Option<&Condemned> {
        self.condemned.as_ref()
    }

    /// The unit's safe offset after a run: progress ends isolation once past the suspects, and clears strikes.
    pub fn progressed(&mut self, safe: i64) {
        if safe <= self.last_safe {
            return;
        }
        self.last_safe = safe;
        if self.condemned.as_ref().is_some_and(|c| safe > c.offset) {
            self.condemned = None;
        }
        match self.isolating_until {
            Some(end) if safe >= end => {
                self.isolating_until = None;
                self.cap = self.normal_cap;
                self.strikes = 0;
            }
            Some(_) => {}
            None => self.strikes = 0,
        }
    }

    /// A batch failed in a way a record may have caused.
    pub fn failed(&mut self, f: BatchFailure) {
        if let Some(offset) = f.exact {
            self.condemned = Some(Condemned { offset, kind: f.kind, detail: f.detail });
            return;
        }
        if f.len == 0 {
            return;
        }
        if self.isolating_until.is_none() {
            self.strikes += 1;
            if self.strikes < self.tries {
                return;
            }
            self.isolating_until = Some(f.first + f.len as i64);
        }
        if f.len == 1 {
            self.condemned = Some(Condemned { offset: f.first, kind: f.kind, detail: f.detail });
        } else {
            self.cap = f.len.div_ceil(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(first: i64, len: usize) -> BatchFailure {
        BatchFailure { first, len, exact: None, kind: Poison::SidecarCrashed, detail: "boom".into() }
    }

    /// Runs batches from `safe` against a partition where `poison` always fails its batch; returns the runs it
    /// took and the condemned offset.
    fn isolate(mut safe: i64, poison: i64, batch: usize) -> (usize, i64) {
        let mut r = Recovery::new(batch, 3, safe);
        for runs in 1..200 {
            if let Some(c) = r.condemned() {
                assert_eq!(c.offset, safe, "a condemned record is the next one to read");
                return (runs, c.offset);
            }
            let len = r.cap();
            if (safe..safe + len as i64).contains(&poison) {
                r.failed(fail(safe, len));
            } else {
                safe += len as i64;
                r.progressed(safe);
            }
        }
        panic!("never isolated");
    }

    #[test]
    fn a_poison_record_is_isolated_by_halving() {
        for poison in [0, 1, 499, 500, 998, 999] {
            let (runs, offset) = isolate(0, poison, 1000);
            assert_eq!(offset, poison);
            assert!(runs < 30, "{runs} runs to isolate offset {poison}");
        }
    }

    #[test]
    fn a_failure_that_heals_is_retried_without_splitting() {
        let mut r = Recovery::new(1000, 3, 0);
        r.failed(fail(0, 1000));
        r.failed(fail(0, 1000));
        assert_eq!((r.cap(), r.isolating()), (1000, false));
        r.progressed(1000);
        r.failed(fail(1000, 1000));
        r.failed(fail(1000, 1000));
        assert_eq!((r.cap(), r.isolating()), (1000, false), "strikes start again after progress");
    }

    #[test]
    fn batches_are_normal_again_past_the_suspects() {
        let mut r = Recovery::new(8, 1, 0);
        r.failed(fail(0, 8));
        assert_eq!((r.cap(), r.isolating()), (4, true));
        r.progressed(4);
        r.failed(fail(4, 4));
        r.failed(fail(4, 2));
        r.failed(fail(4, 1));
        assert_eq!(r.condemned().map(|c| c.offset), Some(4));
        r.progressed(5);
        assert!(r.condemned().is_none());
        r.progressed(8);
        assert_eq!((r.cap(), r.isolating()), (8, false));
    }

    #[test]
    fn a_failure_naming_its_record_condemns_it_at_once() {
        let mut r = Recovery::new(1000, 3, 0);
        r.failed(BatchFailure { first: 0, len: 1000, exact: Some(17), kind: Poison::OutputTooLarge, detail: "big".into() });
        assert_eq!(r.condemned().map(|c| (c.offset, c.kind)), Some((17, Poison::OutputTooLarge)));
        assert!(!r.isolating());
    }
}
