//! Worker sessions. `Register` answers a random secret and keeps only its SHA-256; `Heartbeat`,
//! `WatchAssignments`, `ReportProgress` and `Deregister` must send the secret, so a worker id and generation read
//! from `ListWorkers` cannot move a worker's offsets, renew its lease or end it. A retried registration answered
//! again gets a new secret (the first answer was lost), and the old one stops working.

use super::{lease_lost, Coordinator};
use crate::error::Error;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new session secret: 256 bits from the OS's generator, as hex.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Coordinator {
    /// Refuses a call whose session is not the worker's (PERMISSION_DENIED); a worker that is gone is told to
    /// register again.
    pub(super) async fn check_session(&self, worker_id: &str, session: &str) -> Result<(), Error> {
        let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT session_hash FROM workers WHERE worker_id = $1")
            .bind(worker_id)
            .fetch_optional(self.inner.store.pool())
            .await?;
        match stored {
            // Gone, or registered before sessions existed (or by a worker that sends none): it registers again
            // at once, rather than running its units a whole lease with every commit refused.
            None | Some(None) => Err(lease_lost(worker_id)),
            Some(Some(_)) if session.is_empty() => Err(lease_lost(worker_id)),
            Some(Some(h)) if bool::from(h.as_slice().ct_eq(hash(session).as_slice())) => Ok(()),
            Some(_) => {
                tracing::warn!(worker_id, "a coordinator call with a session that is not the worker's was refused");
                Err(Error::PermissionDenied(format!(
                    "this call's session is not worker {worker_id}'s: a worker sends the session its Register answered (register again)"
                )))
            }
        }
    }
}
