//! Where each unit of work runs: an even spread over live workers that moves as little as possible.
//! Pure functions, so the placement rules are tested without a database.

use crate::plan::DEFAULT_DEAD_LETTER_QUEUE;
use crate::resource::{physical_name, spec, ResourceKey, State};
use millrace_proto::v1::{resource::Spec, FunctionRef, ResourceKind, ResourceRef, Route, Stream, TableTarget, UnitKind, WorkUnit};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A unit's placement: the worker holding it (None = unassigned) and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub worker: Option<String>,
    pub epoch: u64,
}

/// Where declared names land: topics get a namespace, tables live in one ClickHouse database.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub topic_namespace: String,
    pub clickhouse_database: String,
}

/// Table syncs batch by these unless the table says otherwise.
pub const SYNC_MAX_ROWS: u32 = 100_000;
pub const SYNC_MAX_BYTES: u64 = 16 << 20;
pub const SYNC_MAX_DELAY_MS: u32 = 1_000;

/// Every unit the declared state asks for: one per partition of each transform's and consumer's source. A
/// source's partition count is the topic's real one where the broker told us (`partitions`, by topic name), so
/// that a topic with more partitions than declared (an externally managed one, say) is read whole; the declared
/// parallelism otherwise.
pub fn desired_units(state: &State, names: &Names, partitions: &HashMap<String, usize>) -> BTreeMap<String, WorkUnit> {
    let topic_namespace = names.topic_namespace.as_str();
    let stream = |r: &ResourceRef| match state.get(&ResourceKey::new(ResourceKind::Stream, &r.name, &r.version)).map(spec) {
        Some(Spec::Stream(s)) => Some(s.clone()),
        _ => None,
    };
    // A source is a stream, or a dead letter queue read to recover its records: (topic, declared partitions, its
    // dead letter queue).
    let source_of = |r: &ResourceRef| -> Option<(String, u32, Option<ResourceRef>)> {
        if let Some(s) = stream(r) {
            return Some((physical_name(&Spec::Stream(s.clone()), topic_namespace), s.parallelism.unwrap_or(1), s.dead_letter_queue));
        }
        match state.get(&ResourceKey::new(ResourceKind::DeadLetterQueue, &r.name, &r.version)).map(spec) {
            Some(d @ Spec::DeadLetterQueue(q)) => Some((physical_name(d, topic_namespace), q.parallelism.unwrap_or(1), None)),
            _ => None,
        }
    };
    let dlq_topic = |r: &ResourceRef| {
        state
            .get(&ResourceKey::new(ResourceKind::DeadLetterQueue, &r.name, &r.version))
            .map(|d| physical_name(spec(d), topic_namespace))
    };
    let default_dlq = ResourceRef { name: DEFAULT_DEAD_LETTER_QUEUE.into(), version: String::new() };
    let mut out = BTreeMap::new();
    for r in state.values() {
        let (kind, name, source, destination, function, dlq, route_refs) = match spec(r) {
            Spec::Transform(t) => (UnitKind::UnitTransform, &t.name, &t.source, t.destination.as_ref(), &t.function, t.dead_letter_queue.as_ref(), &t.routes[..]),
            Spec::Consumer(c) => (UnitKind::UnitConsumer, &c.name, &c.source, None, &c.function, c.dead_letter_queue.as_ref(), &[][..]),
            _ => continue,
        };
        let key_fields_of = |s: &Stream| -> Vec<String> { s.fields.iter().filter(|f| f.key).map(|f| f.name.clone()).collect() };
        let routes: Vec<Route> = route_refs
            .iter()
            .filter_map(stream)
            .map(|s| Route {
                stream: physical_name(&Spec::Stream(s.clone()), ""),
                topic: physical_name(&Spec::Stream(s.clone()), topic_namespace),
                key_fields: key_fields_of(&s),
            })
            .collect();
        let Some((source_topic, declared, source_dlq)) = source.as_ref().and_then(source_of) else { continue };
        let dest = destination.and_then(stream);
        let destination_topic = dest.as_ref().map(|d| physical_name(&Spec::Stream(d.clone()), topic_namespace)).unwrap_or_default();
        let key_fields: Vec<String> = dest.as_ref().map(key_fields_of).unwrap_or_default();
        // Its own dead letter queue, else its source stream's, else the plan's default one.
        let dead_letter_topic = [dlq, source_dlq.as_ref(), Some(&default_dlq)]
            .into_iter()
            .flatten()
            .find_map(dlq_topic)
            .unwrap_or_default();
        let prefix = if kind == UnitKind::UnitTransform { "transform" } else { "consumer" };
        let count = partitions.get(&source_topic).copied().unwrap_or(declared as usize);
        for partition in 0..count as i32 {
            let unit_id = format!("{prefix}/{name}/{partition}");
            out.insert(
                unit_id.clone(),
                WorkUnit {
                    unit_id,
                    kind: kind as i32,
                    name: name.clone(),
                    source_topic: source_topic.clone(),
                    partition,
                    destination_topic: destination_topic.clone(),
                    function: Some(function.clone().unwrap_or_else(FunctionRef::default)),
                    dead_letter_topic: dead_letter_topic.clone(),
                    key_fields: key_fields.clone(),
                    table: None,
                    routes: routes.clone(),
                },
            );
        }
    }
    for r in state.values() {
        let Spec::Stream(s) = spec(r) else { continue };
        let Some(dest) = &s.destination else { continue };
        let Some(Spec::Table(t)) = state.get(&ResourceKey::new(ResourceKind::Table, &dest.name, &dest.version)).map(spec) else { continue };
        let source_topic = physical_name(&Spec::Stream(s.clone()), topic_namespace);
        let dead_letter_topic = [s.dead_letter_queue.as_ref(), Some(&default_dlq)].into_iter().flatten().find_map(dlq_topic).unwrap_or_default();
        let table = TableTarget {
            database: if t.database.is_empty() { names.clickhouse_database.clone() } else { t.database.clone() },
            table: physical_name(&Spec::Table(t.clone()), ""),
            columns: t.fields.clone(),
            max_rows: t.sync_max_rows.unwrap_or(SYNC_MAX_ROWS).max(1),
            max_bytes: t.sync_max_bytes.unwrap_or(SYNC_MAX_BYTES).max(1),
            max_delay_ms: t.sync_max_delay_ms.unwrap_or(SYNC_MAX_DELAY_MS),
        };
        let count = partitions.get(&source_topic).copied().unwrap_or(s.parallelism.unwrap_or(1) as usize);
        // Named by the stream's physical name: versions side by side are distinct streams with distinct units.
        let name = physical_name(&Spec::Stream(s.clone()), "");
        for partition in 0..count as i32 {
            let unit_id = format!("table_sync/{name}/{partition}");
            out.insert(
                unit_id.clone(),
                WorkUnit {
                    unit_id,
                    kind: UnitKind::UnitTableSync as i32,
                    name: name.clone(),
                    source_topic: source_topic.clone(),
                    partition,
                    dead_letter_topic: dead_letter_topic.clone(),
                    table: Some(table.clone()),
                    ..Default::default()
                },
            );
        }
    }
    out
}

