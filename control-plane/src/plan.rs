//! Validation of a declared plan: names, types, references, cycles. A valid plan becomes a normalised
//! [`State`] (defaults filled in), so that comparing it with the stored state is a plain equality.

use crate::names::{is_valid_function_name, is_valid_name, is_valid_resource_name, is_valid_version};
use crate::resource::{key_of, physical_name, plan_specs, spec, ResourceKey, State};
use crate::types::validate_fields;
use millrace_proto::v1::{resource::Spec, LifeCycle, Plan, Resource, ResourceKind, ResourceRef};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

pub const DEFAULT_RETENTION_SECONDS: u64 = 7 * 24 * 3600;
pub const DEFAULT_RUNTIME: &str = "default";
/// The dead letter queue a plan gains when one of its transforms or consumers has none of its own and its source
/// stream names none either: nothing that fails is ever dropped. Deletion protected, so dead letters outlive the
/// transforms that wrote them.
pub const DEFAULT_DEAD_LETTER_QUEUE: &str = "millrace_dead_letters";
/// Kafka's limit on topic names, less room for a namespace prefix.
const MAX_PHYSICAL_NAME: usize = 200;
/// The largest insert batch a table may ask for: a sync unit holds one batch (and reads the next) in memory.
pub const MAX_SYNC_BYTES: u64 = 256 << 20;
/// The most rows of one insert: below ClickHouse's `max_insert_block_size` (1,048,576), so an insert is one block.
pub const MAX_SYNC_ROWS: u32 = 1_000_000;

/// The most streams one multi-transform may route to: each of its units carries them all.
pub const MAX_ROUTES: usize = 256;

/// Why a plan is refused: which resource, which of its fields, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub resource: String,
    pub field: String,
    pub reason: String,
}

