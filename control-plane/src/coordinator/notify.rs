//! What control planes sharing a database tell each other, through Postgres (LISTEN/NOTIFY): the leader announces
//! that a round changed the stored sets (every replica then publishes to the workers watching it), and a follower
//! that a worker joined or left (the leader then runs a round). A notification is a hint, never the data: sets
//! are read from the rows, so one missed costs a delay, not a wrong set.

use super::Coordinator;
use sqlx::postgres::PgListener;
use std::time::Duration;

/// A round committed changes to `assignments`.
pub(super) const ASSIGNMENTS: &str = "millrace_assignments";
/// A follower asks the leader for a round; the payload says why.
const WAKE: &str = "millrace_wake";

/// Why a follower wants a round.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wake {
    /// A worker registered or reopened its stream: placed with the others joining about now (see `joined`).
    Join,
    /// Anything else (a worker left, a unit was refused): a round now.
    Change,
}

impl Wake {
    fn payload(self) -> &'static str {
        match self {
            Wake::Join => "join",
            Wake::Change => "change",
        }
    }
}

impl Coordinator {
    /// Gets a round run for `why`: here when this process leads, else by the leader, told through Postgres.
    pub(super) async fn want_round(&self, why: Wake) {
        if self.inner.leadership.leading() {
            match why {
                Wake::Join => self.joined(),
                Wake::Change => self.plan_changed(),
            }
            return;
        }
        let told = sqlx::query("SELECT pg_notify($1, $2)").bind(WAKE).bind(why.payload()).execute(self.inner.store.pool()).await;
        if let Err(e) = told {
            // The leader's periodic round places it anyway, within a quarter lease.
            tracing::warn!(error = %e, ?why, "cannot tell the leader to run a round; its next periodic round will");
        }
    }

    /// Listens for the other control planes until aborted, connecting again whenever the connection drops.
    pub(super) async fn listen(self) {
        loop {
            let mut listener = match PgListener::connect_with(self.inner.leadership.pool()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other control planes; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen_all([ASSIGNMENTS, WAKE]).await {
                tracing::warn!(error = %e, "cannot listen for other control planes; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                // Whatever was announced while not listening is lost: publish anyway.
                self.publish_logged().await;
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) if n.channel() == ASSIGNMENTS => self.publish_logged().await,
                        Ok(Some(n)) => {
                            // Only the leader acts on a wake; a follower may have been leader when it was sent.
                            if self.inner.leadership.leading() {
                                match n.payload() {
                                    "join" => self.joined(),
                                    _ => self.plan_changed(),
                                }
                            }
                        }
                        // The connection dropped; the next call connects again and listens anew.
                        Ok(None) => {
                            tracing::debug!("the notification connection dropped; listening again");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for other control planes failed; trying again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn publish_logged(&self) {
        if let Err(e) = self.publish().await {
            tracing::debug!(error = %e, "publishing the stored sets failed; the next notification or tick retries");
        }
    }
}