/// Live workers that refused units, by unit id: each said it cannot run the unit although another worker might
/// (its sidecar does not host the unit's function, say).
pub type Refusals = HashMap<String, HashSet<String>>;

/// New placements for `units` over `live` workers, given the current ones. Units stay where they are while
/// their worker lives and the spread stays within one unit of even; a unit that moves gets epoch + 1.
pub fn place(units: &[String], live: &[String], current: &HashMap<String, Placement>) -> BTreeMap<String, Placement> {
    place_avoiding(units, live, current, &Refusals::new())
}

/// As `place`, but a unit goes only to a live worker that has not refused it, and leaves a worker that refused it.
/// A unit every live worker refused is placed as if none had (it stays where it is, or goes where `place` would
/// put it): its error shows there, and it runs as soon as that worker's sidecar hosts its function. Balance holds
/// among the units free to move: a worker over its share gives up first the units another worker may take.
pub fn place_avoiding(units: &[String], live: &[String], current: &HashMap<String, Placement>, refused: &Refusals) -> BTreeMap<String, Placement> {
    let epoch_of = |u: &str| current.get(u).map(|p| p.epoch).unwrap_or(0);
    if live.is_empty() {
        let mut out = BTreeMap::new();
        for u in units {
            let moved = current.get(u).is_some_and(|p| p.worker.is_some());
            out.insert(u.clone(), Placement { worker: None, epoch: epoch_of(u) + u64::from(moved) });
        }
        return out;
    }
    let at: HashMap<String, String> = current.iter().filter_map(|(u, p)| Some((u.clone(), p.worker.clone()?))).collect();
    // Refused units leaving a worker can leave another over its share, with units it could hand on: spreading
    // again evens that out. Without refusals the first spread is already where spreading stops.
    let mut spread_out = spread(units, live, &at, refused);
    for _ in 0..4 {
        let again = spread(units, live, &spread_out, refused);
        if again == spread_out {
            break;
        }
        spread_out = again;
    }
    spread_out
        .into_iter()
        .map(|(u, wk)| {
            let same = at.get(&u) == Some(&wk);
            let epoch = if same { epoch_of(&u) } else { epoch_of(&u) + 1 };
            (u, Placement { worker: Some(wk), epoch })
        })
        .collect()
}

