//! Sending each watching worker its set.

use super::{Coordinator, Watcher};
use crate::error::Error;
use millrace_proto::v1::{Assignment, AssignmentSet, WorkUnit};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

impl Coordinator {
    /// Sends each watching worker its set if its units or epochs changed; ends the streams of dead workers.
    ///
    /// Only the watchers present when the sets are read are served: a stream opened meanwhile (a worker
    /// reconnecting) would otherwise be judged by rows never read for it, and an empty set stops every unit it
    /// runs. It has been sent nothing yet, so the next round sends it its whole set (its own `WatchAssignments`
    /// asks for one).
    pub(super) async fn publish(&self, units: &BTreeMap<String, WorkUnit>) -> Result<(), Error> {
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
            "SELECT unit_id, worker_id, epoch, committed_offset FROM assignments WHERE worker_id = ANY($1) ORDER BY unit_id",
        )
        .bind(&watching)
        .fetch_all(pool)
        .await?;
        let mut sets: HashMap<String, Vec<Assignment>> = HashMap::new();
        for r in rows {
            let unit_id: String = r.get("unit_id");
            let Some(unit) = units.get(&unit_id) else { continue };
            let worker: String = r.get("worker_id");
            let epoch: i64 = r.get("epoch");
            sets.entry(worker).or_default().push(Assignment {
                unit: Some(unit.clone()),
                epoch: epoch as u64,
                committed_offset: r.get("committed_offset"),
            });
        }
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
        Assignment { unit: Some(WorkUnit { unit_id: unit_id.into(), ..Default::default() }), epoch, committed_offset: 7 }
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
