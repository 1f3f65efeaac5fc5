//! The diff between a desired and a stored state, one entry per resource, with life cycles applied.

use crate::resource::{life_cycle, spec, ResourceKey, State};
use millrace_proto::v1::{resource::Spec, ChangeAction, Field, FunctionRef, LifeCycle, Resource, ResourceChange, ResourceRef};

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
            notes.extend(field_changes(&d.fields, &s.fields));
        }
        (Spec::DeadLetterQueue(d), Spec::DeadLetterQueue(s)) => {
            topic(&mut notes, d.parallelism, s.parallelism, d.retention_seconds, s.retention_seconds)?;
        }
        (Spec::Table(d), Spec::Table(s)) => {
            // Engine, ORDER BY and the other options: what ClickHouse can alter in place, or why not.
            notes.extend(crate::table::changes::option_changes(d, s)?);
            for f in &d.fields {
                match s.fields.iter().find(|o| o.name == f.name) {
                    None => notes.push(format!("add column {}", f.name)),
                    Some(o) if !same_column(o, f) => {
                        return Err(format!(
                            "column `{}` cannot change type: declare a new version of the table instead",
                            f.name
                        ))
                    }
                    Some(o) => notes.extend(crate::table::columns::attribute_changes(f, o)?),
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
        (Spec::Transform(d), Spec::Transform(s)) => {
            unit_changes(&mut notes, (&d.source, &s.source), (&d.function, &s.function), (&d.dead_letter_queue, &s.dead_letter_queue));
            if d.destination != s.destination {
                notes.push(format!(
                    "destination {} -> {}: its units restart and write only to the new one",
                    shown(s.destination.as_ref()),
                    shown(d.destination.as_ref())
                ));
            }
            if d.routes != s.routes {
                let list = |r: &[ResourceRef]| r.iter().map(|r| shown(Some(r))).collect::<Vec<_>>().join(", ");
                notes.push(format!("routes [{}] -> [{}]: its units restart", list(&s.routes), list(&d.routes)));
            }
        }
        (Spec::IngestApi(d), Spec::IngestApi(s)) if d.path != s.path => {
            let route = |a: &millrace_proto::v1::IngestApi| match (a.path.is_empty(), a.version.is_empty()) {
                (false, _) => format!("/ingest/{}", a.path),
                (true, true) => format!("/ingest/{}", a.name),
                (true, false) => format!("/ingest/{}/{}", a.name, a.version),
            };
            notes.push(format!("served at {} instead of {}: the old path stops answering", route(d), route(s)));
        }
        (Spec::Consumer(d), Spec::Consumer(s)) => {
            unit_changes(&mut notes, (&d.source, &s.source), (&d.function, &s.function), (&d.dead_letter_queue, &s.dead_letter_queue));
        }
        _ => {}
    }
    if metadata(d) != metadata(s) {
        notes.push("metadata changed (nothing physical)".into());
    }
    if life_cycle(d) != life_cycle(s) {
        notes.push(format!("life cycle {:?} -> {:?}", life_cycle(s), life_cycle(d)));
    }
    if notes.is_empty() {
        notes.push("declaration changed".into());
    }
    Ok(notes.join("; "))
}

fn metadata(s: &Spec) -> Option<&std::collections::HashMap<String, String>> {
    match s {
        Spec::Stream(x) => Some(&x.metadata),
        Spec::Table(x) => Some(&x.metadata),
        Spec::DeadLetterQueue(x) => Some(&x.metadata),
        Spec::Transform(x) => Some(&x.metadata),
        Spec::Consumer(x) => Some(&x.metadata),
        Spec::IngestApi(x) => Some(&x.metadata),
    }
}

type Pair<'a, T> = (&'a T, &'a T);

/// What a changed transform or consumer does to its running units (each pair is desired, stored).
fn unit_changes(
    notes: &mut Vec<String>,
    source: Pair<Option<ResourceRef>>,
    function: Pair<Option<FunctionRef>>,
    dlq: Pair<Option<ResourceRef>>,
) {
    if source.0 != source.1 {
        notes.push(format!(
            "source {} -> {}: its units restart at the beginning of the new source",
            shown(source.1.as_ref()),
            shown(source.0.as_ref())
        ));
    }
    if function.0 != function.1 {
        let f = |f: &Option<FunctionRef>| f.as_ref().map(|f| format!("{}:{}", f.runtime, f.name)).unwrap_or_default();
        notes.push(format!("function {} -> {}: its units restart", f(function.1), f(function.0)));
    }
    if dlq.0 != dlq.1 {
        notes.push(format!("dead letter queue {} -> {}: its units restart", shown(dlq.1.as_ref()), shown(dlq.0.as_ref())));
    }
}

fn shown(r: Option<&ResourceRef>) -> String {
    match r {
        None => "(none)".into(),
        Some(r) if r.version.is_empty() => r.name.clone(),
        Some(r) => format!("{}@{}", r.name, r.version),
    }
}

/// A stream's schema change, field by field: added, dropped, retyped, keyed or not.
fn field_changes(desired: &[Field], stored: &[Field]) -> Vec<String> {
    let mut notes = Vec::new();
    for f in desired {
        match stored.iter().find(|o| o.name == f.name) {
            None => notes.push(format!("add field {} {}", f.name, type_name(f))),
            Some(o) => {
                if !same_type(o, f) {
                    notes.push(format!("field {}: {} -> {}", f.name, type_name(o), type_name(f)));
                }
                if o.key != f.key {
                    notes.push(format!("field {}: {}", f.name, if f.key { "now part of the key" } else { "no longer part of the key" }));
                }
                let may_omit = |x: &Field| !x.default_expression.is_empty() || crate::types::column::is_computed(x);
                if may_omit(o) != may_omit(f) {
                    notes.push(format!("field {}: records {}", f.name, if may_omit(f) { "may now leave it out" } else { "must now carry it" }));
                }
            }
        }
    }
    for o in stored.iter().filter(|o| !desired.iter().any(|f| f.name == o.name)) {
        notes.push(format!("drop field {}", o.name));
    }
    if notes.is_empty() && desired != stored {
        notes.push("field order changed".into());
    }
    notes
}

fn type_name(f: &Field) -> String {
    let base = f.r#type.as_ref().map(kind_name).unwrap_or_else(|| "?".into());
    if f.nullable {
        format!("optional {base}")
    } else {
        base
    }
}

fn kind_name(t: &millrace_proto::v1::FieldType) -> String {
    use millrace_proto::v1::field_type::Kind;
    match &t.kind {
        Some(Kind::Scalar(s)) => millrace_proto::v1::ScalarType::try_from(*s)
            .map(|s| s.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "?".into()),
        Some(Kind::Decimal(d)) => format!("decimal({}, {})", d.precision, d.scale),
        Some(Kind::Enumeration(e)) => {
            let members: Vec<String> = e.members.iter().map(|m| format!("{}={}", m.label, m.number)).collect();
            format!("enum({})", members.join(", "))
        }
        Some(Kind::Datetime64(d)) => format!("datetime64({})", d.precision),
        Some(Kind::FixedString(f)) => format!("fixed string({})", f.size),
        Some(Kind::Map(m)) => format!(
            "map of {} to {}",
            m.key.as_deref().map(kind_name).unwrap_or_else(|| "?".into()),
            m.value.as_deref().map(kind_name).unwrap_or_else(|| "?".into())
        ),
        Some(Kind::Json(_)) => "JSON object".into(),
        Some(Kind::Array(inner)) => format!("list of {}", kind_name(inner)),
        Some(Kind::Optional(inner)) => format!("optional {}", kind_name(inner)),
        Some(Kind::Record(r)) => {
            let fields: Vec<String> = r.fields.iter().map(|f| format!("{} {}", f.name, type_name(f))).collect();
            format!("record {{{}}}", fields.join(", "))
        }
        None => "?".into(),
    }
}

/// The same ClickHouse column (an enum whose members were only reordered, or which now also takes labels, is).
fn same_column(a: &Field, b: &Field) -> bool {
    // LowCardinality is a storage hint: adding or removing it is no type change (existing columns are kept).
    let plain = |f: &Field| Field { low_cardinality: false, ..f.clone() };
    match (crate::types::ch_column_type(&plain(a)), crate::types::ch_column_type(&plain(b))) {
        (Ok(x), Ok(y)) => x == y,
        _ => same_type(a, b),
    }
}

fn same_type(a: &Field, b: &Field) -> bool {
    a.r#type == b.r#type && a.nullable == b.nullable
}