/// One spread of `units` over the (non-empty) `live` workers from where they are (`at`): the worker of each unit.
fn spread(units: &[String], live: &[String], at: &HashMap<String, String>, refused: &Refusals) -> HashMap<String, String> {
    let refusing = |u: &str, w: &str| refused.get(u).is_some_and(|r| r.contains(w));
    let everyone_refused: HashSet<&str> = units.iter().filter(|u| live.iter().all(|w| refusing(u, w))).map(String::as_str).collect();
    let able = |u: &str, w: &str| !refusing(u, w) || everyone_refused.contains(u);
    // Whether a unit on `w` could run on another live worker: the ones to give up first.
    let movable = |u: &str, w: &str| live.iter().any(|o| o != w && !refusing(u, o));
    // Units that stay put, per live worker.
    let mut held: BTreeMap<&str, Vec<&String>> = live.iter().map(|w| (w.as_str(), Vec::new())).collect();
    let mut pool: Vec<&String> = Vec::new();
    for u in units {
        let stays = at.get(u).filter(|w| able(u, w));
        match stays.and_then(|w| held.get_mut(w.as_str())) {
            Some(v) => v.push(u),
            None => pool.push(u),
        }
    }
    // Quotas: everyone gets floor(n/w); the `extra` most loaded workers may keep one more.
    let (n, w) = (units.len(), live.len());
    let (floor, mut extra) = (n / w, n % w);
    let mut by_load: Vec<&str> = held.keys().copied().collect();
    by_load.sort_by_key(|w| std::cmp::Reverse(held[w].len()));
    let mut quota: HashMap<&str, usize> = HashMap::new();
    for wk in by_load {
        let keeps_extra = extra > 0 && held[wk].len() > floor;
        extra -= usize::from(keeps_extra);
        quota.insert(wk, floor + usize::from(keeps_extra));
    }
    for (wk, units_held) in held.iter_mut() {
        if units_held.len() > quota[wk] {
            // Stable: without refusals every unit is movable, and the last ones go, as ever.
            units_held.sort_by_key(|u| movable(u, wk));
        }
        while units_held.len() > quota[wk] {
            pool.push(units_held.pop().expect("len > quota"));
        }
    }
    // Least loaded first: with every load now at most floor + 1, this ends within one unit of even. Units fewer
    // workers may take go first, so that the others do not fill those workers before them.
    let choices = |u: &str| live.iter().filter(|w| able(u, w)).count();
    pool.sort_by_cached_key(|u| (choices(u), *u));
    for u in pool {
        let wk = *held.keys().filter(|w| able(u, w)).min_by_key(|w| (held[*w].len(), **w)).expect("a live worker may take it");
        held.get_mut(wk).expect("live worker").push(u);
    }
    held.into_iter().flat_map(|(wk, us)| us.into_iter().map(move |u| (u.clone(), wk.to_string()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names { topic_namespace: "ns_".into(), clickhouse_database: "db".into() }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i:02}")).collect()
    }
    fn loads(p: &BTreeMap<String, Placement>) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for pl in p.values() {
            *m.entry(pl.worker.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }
    fn as_current(p: &BTreeMap<String, Placement>) -> HashMap<String, Placement> {
        p.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn units_follow_the_topics_real_partitions_and_always_have_a_dead_letter_topic() {
        use millrace_proto::v1::{field_type::Kind, Field, FieldType, Plan, ScalarType, Stream, Transform};
        let r = |n: &str| Some(ResourceRef { name: n.into(), version: String::new() });
        let id = Field { name: "id".into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) }), nullable: false, key: true, ..Default::default() };
        let stream = |n: &str| Stream { name: n.into(), fields: vec![id.clone()], ..Default::default() };
        let plan = Plan {
            streams: vec![stream("ext"), stream("out")],
            transforms: vec![Transform {
                name: "t".into(),
                source: r("ext"),
                destination: r("out"),
                function: Some(FunctionRef { name: "f".into(), runtime: String::new() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let state = crate::plan::validate(plan).unwrap();
        let declared = desired_units(&state, &names(), &HashMap::new());
        assert_eq!(declared.keys().collect::<Vec<_>>(), vec!["transform/t/0"]);
        assert_eq!(declared["transform/t/0"].dead_letter_topic, "ns_millrace_dead_letters");
        let actual = desired_units(&state, &names(), &HashMap::from([("ns_ext".to_string(), 3)]));
        assert_eq!(actual.keys().collect::<Vec<_>>(), vec!["transform/t/0", "transform/t/1", "transform/t/2"]);
    }

    #[test]
    fn a_multi_transforms_units_carry_its_routes_and_a_transform_has_a_destination_or_routes() {
        use millrace_proto::v1::{field_type::Kind, Field, FieldType, Plan, ScalarType, Stream, Transform};
        let r = |n: &str| ResourceRef { name: n.into(), version: String::new() };
        let id = Field { name: "id".into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) }), nullable: false, key: true, ..Default::default() };
        let stream = |n: &str| Stream { name: n.into(), fields: vec![id.clone()], ..Default::default() };
        let multi = Transform {
            name: "m".into(),
            source: Some(r("src")),
            routes: vec![r("left"), r("right")],
            function: Some(FunctionRef { name: "f".into(), runtime: String::new() }),
            ..Default::default()
        };
        let plan = |t: Transform| Plan { streams: vec![stream("src"), stream("left"), stream("right")], transforms: vec![t], ..Default::default() };
        let state = crate::plan::validate(plan(multi.clone())).unwrap();
        let units = desired_units(&state, &names(), &HashMap::new());
        let routes: Vec<(&str, &str, &[String])> = units["transform/m/0"].routes.iter().map(|r| (r.stream.as_str(), r.topic.as_str(), &r.key_fields[..])).collect();
        assert_eq!(routes, vec![("left", "ns_left", &["id".to_string()][..]), ("right", "ns_right", &["id".to_string()][..])]);
        assert!(crate::plan::validate(plan(Transform { destination: Some(r("left")), ..multi.clone() })).is_err(), "both a destination and routes");
        assert!(crate::plan::validate(plan(Transform { routes: vec![r("nowhere")], ..multi.clone() })).is_err(), "a route that is not a stream");
        assert!(crate::plan::validate(plan(Transform { routes: vec![r("left"), r("left")], ..multi.clone() })).is_err(), "a route twice");
        let mut looped = plan(multi);
        looped.transforms.push(Transform {
            name: "back".into(),
            source: Some(r("left")),
            destination: Some(r("src")),
            function: Some(FunctionRef { name: "g".into(), runtime: String::new() }),
            ..Default::default()
        });
        assert!(crate::plan::validate(looped).unwrap_err().to_string().contains("cycle"), "a route back upstream loops");
    }

    #[test]
    fn spreads_evenly_and_is_stable() {
        let units = ids(8);
        let live = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let first = place(&units, &live, &HashMap::new());
        let l = loads(&first);
        assert!(l.values().all(|&n| n == 2 || n == 3), "{l:?}");
        assert!(first.values().all(|p| p.epoch == 1));
        let again = place(&units, &live, &as_current(&first));
        assert_eq!(first, again, "nothing moves when nothing changed");
    }

    #[test]
    fn a_dead_workers_units_move_with_a_new_epoch_and_others_stay() {
        let units = ids(4);
        let two = vec!["a".to_string(), "b".to_string()];
        let before = place(&units, &two, &HashMap::new());
        let after = place(&units, &["a".to_string()], &as_current(&before));
        for (u, p) in &after {
            assert_eq!(p.worker.as_deref(), Some("a"));
            let was = &before[u];
            if was.worker.as_deref() == Some("a") {
                assert_eq!(p.epoch, was.epoch, "{u} stayed");
            } else {
                assert_eq!(p.epoch, was.epoch + 1, "{u} moved");
            }
        }
    }

    #[test]
    fn a_joining_worker_takes_only_what_balance_needs() {
        let units = ids(4);
        let one = place(&units, &["a".to_string()], &HashMap::new());
        let two = place(&units, &["a".to_string(), "b".to_string()], &as_current(&one));
        assert_eq!(loads(&two), BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)]));
        let moved = two.iter().filter(|(u, p)| p.worker != one[*u].worker).count();
        assert_eq!(moved, 2);
        // Five units on two workers: 3 + 2, and a third worker takes one from the worker with three.
        let units = ids(5);
        let two = place(&units, &["a".to_string(), "b".to_string()], &HashMap::new());
        let three = place(&units, &["a".to_string(), "b".to_string(), "c".to_string()], &as_current(&two));
        let l = loads(&three);
        assert!(l.values().all(|&n| n == 1 || n == 2), "{l:?}");
        assert_eq!(three.iter().filter(|(u, p)| p.worker != two[*u].worker).count(), 1);
    }

    fn refusals<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Refusals {
        let mut r = Refusals::new();
        for (unit, worker) in pairs {
            r.entry(unit.to_string()).or_default().insert(worker.to_string());
        }
        r
    }
    fn on<'a>(p: &'a BTreeMap<String, Placement>, worker: &str) -> Vec<&'a str> {
        p.iter().filter(|(_, pl)| pl.worker.as_deref() == Some(worker)).map(|(u, _)| u.as_str()).collect()
    }

    #[test]
    fn refused_units_move_to_a_worker_that_can_run_them_and_stay_there() {
        let units = ids(4);
        let two = vec!["a".to_string(), "b".to_string()];
        let first = place(&units, &two, &HashMap::new());
        // a cannot run the units it got: they move to b at a new epoch, and a takes b's in their place.
        let refused = refusals(on(&first, "a").into_iter().map(|u| (u, "a")));
        let second = place_avoiding(&units, &two, &as_current(&first), &refused);
        for u in &units {
            let (was, now) = (&first[u], &second[u]);
            assert_ne!(was.worker, now.worker, "{u}: refused by a, or a's share of the balance");
            assert_eq!(now.epoch, was.epoch + 1, "{u} moved");
        }
        // a cannot run those either: everything runs on b, and stays there (no churn while nothing is new).
        let refused = refusals(units.iter().map(|u| (u.as_str(), "a")));
        let third = place_avoiding(&units, &two, &as_current(&second), &refused);
        assert_eq!(on(&third, "b").len(), 4, "{third:?}");
        assert_eq!(third, place_avoiding(&units, &two, &as_current(&third), &refused), "nothing moves when nothing changed");
        // The refusals ended (a registered again, or a minute passed): balance gives a its share again.
        let fourth = place(&units, &two, &as_current(&third));
        assert_eq!(loads(&fourth), BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)]));
    }

    #[test]
    fn a_unit_every_live_worker_refused_stays_placed_and_moves_to_a_worker_that_did_not() {
        let units = ids(3);
        let two = vec!["a".to_string(), "b".to_string()];
        let first = place(&units, &two, &HashMap::new());
        // Nobody can run u00 (nor the new u03): it stays where it is, its error showing there; u03 is placed anyway.
        let refused = refusals([("u00", "a"), ("u00", "b"), ("u03", "a"), ("u03", "b")]);
        let units4 = ids(4);
        let second = place_avoiding(&units4, &two, &as_current(&first), &refused);
        assert_eq!(second["u00"], first["u00"], "a unit nobody can run moved");
        assert!(second["u03"].worker.is_some(), "{second:?}");
        // A new worker (a rolling deploy's) takes them, and only what balance needs besides.
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let third = place_avoiding(&units4, &three, &as_current(&second), &refused);
        assert_eq!(on(&third, "c"), vec!["u00", "u03"], "{third:?}");
        assert_eq!(third.iter().filter(|(u, p)| p.worker != second[*u].worker).count(), 2);
    }

    #[test]
    fn units_few_workers_may_take_are_placed_first_so_the_spread_stays_even() {
        let units = ids(4);
        let two = vec!["a".to_string(), "b".to_string()];
        // Placed by id alone, u00 and u01 would fill a and b first, and b would get all of u01, u02, u03.
        let refused = refusals([("u02", "a"), ("u03", "a")]);
        let placed = place_avoiding(&units, &two, &HashMap::new(), &refused);
        assert_eq!(on(&placed, "b"), vec!["u02", "u03"], "{placed:?}");
        assert_eq!(on(&placed, "a"), vec!["u00", "u01"], "{placed:?}");
    }

    #[test]
    fn no_live_workers_leaves_units_unassigned() {
        let units = ids(2);
        let before = place(&units, &["a".to_string()], &HashMap::new());
        let after = place(&units, &[], &as_current(&before));
        assert!(after.values().all(|p| p.worker.is_none() && p.epoch == 2));
    }
}
