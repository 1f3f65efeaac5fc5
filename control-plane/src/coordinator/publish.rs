//! Sending each watching worker its set, as stored in Postgres: every unit's row holds its placement, epoch,
//! committed offset and definition (the encoded `WorkUnit`), so any control plane, leader or not, sends exactly
//! what the leader's last round decided, never a definition it computed itself beside an epoch it read.

use super::{Coordinator, Watcher};
use crate::error::Error;
use millrace_proto::v1::{Assignment, AssignmentSet, WorkUnit};
use prost::Message;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

impl Coordinator {
    /// Sends each watching worker its stored set if its units or epochs changed; ends the streams of dead workers.
    ///
    /// Only the watchers present when the sets are read are served: a stream opened meanwhile (a worker
    /// reconnecting) would otherwise be judged by rows never read for it, and an empty set stops every unit it
    /// runs. It has been sent nothing yet, so the next publish sends it its whole set (its own `WatchAssignments`
    /// asks for one).
    pub(super) async fn publish(&self) -> Result<(), Error> {
        let _one = self.inner.publishing.lock().await;
        let watching: Vec<String> = self.inner.watchers.lock().expect("watchers lock").keys().cloned().collect();
        if watching.is_empty() {
            return Ok(());
        }
        let pool = self.inner.store.pool();
        // Liveness as of now, not as of the round: a worker that registered while the round ran is live.
        let live: Vec<String> =
            sqlx::query_scalar("SELECT worker_id FROM workers WHERE worker_id = ANY($1) AND lease_expires_at > now()")
                .bind(&watching)
                .fetch_all(pool)
                .await?;
        let rows = sqlx::query(
            "SELECT unit_id, worker_id, epoch, committed_offset, definition, provenance, source_incarnation FROM assignments
             WHERE worker_id = ANY($1) AND handover_to IS NULL ORDER BY unit_id",
        )
        .bind(&watching)
        .fetch_all(pool)
        .await?;
        let mut sets: HashMap<String, Vec<Assignment>> = HashMap::new();
        // A worker one of whose rows cannot be sent keeps the set it has: a set without that unit would stop it.
        let mut unsendable: Vec<String> = Vec::new();
        for r in rows {
            let unit_id: String = r.get("unit_id");
            let worker: String = r.get("worker_id");
            let definition: Vec<u8> = r.get("definition");
            let unit = match WorkUnit::decode(definition.as_slice()) {
                Ok(u) if !definition.is_empty() && u.unit_id == unit_id => u,
                // Rows from before definitions were stored have none until the leader's next round writes it.
                _ => {
                    tracing::debug!(unit = unit_id, worker, "a stored unit has no readable definition yet; its worker keeps its set");
                    unsendable.push(worker);
                    continue;
                }
            };
            let epoch: i64 = r.get("epoch");
            sets.entry(worker).or_default().push(Assignment {
                unit: Some(unit),
                epoch: epoch as u64,
                committed_offset: r.get("committed_offset"),
                provenance: r.get("provenance"),
                source_incarnation: r.get::<i64, _>("source_incarnation").max(0) as u64,
            });
        }
        let watching: Vec<String> = watching.into_iter().filter(|w| !unsendable.contains(w)).collect();
        let mut watchers = self.inner.watchers.lock().expect("watchers lock");
        deliver(&mut watchers, sets, &watching, &live, &self.inner.version);
        Ok(())
    }
}

/// Sends the sets read for `watching` (the watchers when the read began) to those of them still watching, when
/// a set differs from the one last sent, and ends the streams of those among them not `live`. Watchers not in
/// `watching` are left alone: nothing was read for them.
fn deliver(
    watchers: &mut HashMap<String, Watcher>,
    mut sets: HashMap<String, Vec<Assignment>>,
    watching: &[String],
    live: &[String],
    version: &AtomicU64,
) {
    watchers.retain(|w, _| !watching.contains(w) || live.contains(w));
    for (worker, watcher) in watchers.iter_mut() {
        if !watching.contains(worker) {
            continue;
        }
        let assignments = sets.remove(worker).unwrap_or_default();
        let key: Vec<(String, u64)> =
            assignments.iter().map(|a| (a.unit.as_ref().map(|u| u.unit_id.clone()).unwrap_or_default(), a.epoch)).collect();
        if watcher.last.as_ref() == Some(&key) {
            continue;
        }
        let version = version.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = watcher.tx.send(Some(AssignmentSet { version, assignments }));
        watcher.last = Some(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn watcher() -> (Watcher, watch::Receiver<Option<AssignmentSet>>) {
        let (tx, rx) = watch::channel(None);
        (Watcher { tx, last: None }, rx)
    }

    fn assignment(unit_id: &str, epoch: u64) -> Assignment {
        Assignment { unit: Some(WorkUnit { unit_id: unit_id.into(), ..Default::default() }), epoch, committed_offset: 7, ..Default::default() }
    }

    fn units(rx: &watch::Receiver<Option<AssignmentSet>>) -> Option<Vec<(String, u64)>> {
        rx.borrow().as_ref().map(|s| s.assignments.iter().map(|a| (a.unit.as_ref().unwrap().unit_id.clone(), a.epoch)).collect())
    }

    #[test]
    fn a_worker_reconnecting_during_a_publish_is_never_sent_a_set_computed_without_it() {
        let mut watchers = HashMap::new();
        let (a, rx_a) = watcher();
        watchers.insert("a".to_string(), a);
        let watching = vec!["a".to_string()];
        // While the sets of `watching` are read, worker b, which holds units, opens a new stream.
        let (b, rx_b) = watcher();
        watchers.insert("b".to_string(), b);
        let sets = HashMap::from([("a".to_string(), vec![assignment("u/0", 3)])]);
        let live = vec!["a".to_string(), "b".to_string()];
        deliver(&mut watchers, sets, &watching, &live, &AtomicU64::new(0));
        assert_eq!(units(&rx_a), Some(vec![("u/0".to_string(), 3)]));
        assert_eq!(units(&rx_b), None, "b was sent a set its units were never read for");
        assert!(!rx_b.has_changed().expect("b's stream stays open"), "b was sent something");
        assert!(watchers["b"].last.is_none(), "b's own registration must still send it its whole set");
    }

    #[test]
    fn a_worker_registered_after_the_rounds_liveness_read_keeps_its_stream() {
        let mut watchers = HashMap::new();
        // c registered and opened its stream after the round read which workers are live.
        let (c, rx_c) = watcher();
        watchers.insert("c".to_string(), c);
        let (dead, rx_dead) = watcher();
        watchers.insert("dead".to_string(), dead);
        let watching = vec!["dead".to_string()];
        deliver(&mut watchers, HashMap::new(), &watching, &[], &AtomicU64::new(0));
        assert!(rx_c.has_changed().is_ok(), "c's stream was ended");
        assert!(rx_dead.has_changed().is_err(), "a dead worker's stream stays open");
    }
}
