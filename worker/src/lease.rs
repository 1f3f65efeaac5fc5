//! The worker's own view of its lease. It runs out earlier than the control plane's (it counts from when a
//! heartbeat was sent, less a margin), so a worker never acts on a lease the control plane already gave away,
//! even after being paused. The lease's length and the heartbeat interval are the control plane's latest answer,
//! not the ones given at registration: a control plane restarted with a shorter `--lease-ms` shortens the lease
//! of every worker from its next heartbeat on, and the worker must count with it from then on.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct Lease {
    state: Mutex<State>,
}

struct State {
    deadline: Instant,
    length: Duration,
    interval: Duration,
    /// Ended here: no answer renews it again.
    ended: bool,
}

/// The shortest heartbeat interval a worker keeps, whatever it is told.
const MIN_INTERVAL: Duration = Duration::from_millis(20);

impl Lease {
    pub fn new(sent_at: Instant, length: Duration, interval: Duration) -> Self {
        let state = State { deadline: sent_at, length, interval: interval.max(MIN_INTERVAL), ended: false };
        let lease = Self { state: Mutex::new(state) };
        lease.renewed(sent_at, None, None);
        lease
    }

    /// A heartbeat sent at `sent_at` succeeded; its answer may carry the lease length and heartbeat interval the
    /// control plane grants now (None: unchanged). The deadline follows the new length at once, shorter or longer.
    pub fn renewed(&self, sent_at: Instant, length: Option<Duration>, interval: Option<Duration>) {
        let mut s = self.state.lock().expect("lease lock");
        if let Some(l) = length.filter(|l| !l.is_zero()) {
            s.length = l;
        }
        if let Some(i) = interval.filter(|i| !i.is_zero()) {
            s.interval = i.max(MIN_INTERVAL);
        }
        if s.ended {
            return;
        }
        let margin = (s.length / 10).max(Duration::from_millis(50));
        s.deadline = sent_at + s.length.saturating_sub(margin);
    }

    /// Ends the lease here and now, as this worker counts it: nothing more is produced or committed under it.
    pub fn end(&self) {
        let mut s = self.state.lock().expect("lease lock");
        s.deadline = Instant::now();
        s.ended = true;
    }

    pub fn valid(&self) -> bool {
        self.valid_for(Duration::ZERO)
    }

    /// Still held `ahead` from now. A record handed to the producer may be delivered up to its delivery timeout
    /// later, so producing asks for that much lease left.
    pub fn valid_for(&self, ahead: Duration) -> bool {
        Instant::now() + ahead < self.state.lock().expect("lease lock").deadline
    }

    /// How long the lease is still held, as this worker counts it.
    pub fn remaining(&self) -> Duration {
        self.state.lock().expect("lease lock").deadline.saturating_duration_since(Instant::now())
    }

    /// The lease's length, as last granted.
    pub fn length(&self) -> Duration {
        self.state.lock().expect("lease lock").length
    }

    /// How often to heartbeat, as last told.
    pub fn interval(&self) -> Duration {
        self.state.lock().expect("lease lock").interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shorter_lease_in_a_heartbeat_answer_ends_the_lease_sooner() {
        let lease = Lease::new(Instant::now(), Duration::from_secs(30), Duration::from_millis(7_500));
        lease.renewed(Instant::now(), Some(Duration::from_millis(300)), Some(Duration::from_millis(75)));
        assert_eq!(lease.interval(), Duration::from_millis(75));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!lease.valid(), "the lease is held {:?} more, as if it were still 30 s long", lease.remaining());
    }

    #[tokio::test]
    async fn an_answer_without_a_length_keeps_the_current_one() {
        let lease = Lease::new(Instant::now(), Duration::from_secs(3), Duration::from_millis(750));
        lease.renewed(Instant::now(), Some(Duration::ZERO), None);
        assert_eq!((lease.length(), lease.interval()), (Duration::from_secs(3), Duration::from_millis(750)));
    }
}
