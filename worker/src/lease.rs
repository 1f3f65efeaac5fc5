//! The worker's own view of its lease. It runs out earlier than the control plane's (it counts from when a
//! heartbeat was sent, less a margin), so a worker never acts on a lease the control plane already gave away,
//! even after being paused.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct Lease {
    deadline: Mutex<Instant>,
    length: Duration,
}

impl Lease {
    pub fn new(sent_at: Instant, length: Duration) -> Self {
        let lease = Self { deadline: Mutex::new(sent_at), length };
        lease.renewed(sent_at);
        lease
    }

    /// A heartbeat sent at `sent_at` succeeded.
    pub fn renewed(&self, sent_at: Instant) {
        let margin = (self.length / 10).max(Duration::from_millis(50));
        *self.deadline.lock().expect("lease lock") = sent_at + self.length.saturating_sub(margin);
    }

    pub fn valid(&self) -> bool {
        self.valid_for(Duration::ZERO)
    }

    /// Still held `ahead` from now. A record handed to the producer may be delivered up to its delivery timeout
    /// later, so producing asks for that much lease left.
    pub fn valid_for(&self, ahead: Duration) -> bool {
        Instant::now() + ahead < *self.deadline.lock().expect("lease lock")
    }

    /// How long the lease is still held, as this worker counts it.
    pub fn remaining(&self) -> Duration {
        self.deadline.lock().expect("lease lock").saturating_duration_since(Instant::now())
    }

    pub fn length(&self) -> Duration {
        self.length
    }
}
