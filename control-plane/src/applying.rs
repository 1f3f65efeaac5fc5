//! Applies and deletes, made by the leader. Each runs in three steps: a short transaction under the apply lock
//! checks it against what is stored and records its intent (`crate::intent`); the broker and ClickHouse are
//! provisioned holding no transaction; a second short transaction checks the intent is still this one's,
//! records the result and removes the intent. An intent left by a control plane that died in between is finished
//! by the next apply, and by the next leader as soon as it takes office.

use crate::api::Api;
use crate::diff::{diff, Planned};
use crate::error::Error;
use crate::intent::{self, Intent};
use crate::plan;
use crate::resource::{life_cycle, physical_name, spec, ResourceKey, State};
use crate::store::Store;
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long workers get to stop the units of a deleted topic before the topic goes (they stop them at once).
const UNITS_STOP_WITHIN: Duration = Duration::from_millis(1000);

/// What one intent did.
struct Done {
    changes: Vec<ResourceChange>,
    planned: Vec<Planned>,
    apply_id: i64,
}

/// Longest wait between two tries to finish an interrupted apply while this control plane leads.
const FINISH_RETRY_MAX: Duration = Duration::from_secs(30);

impl Api {
    /// Validates, diffs and (unless a dry run) provisions and records a plan. A dry run takes no lock: it reads
    /// what is stored and judges the plan against it.
    pub async fn apply(&self, plan: Plan, dry_run: bool, client: &str) -> Result<ApplyPlanResponse, Error> {
        self.apply_unless(plan, dry_run, client, &AtomicBool::new(false)).await
    }

    /// The same, not begun once `gone` is set (its caller hung up while it waited its turn).
    pub async fn apply_unless(&self, plan: Plan, dry_run: bool, client: &str, gone: &AtomicBool) -> Result<ApplyPlanResponse, Error> {
        let desired = plan::validate(plan.clone())?;
        if dry_run {
            let stored = Store::load_state(self.store.pool()).await?;
            let (changes, _, _) = self.judge(&desired, &stored, true).await?;
            return Ok(ApplyPlanResponse { changes, dry_run, apply_id: 0 });
        }
        let done = self.run(Intent::Apply(plan), client, gone).await?;
        Ok(ApplyPlanResponse { changes: done.changes, dry_run, apply_id: done.apply_id })
    }

    /// Deletes one resource as its life cycle allows.
    pub async fn delete(&self, key: ResourceKey, client: &str) -> Result<ResourceChange, Error> {
        self.delete_unless(key, client, &AtomicBool::new(false)).await
    }

    pub async fn delete_unless(&self, key: ResourceKey, client: &str, gone: &AtomicBool) -> Result<ResourceChange, Error> {
        let done = self.run(Intent::Delete(key), client, gone).await?;
        Ok(done.changes.into_iter().next().unwrap_or_default())
    }

    /// One intent, after any left unfinished, under this process's apply gate; then the topics it removes.
    async fn run(&self, intent: Intent, client: &str, gone: &AtomicBool) -> Result<Done, Error> {
        let gate = self.store.apply_gate().await?;
        self.finish_interrupted().await?;
        let done = self.execute(&intent, client, None, gone).await?.expect("a new intent is made or fails");
        drop(gate);
        self.after(&intent, client, &done).await?;
        Ok(done)
    }

    /// Logs a recorded intent, tells the coordinator, and deletes the topics it removed once their units stopped.
    async fn after(&self, intent: &Intent, client: &str, done: &Done) -> Result<(), Error> {
        let changed = done.planned.iter().filter(|p| p.action != ChangeAction::Unchanged).count();
        tracing::info!(apply_id = done.apply_id, client, changed, what = intent.label(), "plan applied");
        self.coordinator.plan_applied().await;
        self.drop_topics_after_their_units(&done.planned).await
    }

