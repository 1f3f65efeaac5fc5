//! Who is to blame when a sidecar process crashes. Every unit whose batch was on the process sees its stream break,
//! but only one record caused it; counting the break against each of them would let a record that crashes the
//! process send other units' innocent records to the dead letter queue. So a break seen in a normal run counts
//! against nobody: the unit becomes a suspect, and suspects take turns, one at a time per process, running one
//! batch each (a probation run). A break during a probation run counts against the unit on probation, since no
//! other suspect runs then; a suspect whose probation batch succeeds is cleared. (A unit that had never crashed
//! the process may still break a probation run once, the first time its record does; `--poison-tries` is 3.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Probation turns of one worker's units, per sidecar process.
#[derive(Default, Clone)]
pub struct Probations {
    turns: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// A unit's turn on one process; ends when dropped.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

impl Probations {
    /// Waits for a turn on `process`.
    pub async fn turn(&self, process: &str) -> Turn {
        let turn = self.turns.lock().expect("probation lock").entry(process.to_string()).or_insert_with(|| Arc::new(Semaphore::new(1))).clone();
        Turn { _permit: turn.acquire_owned().await.expect("never closed") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn suspects_take_turns_one_at_a_time_per_process() {
        let p = Probations::default();
        let first = p.turn("a").await;
        assert!(tokio::time::timeout(Duration::from_millis(50), p.turn("a")).await.is_err(), "a second turn on the same process waits");
        let _other = p.turn("b").await;
        drop(first);
        let _next = tokio::time::timeout(Duration::from_millis(50), p.turn("a")).await.expect("the next turn once the first ended");
    }
}
