//! Makes the physical resources (Kafka topics, ClickHouse tables) match a diff.

pub mod clickhouse;
pub mod kafka;

use crate::diff::Planned;
use crate::error::Error;
use crate::resource::{life_cycle, physical_name, spec};
use millrace_proto::v1::{resource::Spec, ChangeAction, LifeCycle};

#[derive(Clone)]
pub struct Provisioner {
    pub kafka: kafka::Kafka,
    pub clickhouse: clickhouse::ClickHouse,
    pub topic_namespace: String,
}

/// Which physical resource one planned change touches.
enum Touch<'a> {
    None,
    Ensure(&'a Spec),
    Drop(&'a Spec),
}

fn touch(p: &Planned) -> Touch<'_> {
    match p.action {
        ChangeAction::Create | ChangeAction::Update => match p.desired.as_ref().map(spec) {
            Some(s) if life_cycle(s) != LifeCycle::ExternallyManaged => Touch::Ensure(s),
            _ => Touch::None,
        },
        ChangeAction::Delete => match p.stored.as_ref().map(spec) {
            Some(s) if life_cycle(s) == LifeCycle::FullyManaged => Touch::Drop(s),
            _ => Touch::None,
        },
        _ => Touch::None,
    }
}

fn is_table(s: &Spec) -> bool {
    matches!(s, Spec::Table(_))
}

fn is_topic(s: &Spec) -> bool {
    matches!(s, Spec::Stream(_) | Spec::DeadLetterQueue(_))
}

impl Provisioner {
    /// Applies the physical side of a diff: first every create and update, then the deletes of tables. Topics
    /// are deleted later, by `drop_topics`, once the units reading them were revoked. Both dependencies are
    /// pinged first, so an outage fails the apply before anything is touched. Stops between two resources once
    /// `leading` says this control plane no longer leads (the new leader finishes the apply).
    pub async fn execute(&self, planned: &[Planned], leading: &(dyn Fn() -> bool + Sync)) -> Result<(), Error> {
        let stop = || Error::NotLeader("this control plane stopped provisioning: it no longer leads, and the leader finishes the apply".into());
        let touches: Vec<(Touch, &Planned)> = planned.iter().map(|p| (touch(p), p)).collect();
        let uses = |f: fn(&Spec) -> bool| {
            touches.iter().any(|(t, _)| matches!(t, Touch::Ensure(s) | Touch::Drop(s) if f(s)))
        };
        if uses(is_topic) {
            self.kafka.ping().await?;
        }
        if uses(is_table) {
            self.clickhouse.ping().await?;
        }
        for (t, p) in &touches {
            if let Touch::Ensure(s) = t {
                if !leading() {
                    return Err(stop());
                }
                self.ensure(s, p).await?;
            }
        }
        for (t, _) in &touches {
            if let Touch::Drop(s) = t {
                if !is_topic(s) {
                    if !leading() {
                        return Err(stop());
                    }
                    self.drop(s).await?;
                }
            }
        }
        Ok(())
    }

    /// The changes of a diff that delete a topic.
    pub fn topic_drops<'a>(&self, planned: &'a [Planned]) -> Vec<&'a Planned> {
        planned.iter().filter(|p| matches!(touch(p), Touch::Drop(s) if is_topic(s))).collect()
    }

    /// Deletes the topics of these changes (from `topic_drops`); the first failure names the topic.
    pub async fn drop_topics(&self, drops: &[&Planned]) -> Result<(), Error> {
        for p in drops {
            if let Touch::Drop(s) = touch(p) {
                self.drop(s).await?;
            }
        }
        Ok(())
    }

    async fn ensure(&self, s: &Spec, p: &Planned) -> Result<(), Error> {
        let name = physical_name(s, &self.topic_namespace);
        let retention_ms = |r: Option<u64>| r.unwrap_or(crate::plan::DEFAULT_RETENTION_SECONDS) as i64 * 1000;
        match s {
            Spec::Stream(st) => self.kafka.ensure_topic(&name, st.parallelism.unwrap_or(1), retention_ms(st.retention_seconds)).await,
            Spec::DeadLetterQueue(d) => self.kafka.ensure_topic(&name, d.parallelism.unwrap_or(1), retention_ms(d.retention_seconds)).await,
            Spec::Table(t) => {
                // Columns the plan dropped go only when the table is fully managed.
                let drop: Vec<String> = match p.stored.as_ref().map(spec) {
                    Some(Spec::Table(old)) if life_cycle(s) == LifeCycle::FullyManaged => old
                        .fields
                        .iter()
                        .filter(|o| !t.fields.iter().any(|f| f.name == o.name))
                        .map(|o| o.name.clone())
                        .collect(),
                    _ => Vec::new(),
                };
                let stored = match p.stored.as_ref().map(spec) {
                    Some(Spec::Table(old)) => Some(old),
                    _ => None,
                };
                // Known already: the apply checked the plan against the server before it got here.
                let server = self.clickhouse.server().await?;
                self.clickhouse.ensure_table(&name, t, stored, &drop, &server).await
            }
            _ => Ok(()),
        }
    }

    async fn drop(&self, s: &Spec) -> Result<(), Error> {
        let name = physical_name(s, &self.topic_namespace);
        match s {
            Spec::Stream(_) | Spec::DeadLetterQueue(_) => self.kafka.delete_topic(&name).await,
            Spec::Table(t) => self.clickhouse.drop_table(&name, t).await,
            _ => Ok(()),
        }
    }
}
