//! Leadership among control planes sharing one Postgres. One `leader` row says who leads (a per-process uuid), in
//! which term and until when, judged by Postgres' clock alone. The leader renews its lease every third of it; the
//! others try to take it every sixth, and do as soon as it lapsed: a leader killed outright is replaced within
//! about one lease. A leader counts its lease from when it *sent* the renewal (less a tenth), so it stops leading
//! before Postgres would let another take over. That local view is only an economy: every scheduling round and
//! every apply checks its term in its own transaction (`fence`), holding the row so that no takeover can commit
//! while it runs. Session advisory locks are not used for this: on a pooled connection they vanish silently
//! when the connection is recycled.

use crate::error::Error;
use sqlx::{PgConnection, PgPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// This process's term, and until when (by its own clock) it may act in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub term: i64,
    pub until: Instant,
}

/// Who leads, as the `leader` row says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leader {
    pub holder: String,
    pub term: i64,
    pub address: String,
    /// Its lease has not run out.
    pub live: bool,
}

#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    holder: String,
    address: String,
    lease: Duration,
    worker_lease_ms: i64,
    held: watch::Sender<Option<Held>>,
}

impl Leadership {
    /// `address` is where other replicas forward writes to this one; `worker_lease` is written to Postgres as the
    /// cluster's worker lease whenever this process takes office.
    pub fn new(pool: PgPool, address: String, lease: Duration, worker_lease: Duration) -> Self {
        let (held, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                pool,
                holder: uuid::Uuid::new_v4().to_string(),
                address,
                lease,
                worker_lease_ms: worker_lease.as_millis() as i64,
                held,
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Postgres connections kept apart from the request pools (renewals must not queue behind heartbeats).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The term this process leads in, while its lease holds by its own count.
    pub fn term(&self) -> Option<i64> {
        self.inner.held.borrow().filter(|h| Instant::now() < h.until).map(|h| h.term)
    }

    pub fn leading(&self) -> bool {
        self.term().is_some()
    }

    /// Changes of this process's term (taking office, stepping down).
    pub fn subscribe(&self) -> watch::Receiver<Option<Held>> {
        self.inner.held.subscribe()
    }

    /// Records this process's term; subscribers hear of a change of term only, not of renewals.
    fn set(&self, held: Option<Held>) {
        self.inner.held.send_if_modified(|h| {
            let changed = h.map(|h| h.term) != held.map(|h| h.term);
            *h = held;
            changed
        });
    }

    /// How long after a renewal was sent this process may act on it: a tenth less than Postgres grants, for
    /// clocks that run at slightly different rates.
    fn valid_for(&self) -> Duration {
        self.inner.lease - self.inner.lease / 10
    }

    fn not_leader(&self, why: &str) -> Error {
        Error::NotLeader(format!("this control plane ({}) {why}", self.inner.address))
    }

    /// In `conn`'s transaction: fails unless this process still leads in `term` (by Postgres' clock, now), and
    /// holds the leader row until the transaction ends, so that no other control plane takes office meanwhile.
    pub async fn fence(&self, conn: &mut PgConnection, term: i64) -> Result<(), Error> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT term FROM leader WHERE holder = $1 AND term = $2 AND expires_at > clock_timestamp() FOR SHARE",
        )
        .bind(&self.inner.holder)
        .bind(term)
        .fetch_optional(conn)
        .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(self.not_leader(&format!("no longer leads in term {term}; nothing was recorded"))),
        }
    }

    /// The term to act in now, or an error saying this process does not lead.
    pub fn current(&self) -> Result<i64, Error> {
        self.term().ok_or_else(|| self.not_leader("does not lead"))
    }

    /// Who leads, as Postgres says now. Read on `pool` (a request pool): this process's own connections are
    /// kept for renewing its lease, which a burst of status calls must never hold up.
    pub async fn leader(&self, pool: &PgPool) -> Result<Leader, Error> {
        let r = sqlx::query("SELECT holder, term, address, expires_at > clock_timestamp() AS live FROM leader")
            .fetch_optional(pool)
            .await?;
        Ok(r.map(|r| Leader { holder: r.get("holder"), term: r.get("term"), address: r.get("address"), live: r.get("live") })
            .unwrap_or_default())
    }

    /// Takes office when the lease is free (or its own), renews it while it can, and steps down as soon as a
    /// renewal did not succeed in time. Runs until aborted.
    pub async fn run(self) {
        let (renew_every, try_every) = (self.inner.lease / 3, self.inner.lease / 6);
        loop {
            let held = *self.inner.held.borrow();
            let wait = match held {
                Some(h) => self.renew(h).await.unwrap_or(renew_every),
                None => {
                    self.take().await;
                    if self.leading() { renew_every } else { try_every }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One renewal; Some(wait) to try again sooner than usual.
    async fn renew(&self, h: Held) -> Option<Duration> {
        let sent = Instant::now();
        let left = h.until.saturating_duration_since(sent);
        let renewed = tokio::time::timeout(
            left,
            sqlx::query_scalar::<_, i64>(
                "UPDATE leader SET expires_at = now() + $3 * interval '1 millisecond'
                 WHERE holder = $1 AND term = $2 AND expires_at > now() RETURNING term",
            )
            .bind(&self.inner.holder)
            .bind(h.term)
            .bind(self.inner.lease.as_millis() as i64)
            .fetch_optional(&self.inner.pool),
        )
        .await;
        match renewed {
            Ok(Ok(Some(_))) => {
                self.set(Some(Held { term: h.term, until: sent + self.valid_for() }));
                None
            }
            Ok(Ok(None)) => {
                tracing::warn!(term = h.term, "leadership lost: the lease ran out in Postgres; rounds stop");
                self.set(None);
                Some(Duration::ZERO)
            }
            Ok(Err(e)) if Instant::now() < h.until => {
                tracing::warn!(term = h.term, error = %e, left = ?h.until.saturating_duration_since(Instant::now()), "cannot renew the leader lease; trying again");
                Some(Duration::from_millis(100))
            }
            other => {
                let error = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".to_string(),
                };
                tracing::warn!(term = h.term, error, "the leader lease was not renewed in time: stepping down; rounds stop");
                self.set(None);
                Some(Duration::ZERO)
            }
        }
    }

    /// One attempt to take office: free when the lease ran out, or when it is this process's own (a new term
    /// then, since its view of the old one lapsed). Writes this process's worker lease as the cluster's.
    pub(crate) async fn take(&self) {
        let sent = Instant::now();
        let taken = tokio::time::timeout(
            self.inner.lease,
            sqlx::query_scalar::<_, i64>(
                "UPDATE leader SET holder = $1, term = term + 1, address = $2,
                   expires_at = now() + $3 * interval '1 millisecond', worker_lease_ms = $4
                 WHERE expires_at <= now() OR holder = $1 RETURNING term",
            )
            .bind(&self.inner.holder)
            .bind(&self.inner.address)
            .bind(self.inner.lease.as_millis() as i64)
            .bind(self.inner.worker_lease_ms)
            .fetch_optional(&self.inner.pool),
        )
        .await;
        match taken {
            Ok(Ok(Some(term))) => {
                tracing::info!(term, address = self.inner.address, worker_lease_ms = self.inner.worker_lease_ms, "leading: this control plane took office");
                self.set(Some(Held { term, until: sent + self.valid_for() }));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot try for leadership; trying again"),
            Err(_) => tracing::debug!("no answer trying for leadership; trying again"),
        }
    }

    /// Gives the lease up (on shutdown), so that another control plane takes office at once, not after it.
    pub async fn resign(&self) {
        let held = self.inner.held.send_replace(None);
        if held.is_none() {
            return;
        }
        let resigned = sqlx::query("UPDATE leader SET expires_at = now() WHERE holder = $1 AND expires_at > now()")
            .bind(&self.inner.holder)
            .execute(&self.inner.pool);
        match tokio::time::timeout(Duration::from_secs(2), resigned).await {
            Ok(Ok(_)) => tracing::info!("leadership given up"),
            _ => tracing::warn!("could not give leadership up: another control plane takes over when the lease runs out"),
        }
    }
}
