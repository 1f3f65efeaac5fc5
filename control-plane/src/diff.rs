//! The diff between a desired and a stored state, one entry per resource, with life cycles applied.

use crate::resource::{life_cycle, spec, ResourceKey, State};
use millrace_proto::v1::{resource::Spec, ChangeAction, Field, LifeCycle, Resource, ResourceChange};

/// What an apply does to one resource, and the declarations on either side.
#[derive(Debug, Clone)]
pub struct Planned {
    pub key: ResourceKey,
    pub action: ChangeAction,
    pub reason: String,
    pub desired: Option<Resource>,
    pub stored: Option<Resource>,
}

impl Planned {
    pub fn to_proto(&self) -> ResourceChange {
        ResourceChange {
            kind: self.key.kind as i32,
            name: self.key.name.clone(),
            version: self.key.version.clone(),
            action: self.action as i32,
            reason: self.reason.clone(),
        }
    }

    /// The declaration this resource has after the apply, if any.
    pub fn resulting(&self) -> Option<&Resource> {
        match self.action {
            ChangeAction::Delete => None,
            ChangeAction::Refused => self.stored.as_ref(),
            _ => self.desired.as_ref().or(self.stored.as_ref()),
        }
    }
}

/// Diffs every resource of either state, ordered by kind, name and version.
pub fn diff(desired: &State, stored: &State) -> Vec<Planned> {
    let mut keys: Vec<&ResourceKey> = desired.keys().chain(stored.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let d = desired.get(key);
            let s = stored.get(key);
            let (action, reason) = decide(d, s);
            Planned { key: key.clone(), action, reason, desired: d.cloned(), stored: s.cloned() }
        })
        .collect()
}

fn decide(desired: Option<&Resource>, stored: Option<&Resource>) -> (ChangeAction, String) {
    match (desired, stored) {
        (None, None) => (ChangeAction::Unchanged, String::new()),
        (Some(d), None) => match life_cycle(spec(d)) {
            LifeCycle::ExternallyManaged => (
                ChangeAction::Blocked,
                format!("externally managed: declaration recorded; Millrace does not create the {}", what(spec(d))),
            ),
            _ => (ChangeAction::Create, String::new()),
        },
        (None, Some(s)) => match life_cycle(spec(s)) {
            LifeCycle::DeletionProtected => (
                ChangeAction::Blocked,
                format!("deletion protected: the plan drops it, but the declaration and the {} are kept", what(spec(s))),
            ),
            LifeCycle::ExternallyManaged => (
                ChangeAction::Delete,
                format!("externally managed: declaration forgotten; the {} is left as it is", what(spec(s))),
            ),
            _ => (ChangeAction::Delete, String::new()),
        },
        (Some(d), Some(s)) if d == s => (ChangeAction::Unchanged, String::new()),
        (Some(d), Some(s)) => {
            if life_cycle(spec(d)) == LifeCycle::ExternallyManaged {
                return (
                    ChangeAction::Blocked,
                    format!("externally managed: declaration updated; the {} is left as it is", what(spec(d))),
                );
            }
            match update(spec(d), spec(s)) {
                Ok(reason) => (ChangeAction::Update, reason),
                Err(reason) => (ChangeAction::Refused, reason),
            }
        }
    }
}

fn what(spec: &Spec) -> &'static str {
    match spec {
        Spec::Stream(_) | Spec::DeadLetterQueue(_) => "Kafka topic",
        Spec::Table(_) => "ClickHouse table",
        _ => "resource",
    }
}

/// Describes an update, or says why it cannot be made.
fn update(d: &Spec, s: &Spec) -> Result<String, String> {
    let mut notes = Vec::new();
    let topic = |notes: &mut Vec<String>, dp: Option<u32>, sp: Option<u32>, dr: Option<u64>, sr: Option<u64>| {
        let (dp, sp) = (dp.unwrap_or(1), sp.unwrap_or(1));
        if dp < sp {
            return Err(format!(
                "partitions cannot shrink ({sp} -> {dp}): Kafka cannot remove partitions; declare a new version instead"
            ));
        }
        if dp > sp {
            notes.push(format!("partitions {sp} -> {dp}"));
        }
        if dr != sr {
            notes.push(format!("retention {}s -> {}s", sr.unwrap_or(0), dr.unwrap_or(0)));
        }
        Ok(())
    };
    match (d, s) {
        (Spec::Stream(d), Spec::Stream(s)) => {
            topic(&mut notes, d.parallelism, s.parallelism, d.retention_seconds, s.retention_seconds)?;
            if d.fields != s.fields {
                notes.push("schema changed".into());
            }
        }
        (Spec::DeadLetterQueue(d), Spec::DeadLetterQueue(s)) => {
            topic(&mut notes, d.parallelism, s.parallelism, d.retention_seconds, s.retention_seconds)?;
        }
        (Spec::Table(d), Spec::Table(s)) => {
            if d.order_by != s.order_by {
                return Err(format!(
                    "ORDER BY cannot change ({} -> {}): declare a new version of the table instead",
                    s.order_by.join(", "),
                    d.order_by.join(", ")
                ));
            }
            for f in &d.fields {
                match s.fields.iter().find(|o| o.name == f.name) {
                    None => notes.push(format!("add column {}", f.name)),
                    Some(o) if !same_type(o, f) => {
                        return Err(format!(
                            "column `{}` cannot change type: declare a new version of the table instead",
                            f.name
                        ))
                    }
                    Some(_) => {}
                }
            }
            let protected = life_cycle(&Spec::Table(d.clone())) == LifeCycle::DeletionProtected;
            for o in s.fields.iter().filter(|o| !d.fields.iter().any(|f| f.name == o.name)) {
                notes.push(if protected {
                    format!("column {} kept (deletion protected)", o.name)
                } else {
                    format!("drop column {}", o.name)
                });
            }
        }
        _ => {}
    }
    if life_cycle(d) != life_cycle(s) {
        notes.push(format!("life cycle {:?} -> {:?}", life_cycle(s), life_cycle(d)));
    }
    if notes.is_empty() {
        notes.push("declaration changed".into());
    }
    Ok(notes.join("; "))
}

fn same_type(a: &Field, b: &Field) -> bool {
    a.r#type == b.r#type && a.nullable == b.nullable
}
