//! Uniform access to the six resource kinds: identity, life cycle, physical name.

use millrace_proto::v1::{resource::Spec, LifeCycle, Plan, Resource, ResourceKind};
use std::collections::BTreeMap;
use std::fmt;

/// Identity of a declared resource. Transforms and consumers have no version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub kind: ResourceKind,
    pub name: String,
    pub version: String,
}

impl ResourceKey {
    pub fn new(kind: ResourceKind, name: &str, version: &str) -> Self {
        Self { kind, name: name.to_string(), version: version.to_string() }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", kind_label(self.kind), self.name)?;
        if !self.version.is_empty() {
            write!(f, " version `{}`", self.version)?;
        }
        Ok(())
    }
}

/// A whole declared state: what a plan asks for, or what is stored.
pub type State = BTreeMap<ResourceKey, Resource>;

pub fn kind_label(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Unspecified => "resource",
        ResourceKind::Stream => "stream",
        ResourceKind::Table => "table",
        ResourceKind::Transform => "transform",
        ResourceKind::Consumer => "consumer",
        ResourceKind::IngestApi => "ingest API",
        ResourceKind::DeadLetterQueue => "dead letter queue",
    }
}

pub fn kind_of(spec: &Spec) -> ResourceKind {
    match spec {
        Spec::Stream(_) => ResourceKind::Stream,
        Spec::Table(_) => ResourceKind::Table,
        Spec::Transform(_) => ResourceKind::Transform,
        Spec::Consumer(_) => ResourceKind::Consumer,
        Spec::IngestApi(_) => ResourceKind::IngestApi,
        Spec::DeadLetterQueue(_) => ResourceKind::DeadLetterQueue,
    }
}

pub fn key_of(spec: &Spec) -> ResourceKey {
    let (name, version) = match spec {
        Spec::Stream(s) => (&s.name, s.version.as_str()),
        Spec::Table(t) => (&t.name, t.version.as_str()),
        Spec::Transform(t) => (&t.name, ""),
        Spec::Consumer(c) => (&c.name, ""),
        Spec::IngestApi(i) => (&i.name, i.version.as_str()),
        Spec::DeadLetterQueue(d) => (&d.name, d.version.as_str()),
    };
    ResourceKey::new(kind_of(spec), name, version)
}

/// The life cycle of resources that have one; transforms, consumers and ingest APIs are plain declarations
/// and count as fully managed.
pub fn life_cycle(spec: &Spec) -> LifeCycle {
    let raw = match spec {
        Spec::Stream(s) => s.life_cycle,
        Spec::Table(t) => t.life_cycle,
        Spec::DeadLetterQueue(d) => d.life_cycle,
        _ => LifeCycle::FullyManaged as i32,
    };
    match LifeCycle::try_from(raw) {
        Ok(LifeCycle::Unspecified) | Err(_) => LifeCycle::FullyManaged,
        Ok(l) => l,
    }
}

/// Topic name (streams, dead letter queues, with the namespace prefix) or table name; "" for the rest.
pub fn physical_name(spec: &Spec, topic_namespace: &str) -> String {
    use crate::names::physical_name as p;
    match spec {
        Spec::Stream(s) => format!("{topic_namespace}{}", p(&s.name, &s.version)),
        Spec::DeadLetterQueue(d) => format!("{topic_namespace}{}", p(&d.name, &d.version)),
        Spec::Table(t) => p(&t.name, &t.version),
        _ => String::new(),
    }
}

/// Every resource of a plan, in declaration order.
pub fn plan_specs(plan: Plan) -> Vec<Spec> {
    let mut out = Vec::new();
    out.extend(plan.streams.into_iter().map(Spec::Stream));
    out.extend(plan.tables.into_iter().map(Spec::Table));
    out.extend(plan.dead_letter_queues.into_iter().map(Spec::DeadLetterQueue));
    out.extend(plan.transforms.into_iter().map(Spec::Transform));
    out.extend(plan.consumers.into_iter().map(Spec::Consumer));
    out.extend(plan.ingest_apis.into_iter().map(Spec::IngestApi));
    out
}

pub fn spec(r: &Resource) -> &Spec {
    r.spec.as_ref().expect("stored and validated resources always carry a spec")
}