impl std::error::Error for PlanError {}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`: {}", self.resource, self.field, self.reason)
    }
}

fn fail(resource: &impl fmt::Display, field: &str, reason: impl Into<String>) -> PlanError {
    PlanError { resource: resource.to_string(), field: field.to_string(), reason: reason.into() }
}

/// Validates and normalises a whole plan.
pub fn validate(plan: Plan) -> Result<State, PlanError> {
    let mut state = State::new();
    for spec in plan_specs(plan) {
        let spec = normalise(spec)?;
        let key = key_of(&spec);
        if state.insert(key.clone(), Resource { spec: Some(spec) }).is_some() {
            return Err(fail(&key, "name", "declared twice"));
        }
    }
    add_default_dead_letter_queue(&mut state);
    check_state(&state)?;
    Ok(state)
}

/// Declares the default dead letter queue when a transform or consumer would otherwise have none. A plan may
/// declare it itself (to set its parallelism or retention); then that declaration stands.
fn add_default_dead_letter_queue(state: &mut State) {
    let has_dlq = |source: Option<&ResourceRef>, own: Option<&ResourceRef>| {
        own.is_some()
            || source.is_some_and(|s| {
                matches!(state.get(&ResourceKey::new(ResourceKind::Stream, &s.name, &s.version)).map(spec),
                    Some(Spec::Stream(st)) if st.dead_letter_queue.is_some())
            })
    };
    let needed = state.values().any(|r| match spec(r) {
        Spec::Transform(t) => !has_dlq(t.source.as_ref(), t.dead_letter_queue.as_ref()),
        Spec::Consumer(c) => !has_dlq(c.source.as_ref(), c.dead_letter_queue.as_ref()),
        // A table sync sends the rows ClickHouse refuses to its stream's dead letter queue.
        Spec::Stream(s) => s.destination.is_some() && s.dead_letter_queue.is_none(),
        _ => false,
    });
    let key = ResourceKey::new(ResourceKind::DeadLetterQueue, DEFAULT_DEAD_LETTER_QUEUE, "");
    if needed && !state.contains_key(&key) {
        let dlq = millrace_proto::v1::DeadLetterQueue {
            name: DEFAULT_DEAD_LETTER_QUEUE.into(),
            parallelism: Some(1),
            retention_seconds: Some(DEFAULT_RETENTION_SECONDS),
            life_cycle: LifeCycle::DeletionProtected as i32,
            ..Default::default()
        };
        state.insert(key, Resource { spec: Some(Spec::DeadLetterQueue(dlq)) });
    }
}

/// Checks a resource on its own and fills in defaults.
fn normalise(mut spec: Spec) -> Result<Spec, PlanError> {
    let key = key_of(&spec);
    // A name that fails here is shown in Debug form, so that quotes or control characters stay visible.
    let shown = ResourceKey::new(key.kind, &format!("{:?}", key.name), &key.version);
    if !is_valid_resource_name(&key.name) {
        return Err(fail(&shown, "name", "names must match [A-Za-z_][A-Za-z0-9_-]{0,127}"));
    }
    if !key.version.is_empty() && !is_valid_version(&key.version) {
        return Err(fail(&key, "version", "versions must match [0-9A-Za-z_.]{1,32}"));
    }
    let physical = crate::names::physical_name(&key.name, &key.version);
    if physical.len() > MAX_PHYSICAL_NAME {
        return Err(fail(&key, "name", format!("name and version together exceed {MAX_PHYSICAL_NAME} characters")));
    }
    let check_fields = |fields: &[millrace_proto::v1::Field]| {
        validate_fields(fields).map_err(|e| fail(&key, &format!("fields.{}", e.field), e.reason))
    };
    let check_lc = |lc: i32| match LifeCycle::try_from(lc) {
        Ok(LifeCycle::Unspecified) => Ok(LifeCycle::FullyManaged as i32),
        Ok(l) => Ok(l as i32),
        Err(_) => Err(fail(&key, "life_cycle", format!("unknown life cycle {lc}"))),
    };
    match &mut spec {
        Spec::Stream(s) => {
            check_fields(&s.fields)?;
            s.parallelism = Some(check_parallelism(&key, s.parallelism)?);
            s.retention_seconds = Some(check_retention(&key, s.retention_seconds)?);
            s.life_cycle = check_lc(s.life_cycle)?;
        }
        Spec::DeadLetterQueue(d) => {
            d.parallelism = Some(check_parallelism(&key, d.parallelism)?);
            d.retention_seconds = Some(check_retention(&key, d.retention_seconds)?);
            d.life_cycle = check_lc(d.life_cycle)?;
        }
        Spec::Table(t) => {
            check_fields(&t.fields)?;
            t.life_cycle = check_lc(t.life_cycle)?;
            // Columns, ORDER BY, engine and options: crate::table::options.
            crate::table::options::normalise(&key, t)?;
        }
        Spec::Transform(t) => {
            require_ref(&key, "source", t.source.as_ref())?;
            // A multi-transform names its routes instead of one destination.
            match (&t.destination, t.routes.is_empty()) {
                (Some(_), false) => return Err(fail(&key, "routes", "a transform has a destination or routes (a multi-transform), not both")),
                (None, false) => {
                    if t.routes.len() > MAX_ROUTES {
                        return Err(fail(&key, "routes", format!("{} routes; at most {MAX_ROUTES}", t.routes.len())));
                    }
                    let mut seen = HashSet::new();
                    for r in &t.routes {
                        require_ref(&key, "routes", Some(r))?;
                        if !seen.insert((&r.name, &r.version)) {
                            return Err(fail(&key, "routes", format!("{} is listed twice", r.name)));
                        }
                    }
                }
                _ => require_ref(&key, "destination", t.destination.as_ref())?,
            }
            normalise_function(&key, &mut t.function)?;
        }
        Spec::Consumer(c) => {
            require_ref(&key, "source", c.source.as_ref())?;
            normalise_function(&key, &mut c.function)?;
        }
        Spec::IngestApi(i) => {
            require_ref(&key, "destination", i.destination.as_ref())?;
            if !i.path.is_empty() {
                i.path = crate::ingest_paths::normalise(&i.path).map_err(|e| fail(&key, "path", e))?;
            }
        }
    }
    Ok(spec)
}

fn check_parallelism(key: &ResourceKey, p: Option<u32>) -> Result<u32, PlanError> {
    match p {
        None => Ok(1),
        Some(0) => Err(fail(key, "parallelism", "parallelism must be at least 1")),
        Some(n) if n > 10_000 => Err(fail(key, "parallelism", "parallelism above 10000 is refused")),
        Some(n) => Ok(n),
    }
}

fn check_retention(key: &ResourceKey, r: Option<u64>) -> Result<u64, PlanError> {
    match r {
        None => Ok(DEFAULT_RETENTION_SECONDS),
        Some(0) => Err(fail(key, "retention_seconds", "retention must be at least 1 second")),
        // retention.ms must fit in an i64.
        Some(s) if s > (i64::MAX as u64) / 1000 => Err(fail(key, "retention_seconds", "retention is too large")),
        Some(s) => Ok(s),
    }
}

fn require_ref(key: &ResourceKey, field: &str, r: Option<&ResourceRef>) -> Result<(), PlanError> {
    match r {
        Some(r) if !r.name.is_empty() => Ok(()),
        _ => Err(fail(key, field, "required")),
    }
}

fn normalise_function(key: &ResourceKey, f: &mut Option<millrace_proto::v1::FunctionRef>) -> Result<(), PlanError> {
    let f = f.as_mut().ok_or_else(|| fail(key, "function", "required"))?;
    if !is_valid_function_name(&f.name) {
        return Err(fail(key, "function.name", "function names must be 1-256 characters of [A-Za-z0-9_.:-]"));
    }
    if f.runtime.is_empty() {
        f.runtime = DEFAULT_RUNTIME.to_string();
    } else if !is_valid_name(&f.runtime) {
        return Err(fail(key, "function.runtime", "runtime names must match [A-Za-z_][A-Za-z0-9_]{0,127}"));
    }
    Ok(())
}

/// Checks what holds between resources: references resolve, physical names are unique, a stream's
/// destination table fits its fields, transforms form no cycle. Run on a plan and on the state an apply
/// would leave.
pub fn check_state(state: &State) -> Result<(), PlanError> {
    let mut physical: HashMap<(bool, String), &ResourceKey> = HashMap::new();
    for (key, r) in state {
        let mut name = physical_name(spec(r), "");
        if name.is_empty() {
            continue;
        }
        let is_table = key.kind == ResourceKind::Table;
        // A table's name is unique within its database ("" = the control plane's).
        if let Spec::Table(t) = spec(r) {
            if !t.database.is_empty() {
                name = format!("{}.{name}", t.database);
            }
        }
        if let Some(other) = physical.insert((is_table, name.clone()), key) {
            let what = if is_table { "table" } else { "topic" };
            return Err(fail(key, "name", format!("its {what} name `{name}` is also {other}'s")));
        }
    }
    check_function_names(state)?;
    crate::ingest_paths::check(state)?;
    let resolve = |from: &ResourceKey, field: &str, kind: ResourceKind, r: &ResourceRef| {
        let target = ResourceKey::new(kind, &r.name, &r.version);
        if state.contains_key(&target) {
            Ok(())
        } else {
            Err(fail(from, field, format!("refers to {target}, which is not declared")))
        }
    };
    for (key, r) in state {
        match spec(r) {
            Spec::Stream(s) => {
                if let Some(d) = &s.destination {
                    resolve(key, "destination", ResourceKind::Table, d)?;
                    check_destination_table(state, key, &s.fields, d)?;
                }
                if let Some(d) = &s.dead_letter_queue {
                    resolve(key, "dead_letter_queue", ResourceKind::DeadLetterQueue, d)?;
                }
            }
            Spec::Transform(t) => {
                check_source(state, key, t.source.as_ref(), t.dead_letter_queue.as_ref())?;
                if t.routes.is_empty() {
                    resolve(key, "destination", ResourceKind::Stream, t.destination.as_ref().unwrap_or(&ResourceRef::default()))?;
                }
                for r in &t.routes {
                    resolve(key, "routes", ResourceKind::Stream, r)?;
                }
                if let Some(d) = &t.dead_letter_queue {
                    resolve(key, "dead_letter_queue", ResourceKind::DeadLetterQueue, d)?;
                }
            }
            Spec::Consumer(c) => {
                check_source(state, key, c.source.as_ref(), c.dead_letter_queue.as_ref())?;
                if let Some(d) = &c.dead_letter_queue {
                    resolve(key, "dead_letter_queue", ResourceKind::DeadLetterQueue, d)?;
                }
            }
            Spec::IngestApi(i) => {
                resolve(key, "destination", ResourceKind::Stream, i.destination.as_ref().unwrap_or(&ResourceRef::default()))?;
                if let Some(d) = &i.dead_letter_queue {
                    resolve(key, "dead_letter_queue", ResourceKind::DeadLetterQueue, d)?;
                }
            }
            Spec::Table(_) | Spec::DeadLetterQueue(_) => {}
        }
    }
    check_cycles(state)
}

/// Transforms and consumers are one name space (their units, metrics and dead letters are named by them), and a
/// function serves one kind: a sidecar function used as both a transform and a consumer would run as one of
/// them only, and the other's units would stall.
fn check_function_names(state: &State) -> Result<(), PlanError> {
    let mut names: HashMap<&str, &ResourceKey> = HashMap::new();
    let mut functions: HashMap<(&str, &str), (&ResourceKey, bool)> = HashMap::new();
    for (key, r) in state {
        let (function, consumer) = match spec(r) {
            Spec::Transform(t) => (t.function.as_ref(), false),
            Spec::Consumer(c) => (c.function.as_ref(), true),
            _ => continue,
        };
        if let Some(other) = names.insert(key.name.as_str(), key) {
            return Err(fail(key, "name", format!("{other} has the same name: transforms and consumers need distinct names")));
        }
        let Some(f) = function else { continue };
        match functions.insert((f.runtime.as_str(), f.name.as_str()), (key, consumer)) {
            Some((other, was_consumer)) if was_consumer != consumer => {
                return Err(fail(
                    key,
                    "function",
                    format!("function `{}` is also {other}'s function, of the other kind: give each its own function", f.name),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A transform's or consumer's source: a stream, or a dead letter queue (whose records it recovers). Failures of
/// a function reading a dead letter queue must go elsewhere, or they would come back to it.
fn check_source(state: &State, key: &ResourceKey, source: Option<&ResourceRef>, own_dlq: Option<&ResourceRef>) -> Result<(), PlanError> {
    let r = source.cloned().unwrap_or_default();
    if state.contains_key(&ResourceKey::new(ResourceKind::Stream, &r.name, &r.version)) {
        return Ok(());
    }
    if !state.contains_key(&ResourceKey::new(ResourceKind::DeadLetterQueue, &r.name, &r.version)) {
        let target = ResourceKey::new(ResourceKind::Stream, &r.name, &r.version);
        return Err(fail(key, "source", format!("refers to {target}, which is not declared (nor is a dead letter queue of that name)")));
    }
    let default = ResourceRef { name: DEFAULT_DEAD_LETTER_QUEUE.into(), version: String::new() };
    if own_dlq.unwrap_or(&default) == &r {
        return Err(fail(
            key,
            "dead_letter_queue",
            format!("it reads dead letter queue `{}` and would send its own failures back into it: give it another dead_letter_queue", r.name),
        ));
    }
    Ok(())
}

/// Every column of the destination table must be a stream field of the same type, so that sync can fill it (a
/// computed one may be missing), and none may hold aggregation states.
fn check_destination_table(
    state: &State,
    key: &ResourceKey,
    fields: &[millrace_proto::v1::Field],
    dest: &ResourceRef,
) -> Result<(), PlanError> {
    let table_key = ResourceKey::new(ResourceKind::Table, &dest.name, &dest.version);
    let Some(Spec::Table(t)) = state.get(&table_key).map(spec) else { return Ok(()) };
    for col in &t.fields {
        if col.aggregate.as_ref().is_some_and(|a| !a.simple) {
            return Err(fail(
                key,
                "destination",
                format!(
                    "column `{}` of {table_key} holds aggregation states (AggregateFunction), which only ClickHouse writes: \
                     sync the stream into a plain table and fill {table_key} from it with a materialized view, or make the column simple_aggregated",
                    col.name
                ),
            ));
        }
        match fields.iter().find(|f| f.name == col.name) {
            // ClickHouse computes it: the stream need not carry it.
            None if crate::types::column::is_computed(col) => {}
            None => {
                return Err(fail(key, "destination", format!("column `{}` of {table_key} is not a field of the stream", col.name)))
            }
            Some(f) if f.r#type != col.r#type || f.nullable != col.nullable => {
                return Err(fail(key, "destination", format!("field `{}` has a different type in {table_key}", col.name)))
            }
            // Records may leave such a field out: the table must fill it.
            Some(f) if !f.default_expression.is_empty() && col.default_expression.is_empty() && !col.nullable => {
                return Err(fail(
                    key,
                    "destination",
                    format!("records may leave field `{}` out (it has a DEFAULT), but column `{}` of {table_key} has none: give it one", col.name, col.name),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A stream by (name, version).
type StreamId = (String, String);

/// Transforms are edges between streams (a multi-transform one to each of its routes); a cycle would loop records
/// forever. (When the Python SDK cannot read a multi-transform's routes from its code, it lists every stream its
/// source does not already feed, so that its guess makes no cycle of its own.)
fn check_cycles(state: &State) -> Result<(), PlanError> {
    let mut edges: BTreeMap<StreamId, Vec<(&str, StreamId)>> = BTreeMap::new();
    for r in state.values() {
        if let Spec::Transform(t) = spec(r) {
            let Some(s) = &t.source else { continue };
            for d in t.destination.iter().chain(&t.routes) {
                edges
                    .entry((s.name.clone(), s.version.clone()))
                    .or_default()
                    .push((t.name.as_str(), (d.name.clone(), d.version.clone())));
            }
        }
    }
    // Iterative DFS with colours: 1 = on the current path, 2 = finished.
    let mut colour: HashMap<StreamId, u8> = HashMap::new();
    for start in edges.keys() {
        if colour.contains_key(start) {
            continue;
        }
        let mut path: Vec<&str> = Vec::new();
        let mut stack = vec![(start.clone(), 0usize)];
        colour.insert(start.clone(), 1);
        while let Some((node, i)) = stack.pop() {
            let out = edges.get(&node).map(|v| v.as_slice()).unwrap_or(&[]);
            if i < out.len() {
                stack.push((node, i + 1));
                let (tname, next) = &out[i];
                match colour.get(next) {
                    Some(1) => {
                        path.push(tname);
                        let key = ResourceKey::new(ResourceKind::Transform, tname, "");
                        return Err(fail(&key, "destination", format!("transforms form a cycle: {}", path.join(" -> "))));
                    }
                    Some(_) => {}
                    None => {
                        colour.insert(next.clone(), 1);
                        path.push(tname);
                        stack.push((next.clone(), 0));
                    }
                }
            } else {
                colour.insert(node, 2);
                path.pop();
            }
        }
    }
    Ok(())
}

/// Resource names that a declared set refers to, used to refuse deleting something still in use.
pub fn referrers<'a>(state: &'a State, target: &ResourceKey) -> Vec<&'a ResourceKey> {
    let hits = |r: Option<&ResourceRef>, kind: ResourceKind| {
        r.is_some_and(|r| kind == target.kind && r.name == target.name && r.version == target.version)
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (key, r) in state {
        let refers = match spec(r) {
            Spec::Stream(s) => {
                hits(s.destination.as_ref(), ResourceKind::Table)
                    || hits(s.dead_letter_queue.as_ref(), ResourceKind::DeadLetterQueue)
            }
            Spec::Transform(t) => {
                hits(t.source.as_ref(), ResourceKind::Stream)
                    || hits(t.source.as_ref(), ResourceKind::DeadLetterQueue)
                    || hits(t.destination.as_ref(), ResourceKind::Stream)
                    || t.routes.iter().any(|r| hits(Some(r), ResourceKind::Stream))
                    || hits(t.dead_letter_queue.as_ref(), ResourceKind::DeadLetterQueue)
            }
            Spec::Consumer(c) => {
                hits(c.source.as_ref(), ResourceKind::Stream)
                    || hits(c.source.as_ref(), ResourceKind::DeadLetterQueue)
                    || hits(c.dead_letter_queue.as_ref(), ResourceKind::DeadLetterQueue)
            }
            Spec::IngestApi(i) => {
                hits(i.destination.as_ref(), ResourceKind::Stream) || hits(i.dead_letter_queue.as_ref(), ResourceKind::DeadLetterQueue)
            }
            _ => false,
        };
        if refers && seen.insert(key) {
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
#[path = "plan_fuzz_tests.rs"]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{field_type::Kind, Field, FieldType, FunctionRef, ScalarType, Stream, Transform};

    fn stream(name: &str, version: &str) -> Stream {
        let ty = FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) };
        let id = Field { name: "id".into(), r#type: Some(ty), nullable: false, key: true, ..Default::default() };
        Stream { name: name.into(), version: version.into(), fields: vec![id], ..Default::default() }
    }

    fn transform(name: &str, from: &str, to: &str) -> Transform {
        let r = |n: &str| Some(ResourceRef { name: n.into(), version: String::new() });
        Transform {
            name: name.into(),
            source: r(from),
            destination: r(to),
            function: Some(FunctionRef { name: "f".into(), runtime: String::new() }),
            ..Default::default()
        }
    }

    #[test]
    fn chains_are_accepted_and_defaults_filled_in() {
        let plan = Plan {
            streams: vec![stream("a", ""), stream("b", ""), stream("c", "")],
            transforms: vec![transform("ab", "a", "b"), transform("bc", "b", "c"), transform("ac", "a", "c")],
            ..Default::default()
        };
        let state = validate(plan).unwrap();
        let Some(Spec::Stream(a)) = state.get(&ResourceKey::new(ResourceKind::Stream, "a", "")).map(spec) else { panic!() };
        assert_eq!((a.parallelism, a.retention_seconds, a.life_cycle), (Some(1), Some(DEFAULT_RETENTION_SECONDS), LifeCycle::FullyManaged as i32));
    }

    #[test]
    fn a_stream_syncs_into_a_table_without_its_computed_columns_but_never_into_aggregation_states() {
        use millrace_proto::v1::{AggregateType, Table};
        let mut s = stream("s", "");
        s.destination = Some(ResourceRef { name: "t".into(), version: String::new() });
        let id = s.fields[0].clone();
        let computed = Field { name: "upper_id".into(), materialized: "upper(id)".into(), ..id.clone() };
        let computed = Field { key: false, ..computed };
        let table = |extra: Field| Table { name: "t".into(), fields: vec![id.clone(), extra], ..Default::default() };
        let plan = |t: Table| Plan { streams: vec![s.clone()], tables: vec![t], ..Default::default() };
        validate(plan(table(computed.clone()))).expect("a MATERIALIZED column the stream lacks is computed by ClickHouse");
        let states = Field {
            name: "uniques".into(),
            aggregate: Some(AggregateType { function: "uniq".into(), arguments: vec![id.r#type.clone().unwrap()], simple: false }),
            ..computed.clone()
        };
        let states = Field { materialized: String::new(), ..states };
        let e = validate(plan(table(states))).unwrap_err().to_string();
        assert!(e.contains("aggregation states") && e.contains("materialized view"), "{e}");
        let plain = Field { materialized: String::new(), ..computed };
        let e = validate(plan(table(plain))).unwrap_err().to_string();
        assert!(e.contains("is not a field of the stream"), "{e}");
    }

    #[test]
    fn cycles_are_refused_with_their_transforms_named() {
        let plan = Plan {
            streams: vec![stream("a", ""), stream("b", ""), stream("c", "")],
            transforms: vec![transform("ab", "a", "b"), transform("bc", "b", "c"), transform("ca", "c", "a")],
            ..Default::default()
        };
        let e = validate(plan).unwrap_err();
        assert!(e.reason.contains("cycle") && e.reason.contains("ab -> bc -> ca"), "{e}");
        let self_loop = Plan { streams: vec![stream("a", "")], transforms: vec![transform("aa", "a", "a")], ..Default::default() };
        assert!(validate(self_loop).unwrap_err().reason.contains("cycle"));
    }

    #[test]
    fn duplicates_and_physical_name_clashes_are_refused() {
        let dup = Plan { streams: vec![stream("a", ""), stream("a", "")], ..Default::default() };
        assert_eq!(validate(dup).unwrap_err().reason, "declared twice");
        // a_1 unversioned and a version 1 would share topic a_1.
        let clash = Plan { streams: vec![stream("a_1", ""), stream("a", "1")], ..Default::default() };
        assert!(validate(clash).unwrap_err().reason.contains("topic name `a_1`"));
        let versions = Plan { streams: vec![stream("a", "1.0"), stream("a", "2.0")], ..Default::default() };
        assert_eq!(validate(versions).unwrap().len(), 2);
    }

    #[test]
    fn a_transform_without_a_dead_letter_queue_gets_the_default_one() {
        let default = ResourceKey::new(ResourceKind::DeadLetterQueue, DEFAULT_DEAD_LETTER_QUEUE, "");
        let plan = Plan { streams: vec![stream("a", ""), stream("b", "")], transforms: vec![transform("ab", "a", "b")], ..Default::default() };
        let state = validate(plan.clone()).unwrap();
        let Some(Spec::DeadLetterQueue(d)) = state.get(&default).map(spec) else { panic!("no default dead letter queue") };
        assert_eq!(d.life_cycle, LifeCycle::DeletionProtected as i32);
        // A source stream with a dead letter queue of its own needs no default one.
        let mut with_own = plan;
        with_own.streams[0].dead_letter_queue = Some(ResourceRef { name: "a_dlq".into(), version: String::new() });
        with_own.dead_letter_queues.push(millrace_proto::v1::DeadLetterQueue { name: "a_dlq".into(), ..Default::default() });
        assert!(!validate(with_own).unwrap().contains_key(&default));
        // Streams alone need none.
        assert!(!validate(Plan { streams: vec![stream("a", "")], ..Default::default() }).unwrap().contains_key(&default));
    }

    #[test]
    fn a_dead_letter_queue_can_be_a_source_but_not_its_own_dead_letter_queue() {
        let consumer = |source: &str, dlq: Option<&str>| millrace_proto::v1::Consumer {
            name: "recover".into(),
            source: Some(ResourceRef { name: source.into(), version: String::new() }),
            function: Some(FunctionRef { name: "f".into(), runtime: String::new() }),
            dead_letter_queue: dlq.map(|d| ResourceRef { name: d.into(), version: String::new() }),
            ..Default::default()
        };
        let dlq = |name: &str| millrace_proto::v1::DeadLetterQueue { name: name.into(), ..Default::default() };
        let plan = Plan { dead_letter_queues: vec![dlq("d"), dlq("other")], consumers: vec![consumer("d", None)], ..Default::default() };
        let state = validate(plan).unwrap();
        let users = referrers(&state, &ResourceKey::new(ResourceKind::DeadLetterQueue, "d", ""));
        assert_eq!(users, vec![&ResourceKey::new(ResourceKind::Consumer, "recover", "")]);
        let units = crate::scheduler::desired_units(&state, &Default::default(), &Default::default());
        let unit = &units["consumer/recover/0"];
        assert_eq!((unit.source_topic.as_str(), unit.dead_letter_topic.as_str()), ("d", DEFAULT_DEAD_LETTER_QUEUE));
        let own = Plan { dead_letter_queues: vec![dlq("d")], consumers: vec![consumer("d", Some("d"))], ..Default::default() };
        assert!(validate(own).unwrap_err().to_string().contains("send its own failures back into it"));
        let default = Plan { consumers: vec![consumer(DEFAULT_DEAD_LETTER_QUEUE, None)], dead_letter_queues: vec![dlq(DEFAULT_DEAD_LETTER_QUEUE)], ..Default::default() };
        assert!(validate(default).unwrap_err().to_string().contains("give it another dead_letter_queue"));
        let missing = Plan { consumers: vec![consumer("nope", None)], ..Default::default() };
        assert!(validate(missing).unwrap_err().to_string().contains("not declared"));
    }

    #[test]
    fn a_consumer_named_like_a_transform_or_sharing_its_function_is_refused() {
        let consumer = |name: &str, function: &str| millrace_proto::v1::Consumer {
            name: name.into(),
            source: Some(ResourceRef { name: "a".into(), version: String::new() }),
            function: Some(FunctionRef { name: function.into(), runtime: String::new() }),
            ..Default::default()
        };
        let base = Plan { streams: vec![stream("a", ""), stream("b", "")], transforms: vec![transform("a__b", "a", "b")], ..Default::default() };
        let same_name = Plan { consumers: vec![consumer("a__b", "g")], ..base.clone() };
        assert!(validate(same_name).unwrap_err().reason.contains("distinct names"));
        let same_function = Plan { consumers: vec![consumer("audit", "f")], ..base.clone() };
        assert!(validate(same_function).unwrap_err().reason.contains("of the other kind"));
        // Transforms may share a function; a consumer with its own is fine.
        let shared = Plan { streams: vec![stream("a", ""), stream("b", ""), stream("c", "")], transforms: vec![transform("ab", "a", "b"), transform("ac", "a", "c")], consumers: vec![consumer("audit", "g")], ..Default::default() };
        assert!(validate(shared).is_ok());
    }

    #[test]
    fn an_unbounded_sync_batch_is_refused() {
        let ty = FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) };
        let id = Field { name: "id".into(), r#type: Some(ty), nullable: false, key: true, ..Default::default() };
        let t = |bytes: u64| millrace_proto::v1::Table { name: "t".into(), fields: vec![id.clone()], sync_max_bytes: Some(bytes), ..Default::default() };
        assert!(validate(Plan { tables: vec![t(MAX_SYNC_BYTES)], ..Default::default() }).is_ok());
        let e = validate(Plan { tables: vec![t(u64::MAX)], ..Default::default() }).unwrap_err();
        assert_eq!(e.field, "sync_max_bytes", "{e}");
    }

    #[test]
    fn referrers_lists_what_uses_a_resource() {
        let plan = Plan { streams: vec![stream("a", ""), stream("b", "")], transforms: vec![transform("ab", "a", "b")], ..Default::default() };
        let state = validate(plan).unwrap();
        let users = referrers(&state, &ResourceKey::new(ResourceKind::Stream, "b", ""));
        assert_eq!(users, vec![&ResourceKey::new(ResourceKind::Transform, "ab", "")]);
    }
}