    /// Finishes an intent a control plane recorded and did not finish (it died while provisioning, or lost office).
    /// Called holding the apply gate. One the cluster refuses now (judged before anything is touched) or that
    /// cannot be decoded is dropped with a warning; one that cannot be made now fails this call and stays, so that
    /// no apply overtakes it.
    async fn finish_interrupted(&self) -> Result<(), Error> {
        let mut conn = self.store.pool().acquire().await?;
        let Some(p) = intent::pending(&mut conn).await? else { return Ok(()) };
        drop(conn);
        let intent = match &p.intent {
            Ok(i) => i.clone(),
            Err(why) => return self.abandon(&p, why).await,
        };
        tracing::warn!(intent = p.id, what = intent.label(), client = p.client, term = p.term, "finishing an apply a control plane began and did not finish");
        let stored = Store::load_state(self.store.pool()).await?;
        match self.plan_intent(&intent, &stored).await {
            Err(e @ (Error::InvalidPlan(_) | Error::InvalidArgument(_) | Error::NotFound(_) | Error::FailedPrecondition(_))) => {
                return self.abandon(&p, &format!("the cluster refuses it now: {e}")).await;
            }
            Err(e) => return Err(blocked(&p, e)),
            Ok(_) => {}
        }
        let made = self.execute(&intent, &p.client, Some(p.id), &AtomicBool::new(false)).await;
        if let Err(e @ (Error::InvalidPlan(_) | Error::InvalidArgument(_) | Error::FailedPrecondition(_))) = &made {
            // The broker or ClickHouse refuses what it asks (a table made by hand with other columns): it can
            // never be finished, and would block every apply.
            return self
                .abandon(&p, &format!("{e} (what it made before it was interrupted stays, and may differ from what is declared)"))
                .await;
        }
        match made {
            Ok(Some(done)) => {
                // Its topics go in the background: deleting them takes the apply gate, held here.
                let (api, client) = (self.clone(), p.client.clone());
                tokio::spawn(async move {
                    if let Err(e) = api.after(&intent, &client, &done).await {
                        tracing::warn!(error = %e, "finished an interrupted apply, but not its topic deletions");
                    }
                });
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(blocked(&p, e)),
        }
    }

    /// Drops an unfinished intent that can never be made, saying why; only while leading.
    async fn abandon(&self, p: &intent::Pending, why: &str) -> Result<(), Error> {
        tracing::warn!(intent = p.id, client = p.client, started_at = %p.started_at, why, "an unfinished apply is dropped: it can never be made");
        let leadership = self.coordinator.leadership();
        let term = leadership.current()?;
        let mut tx = self.store.begin_locked().await?;
        intent::abandon(&mut tx, p.id).await?;
        leadership.fence(&mut tx, term).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finishes any unfinished intent whenever this process takes office, and keeps trying (backing off) while it
    /// leads and one cannot be finished yet. Runs until aborted.
    pub async fn finish_on_taking_office(self) {
        let mut terms = self.coordinator.leadership().subscribe();
        let mut wait = Duration::from_secs(1);
        loop {
            if self.coordinator.leadership().leading() {
                let finished = async {
                    let _gate = self.store.apply_gate().await?;
                    self.finish_interrupted().await
                };
                if let Err(e) = finished.await {
                    tracing::warn!(error = %e, retry_in = ?wait, "could not finish an interrupted apply yet");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        changed = terms.changed() => if changed.is_err() { return },
                    }
                    wait = (wait * 2).min(FINISH_RETRY_MAX);
                    continue;
                }
            }
            wait = Duration::from_secs(1);
            if terms.changed().await.is_err() {
                return;
            }
        }
    }

    /// Checks, provisions and records one intent. `takeover` is the id of an unfinished one this finishes (None:
    /// a new one, not begun if `gone` is set by then). Ok(None): the one to finish was finished meanwhile.
    async fn execute(&self, intent: &Intent, client: &str, takeover: Option<i64>, gone: &AtomicBool) -> Result<Option<Done>, Error> {
        let leadership = self.coordinator.leadership();
        let term = leadership.current()?;
        // Judged first, holding nothing (judging asks the broker and ClickHouse), then confirmed under the lock
        // against what is stored then.
        let mut tries = 0;
        let (stored, changes, planned, id) = loop {
            let stored = Store::load_state(self.store.pool()).await?;
            let (changes, planned) = self.plan_intent(intent, &stored).await?;
            let mut tx = self.store.begin_locked().await?;
            let pending = intent::pending(&mut tx).await?;
            if Store::load_state(&mut *tx).await? != stored {
                tries += 1;
                if tries < 3 {
                    continue;
                }
                return Err(Error::Busy("the declarations kept changing while this apply was checked: try again".into()));
            }
            let id = match (takeover, pending) {
                (None, None) if gone.load(Ordering::SeqCst) => {
                    return Err(Error::FailedPrecondition("the caller hung up before the apply began: nothing was done".into()));
                }
                (None, None) => intent::open(&mut tx, intent, client, term).await?,
                // Another control plane's, recorded since this one looked (it led then).
                (None, Some(p)) => {
                    return Err(Error::Busy(format!("an apply by {} is unfinished: try again when it finishes", p.client)));
                }
                (Some(old), Some(p)) if p.id == old => {
                    intent::take_over(&mut tx, old, term).await?;
                    old
                }
                (Some(_), _) => return Ok(None),
            };
            leadership.fence(&mut tx, term).await?;
            tx.commit().await?;
            break (stored, changes, planned, id);
        };

        // A deposed leader stops between two resources; the one that took the intent over finishes it.
        let leading = || leadership.term() == Some(term);
        if let Err(e) = self.provisioner.execute(&planned, &leading).await {
            if takeover.is_some() {
                // Finishing failed: the intent stays for the next try.
                return Err(e);
            }
            if matches!(e, Error::NotLeader(_)) {
                // Deposed midway: the intent stays, and the leader finishes it.
                return Err(Error::Unfinished(format!(
                    "the apply began, and this control plane stopped leading while it provisioned ({e}): the \
                     leading control plane finishes it; check with `millrace ls` in a few seconds"
                )));
            }
            // Nothing is recorded: its intent goes (unless another leader took it over), so that nobody finishes
            // what failed. (Should that fail too, the next apply finishes it, which is what its caller asked for.)
            let closed = async {
                let mut tx = self.store.begin_locked().await?;
                intent::close(&mut tx, id, term).await?;
                tx.commit().await.map_err(Error::from)
            };
            if let Err(c) = closed.await {
                tracing::warn!(intent = id, error = %c, "could not remove a failed apply's intent: the next apply makes it");
            }
            return Err(e);
        }

        let recorded = async {
            let mut tx = self.store.begin_locked().await?;
            leadership.fence(&mut tx, term).await?;
            if !intent::close(&mut tx, id, term).await? {
                return Err(Error::NotLeader("another control plane took the apply over".into()));
            }
            if Store::load_state(&mut *tx).await? != stored {
                return Err(Error::Internal("the declarations changed while it provisioned".into()));
            }
            let apply_id = Store::record(&mut tx, &planned, client, &self.provisioner.topic_namespace).await?;
            tx.commit().await?;
            Ok(apply_id)
        };
        match recorded.await {
            Ok(apply_id) => Ok(Some(Done { changes, planned, apply_id })),
            Err(e) => Err(Error::Unfinished(format!(
                "the apply was made but not recorded ({e}): the leading control plane finishes it (on its next apply, \
                 or on taking office); check with `millrace ls` in a few seconds, or apply again"
            ))),
        }
    }

    /// An intent's changes against what is stored, or why it cannot be made.
    async fn plan_intent(&self, intent: &Intent, stored: &State) -> Result<(Vec<ResourceChange>, Vec<Planned>), Error> {
        match intent {
            Intent::Apply(plan) => {
                let desired = plan::validate(plan.clone())?;
                let (changes, planned, refused) = self.judge(&desired, stored, false).await?;
                if !refused.is_empty() {
                    return Err(Error::FailedPrecondition(format!("the plan was not applied: {}", refused.join("; "))));
                }
                Ok((changes, planned))
            }
            Intent::Delete(key) => {
                if !stored.contains_key(key) {
                    return Err(Error::NotFound(format!("{key} is not declared")));
                }
                let users: Vec<String> =
                    plan::referrers(stored, key).into_iter().filter(|k| *k != key).map(|k| k.to_string()).collect();
                if !users.is_empty() {
                    return Err(Error::FailedPrecondition(format!("{key} is still referred to by {}: remove those first", users.join(", "))));
                }
                let mut desired = stored.clone();
                desired.remove(key);
                let planned: Vec<Planned> = diff(&desired, stored).into_iter().filter(|p| &p.key == key).collect();
                if planned[0].action == ChangeAction::Blocked {
                    return Err(Error::FailedPrecondition(format!(
                        "{key} is deletion protected: change its life_cycle in a plan before deleting it"
                    )));
                }
                Ok((vec![planned[0].to_proto()], planned))
            }
        }
    }

    /// The plan's changes against what is stored, with notes, and the refusals (each "key: reason").
    async fn judge(&self, desired: &State, stored: &State, dry_run: bool) -> Result<(Vec<ResourceChange>, Vec<Planned>, Vec<String>), Error> {
        let mut planned = diff(desired, stored);
        self.note_partition_counts(&mut planned).await;
        self.refuse_what_clickhouse_lacks(&mut planned, dry_run).await?;
        let changes: Vec<ResourceChange> = planned.iter().map(Planned::to_proto).collect();
        let refused: Vec<String> = planned
            .iter()
            .filter(|p| p.action == ChangeAction::Refused)
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect();
        if refused.is_empty() {
            // What the plan keeps (protected resources it drops) must still resolve against what it declares.
            let resulting: State =
                planned.iter().filter_map(|p| p.resulting().map(|r| (p.key.clone(), r.clone()))).collect();
            plan::check_state(&resulting)?;
        }
        Ok((changes, planned, refused))
    }

    /// Says where a stream's topic has another partition count than declared: units follow the topic, so every
    /// partition is read, but the user should know. Best effort: an unreachable broker adds no notes.
    async fn note_partition_counts(&self, planned: &mut [Planned]) {
        // Creates and updates of managed topics set the count themselves (or are refused): only the others are
        // compared, so a plan that only creates never waits on the broker here.
        let noted = |p: &Planned| match p.desired.as_ref().map(spec) {
            Some(s @ Spec::Stream(_)) => {
                life_cycle(s) == LifeCycle::ExternallyManaged || !matches!(p.action, ChangeAction::Create | ChangeAction::Update)
            }
            _ => false,
        };
        if !planned.iter().any(noted) {
            return;
        }
        let Ok(actual) = self.provisioner.kafka.topics().await else { return };
        for p in planned.iter_mut() {
            if !noted(p) {
                continue;
            }
            let Some(Spec::Stream(s)) = p.desired.as_ref().map(spec) else { continue };
            let external = life_cycle(spec(p.desired.as_ref().expect("desired"))) == LifeCycle::ExternallyManaged;
            let topic = physical_name(&Spec::Stream(s.clone()), &self.provisioner.topic_namespace);
            let declared = s.parallelism.unwrap_or(1) as usize;
            let note = match actual.get(&topic) {
                None if external => format!("topic `{topic}` does not exist yet: its units wait for it"),
                Some(&n) if n != declared => {
                    format!("topic `{topic}` has {n} partitions where {declared} are declared: all {n} are processed")
                }
                _ => continue,
            };
            p.reason = if p.reason.is_empty() { note } else { format!("{}; {note}", p.reason) };
        }
    }

    /// Refuses the table changes the ClickHouse server cannot make (an option newer than it, a Replicated engine
    /// without a keeper), naming the feature and the version that has it. A dry run without ClickHouse skips this:
    /// the apply checks it.
    async fn refuse_what_clickhouse_lacks(&self, planned: &mut [Planned], dry_run: bool) -> Result<(), Error> {
        if !crate::table::touches_tables(planned) {
            return Ok(());
        }
        match self.provisioner.clickhouse.server().await {
            Ok(server) => crate::table::refuse_what_the_server_lacks(planned, &server),
            Err(e) if dry_run => tracing::debug!(error = %e, "plan not checked against ClickHouse"),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Deletes the topics of an applied diff once the units reading them had time to stop: they were revoked when
    /// the apply rescheduled, and their workers close their consumers at once. A consumer whose topic vanishes
    /// under it fills its logs with errors on any broker, and on Tansu 0.6 crashes librdkafka (a fetch answer for
    /// the deleted topic names it by neither name nor id). The plan is recorded by then: a topic that cannot be
    /// deleted is reported, not rolled back.
    async fn drop_topics_after_their_units(&self, planned: &[Planned]) -> Result<(), Error> {
        let drops = self.provisioner.topic_drops(planned);
        if drops.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(UNITS_STOP_WITHIN).await;
        let dropped = async {
            // Under the apply gate again: a plan applied meanwhile may have declared the resource anew. Another
            // apply running is waited for (a few times), never raced.
            let mut tries = 0;
            let _gate = loop {
                match self.store.apply_gate().await {
                    Err(Error::Busy(_)) if tries < 2 => tries += 1,
                    other => break other?,
                }
            };
            // Checked against what is stored now; the deletion itself holds no transaction (this process's gate
            // keeps its own applies out, and only the leader applies: a control plane that no longer leads leaves
            // the topics, as another may have declared them again).
            if !self.coordinator.leadership().leading() {
                return Err(Error::NotLeader("this control plane stopped leading before it deleted them".into()));
            }
            let stored = Store::load_state(self.store.pool()).await?;
            let gone: Vec<&Planned> = drops.into_iter().filter(|p| !stored.contains_key(&p.key)).collect();
            self.provisioner.drop_topics(&gone).await?;
            // Their partition counts go with them: a stream declared again may have fewer partitions.
            let topics: Vec<String> = gone
                .iter()
                .filter_map(|p| p.stored.as_ref())
                .map(|r| crate::resource::physical_name(spec(r), &self.provisioner.topic_namespace))
                .collect();
            self.coordinator.forget_topics(&topics).await
        };
        dropped.await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "the plan was applied, but a topic it removes could not be deleted ({e}); it is no longer used: \
                 delete it by hand once no apply is running, if `millrace ls` does not show it declared again"
            ))
        })
    }
}

/// An unfinished apply that cannot be finished now: every apply waits for it. Says what blocks it and how to
/// abandon it.
fn blocked(p: &intent::Pending, e: Error) -> Error {
    let what = p.intent.as_ref().map(Intent::label).unwrap_or("apply");
    Error::Unfinished(format!(
        "the {what} begun by {} at {} (intent {}) is unfinished and cannot be finished now: {e}. Applies wait for it: \
         bring back what it needs and try again; to abandon it instead, run `DELETE FROM apply_intents WHERE id = {}` \
         in the control plane's database (what it made stays, undeclared)",
        p.client, p.started_at, p.id, p.id
    ))
}
