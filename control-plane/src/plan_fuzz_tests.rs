//! Fuzz tests of plan validation (issue #22): plans with hostile names (quotes, backticks, NUL, unicode, empty,
//! 10,000 characters), every field type of the contract with good and bad parameters, hostile expressions and
//! table options, references that resolve or not. Validation never panics; what it takes is a plan whose names are
//! identifiers, whose tables render to DDL, and which validates again to itself. `PROPTEST_CASES` sets the cases
//! per property (2,000 by default); `bench/fuzz.sh` runs the long form.

use crate::names::{is_valid_name, is_valid_resource_name, is_valid_version};
use crate::plan::validate;
use crate::resource::{kind_of, spec};
use crate::table::ddl::create_table;
use crate::table::features::Server;
use crate::types::{ch_column_type, physical_columns, validate_fields, Dialect};
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// As in the worker's fuzz tests: `PROPTEST_CASES` cases, 2,000 without it; `FUZZ_TALLY` counts them.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut config = Config { failure_persistence: None, max_shrink_iters: 4096, ..Config::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 2_000;
        // The short run (CI) is the same every time; the long one (`bench/fuzz.sh`) draws new cases.
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x6d69_6c6c);
        }
    }
    let cases = config.cases;
    match TestRunner::new(config).run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(reason, input)) => panic!("{name}: {reason}\nminimal input: {input:?}"),
        Err(e) => panic!("{name}: {e}"),
    }
    if let Some(path) = std::env::var_os("FUZZ_TALLY") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("FUZZ_TALLY is writable");
        writeln!(f, "{name} {cases}").expect("FUZZ_TALLY is writable");
    }
}

/// Names: mostly a few good ones (so that references resolve and plans pass), else anything hostile.
fn name() -> BoxedStrategy<String> {
    let hostile = prop::sample::select(vec![
        "", "a\"b", "a`b", "a'b", "a\\b", "a\0b", "\0", "é", "😀", "ａ", "a b", "a;DROP TABLE x", "-a", "1a", "a.b", "a/b", "..", "a\nb",
        "\u{202e}abc", "system", "information_schema", "millrace_dead_letters", "a--b", "a_1", "A-1", "_",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        120 => prop::sample::select(vec!["a", "b", "c", "id", "v", "ts"]).prop_map(str::to_string),
        3 => hostile,
        1 => "[A-Za-z_][A-Za-z0-9_-]{0,12}",
        1 => prop::sample::select(vec![127usize, 128, 129, 200, 10_000]).prop_map(|n| "x".repeat(n)),
        1 => any::<String>(),
    ]
    .boxed()
}

fn version() -> BoxedStrategy<String> {
    prop_oneof![30 => Just(String::new()), 8 => prop::sample::select(vec!["1", "1.2.0", "2"]).prop_map(str::to_string), 1 => name(), 1 => Just("9".repeat(33))].boxed()
}

/// Expressions (DEFAULT, TTL, ORDER BY, ...): good ones, and ones that would leave their clause.
fn expression() -> BoxedStrategy<String> {
    let fixed = prop::sample::select(vec![
        "1", "now()", "upper(id)", "ZSTD(1)", "ts + INTERVAL 1 DAY", "toDate(ts)", "(id, v)", "tuple()", "'it''s'", "1); DROP TABLE x",
        "a -- b", "/* c", "$$x$$", "'", "`", "\"", "a\0b", "é", "#", "a ) ENGINE = Log (", "ORDER BY id", "[1, {2}]", ")(", "\\", "  ",
    ])
    .prop_map(str::to_string);
    prop_oneof![30 => Just(String::new()), 8 => fixed, 1 => "[ -~]{0,20}", 1 => Just("(".repeat(5000)), 1 => Just("1+".repeat(3000) + "1")].boxed()
}

/// Any field type, valid or not: every kind, bad parameters, unknown scalars, no kind, nesting up to 24 levels.
fn field_type() -> BoxedStrategy<FieldType> {
    let ty = |kind| FieldType { kind: Some(kind) };
    let member = (name(), -40_000i32..40_000, prop::collection::vec(name(), 0..2)).prop_map(|(label, number, aliases)| EnumMember { label, number, aliases });
    let leaf = prop_oneof![
        8 => (-2i32..22).prop_map(move |s| ty(Kind::Scalar(s))),
        1 => Just(FieldType { kind: None }),
        2 => (0u32..45, 0u32..45).prop_map(move |(precision, scale)| ty(Kind::Decimal(DecimalType { precision, scale }))),
        1 => (0u32..12).prop_map(move |precision| ty(Kind::Datetime64(DateTime64Type { precision }))),
        1 => prop_oneof![0u32..4, Just(65_535), Just(65_536), Just(u32::MAX)].prop_map(move |size| ty(Kind::FixedString(FixedStringType { size }))),
        2 => (prop::collection::vec(member, 0..5), any::<bool>(), any::<bool>()).prop_map(move |(members, numbers, labels_too)| ty(Kind::Enumeration(EnumType { members, numbers, labels_too }))),
    ];
    leaf.prop_recursive(24, 64, 4, move |inner| {
        let json = (prop::collection::vec((name(), inner.clone()), 0..3), prop::collection::vec(name(), 0..2), prop::collection::vec(expression(), 0..2), prop::option::of(any::<u32>()))
            .prop_map(move |(paths, skip_paths, skip_regexps, max_dynamic_types)| {
                let typed_paths = paths.into_iter().map(|(n, t)| Field { name: format!("{n}.{n}"), r#type: Some(t), ..Default::default() }).collect();
                ty(Kind::Json(JsonType { typed_paths, skip_paths, skip_regexps, max_dynamic_types, max_dynamic_paths: None }))
            });
        prop_oneof![
            3 => inner.clone().prop_map(move |t| ty(Kind::Array(Box::new(t)))),
            3 => inner.clone().prop_map(move |t| ty(Kind::Optional(Box::new(t)))),
            2 => prop::collection::vec(field(inner.clone()), 0..4).prop_map(move |fields| ty(Kind::Record(RecordType { fields }))),
            2 => (prop::option::of(inner.clone()), prop::option::of(inner.clone()))
                .prop_map(move |(k, v)| ty(Kind::Map(Box::new(MapType { key: k.map(Box::new), value: v.map(Box::new) })))),
            1 => json,
        ]
    })
    .boxed()
}

/// Types the control plane takes (so that plans pass often), and now and then any type at all.
fn some_type() -> BoxedStrategy<FieldType> {
    let ty = |kind| FieldType { kind: Some(kind) };
    let scalar = (1i32..=17).prop_map(move |s| ty(Kind::Scalar(s)));
    let tame = prop_oneof![
        6 => scalar.clone(),
        1 => (1u32..=38).prop_flat_map(|p| (Just(p), 0..=p)).prop_map(move |(precision, scale)| ty(Kind::Decimal(DecimalType { precision, scale }))),
        1 => (0u32..=9).prop_map(move |precision| ty(Kind::Datetime64(DateTime64Type { precision }))),
        1 => (1u32..=64).prop_map(move |size| ty(Kind::FixedString(FixedStringType { size }))),
        1 => scalar.clone().prop_map(move |t| ty(Kind::Array(Box::new(t)))),
        1 => scalar.prop_map(move |t| ty(Kind::Optional(Box::new(t)))),
    ];
    prop_oneof![12 => tame, 1 => field_type()].boxed()
}

/// A field of a type from `types`, with column attributes now and then.
fn field(types: BoxedStrategy<FieldType>) -> BoxedStrategy<Field> {
    let attrs = (expression(), expression(), expression(), expression(), expression(), prop_oneof![Just(String::new()), Just("x".repeat(4097)), "[ -~]{0,8}"]);
    let aggregate = prop::option::weighted(0.01, (prop_oneof![Just("sum".to_string()), Just("anyLast".to_string()), expression()], prop::collection::vec(types.clone(), 0..3), any::<bool>()))
        .prop_map(|a| a.map(|(function, arguments, simple)| AggregateType { function, arguments, simple }));
    (name(), prop::option::weighted(0.99, types), 0u8..40, 0u8..30, attrs, aggregate)
        .prop_map(|(name, r#type, flags, which, (d, m, a, codec, ttl, comment), aggregate)| {
            // Mostly the combinations validation takes; flags 39 sets them at random.
            let kind = r#type.as_ref().and_then(|t| t.kind.as_ref());
            let scalar = matches!(kind, Some(Kind::Scalar(_)));
            let (nullable, key, low_cardinality) = match flags {
                39 => (which % 2 == 0, which % 3 == 0, which % 5 == 0),
                _ => (flags < 8 && !matches!(kind, Some(Kind::Optional(_))), flags == 9 && scalar, flags == 10 && kind == Some(&Kind::Scalar(ScalarType::String as i32))),
            };
            let mut f = Field { name, r#type, nullable, key, low_cardinality, aggregate, ..Default::default() };
            match which {
                1 => f.default_expression = d,
                2 => f.materialized = m,
                3 => f.alias = a,
                4 => (f.codec, f.ttl, f.comment) = (codec, ttl, comment),
                5 => (f.default_expression, f.materialized) = (d, m),
                _ => {}
            }
            f
        })
        .boxed()
}

/// A field list: mostly distinct names, now and then none at all.
fn fields() -> BoxedStrategy<Vec<Field>> {
    let list = prop::collection::vec((field(some_type()), 0u8..10), 1..5).prop_map(|fs| {
        fs.into_iter().enumerate().map(|(i, (f, own))| if own == 0 { f } else { Field { name: format!("f{i}"), ..f } }).collect()
    });
    prop_oneof![60 => list, 1 => Just(Vec::new())].boxed()
}

fn reference() -> impl Strategy<Value = Option<ResourceRef>> {
    prop::option::weighted(0.95, (name(), prop_oneof![10 => Just(String::new()), 1 => version()])).prop_map(|r| r.map(|(name, version)| ResourceRef { name, version }))
}

fn life_cycle() -> impl Strategy<Value = i32> {
    prop_oneof![20 => Just(0), 10 => 1i32..4, 1 => any::<i32>()]
}

fn some_u32() -> impl Strategy<Value = Option<u32>> {
    prop::option::weighted(0.3, prop_oneof![1 => Just(0), 20 => 1u32..10, 1 => Just(10_001), 1 => Just(u32::MAX)])
}

fn some_u64() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(0.3, prop_oneof![1 => Just(0), 20 => 1u64..100_000, 1 => Just(i64::MAX as u64 / 1000 + 1), 1 => Just(u64::MAX)])
}

fn stream() -> impl Strategy<Value = Stream> {
    (name(), version(), fields(), some_u32(), some_u64(), life_cycle(), prop::option::weighted(0.2, reference()).prop_map(Option::flatten), prop::option::weighted(0.2, reference().prop_map(|r| r.unwrap_or_default())), any::<bool>())
        .prop_map(|(name, version, fields, parallelism, retention_seconds, life_cycle, destination, dead_letter_queue, allow_extra_fields)| Stream {
            name, version, fields, parallelism, retention_seconds, life_cycle, destination, dead_letter_queue, allow_extra_fields, ..Default::default()
        })
}

fn engine() -> impl Strategy<Value = Option<TableEngine>> {
    let col = || prop::option::weighted(0.3, name());
    prop::option::weighted(0.3, (-1i32..8, any::<bool>(), col(), col(), col(), col(), prop::collection::vec(name(), 0..2), col())).prop_map(|e| {
        e.map(|(kind, replicated, keeper_path, replica_name, ver, is_deleted, columns, sign)| TableEngine {
            kind, replicated, keeper_path, replica_name, ver, is_deleted, columns, sign,
        })
    })
}

fn table() -> impl Strategy<Value = Table> {
    let options = (prop_oneof![5 => Just(Vec::new()), 1 => prop::collection::vec(name(), 1..3)], expression(), expression(), expression(), expression(), expression(), prop::collection::hash_map(name(), expression(), 0..2));
    let index = (name(), expression(), prop_oneof![Just("minmax".to_string()), name()], prop::collection::vec(prop_oneof![Just("0.01".to_string()), Just("'x'".to_string()), expression()], 0..2), any::<u32>())
        .prop_map(|(name, expression, r#type, arguments, granularity)| TableIndex { name, expression, r#type, arguments, granularity });
    let sync = (some_u32(), prop::option::weighted(0.2, prop_oneof![1 => Just(0u64), 8 => Just(1 << 20), 1 => Just(u64::MAX)]));
    (name(), version(), fields(), life_cycle(), engine(), options, prop::collection::vec(index, 0..2), (prop_oneof![4 => Just(String::new()), 1 => name()], sync)).prop_map(
        |(name, version, fields, life_cycle, engine, (order_by, order_by_expression, partition_by, sample_by, primary_key, ttl, settings), indexes, (database, (sync_max_rows, sync_max_bytes)))| Table {
            name, version, fields, life_cycle, engine, order_by, order_by_expression, partition_by, sample_by, primary_key, ttl, settings, indexes, database,
            sync_max_rows, sync_max_bytes, ..Default::default()
        },
    )
}

fn function() -> impl Strategy<Value = Option<FunctionRef>> {
    prop::option::weighted(0.9, (prop_oneof![3 => Just("main.f".to_string()), 1 => name()], prop_oneof![3 => Just(String::new()), 1 => name()]))
        .prop_map(|f| f.map(|(name, runtime)| FunctionRef { name, runtime }))
}

fn wild_plan() -> impl Strategy<Value = Plan> {
    let transform = (name(), reference(), reference(), function(), prop::option::weighted(0.2, reference().prop_map(|r| r.unwrap_or_default())), prop_oneof![6 => Just(0usize), 1 => 1usize..4, 1 => Just(257)], reference())
        .prop_map(|(name, source, destination, function, dead_letter_queue, routes, route)| {
            let routes: Vec<ResourceRef> = (0..routes).map(|i| route.clone().map(|r| ResourceRef { name: format!("{}{}", r.name, i % 3), ..r }).unwrap_or_default()).collect();
            Transform { name, source, destination: if routes.is_empty() { destination } else { None }, function, dead_letter_queue, routes, ..Default::default() }
        });
    let consumer = (name(), reference(), function(), prop::option::weighted(0.2, reference().prop_map(|r| r.unwrap_or_default())))
        .prop_map(|(name, source, function, dead_letter_queue)| Consumer { name, source, function, dead_letter_queue, ..Default::default() });
    let api = (name(), version(), reference(), prop_oneof![3 => Just(String::new()), 1 => name(), 1 => Just("/a/b/".to_string()), 1 => Just("a/../b".to_string())])
        .prop_map(|(name, version, destination, path)| IngestApi { name, version, destination, path, ..Default::default() });
    let dlq = (name(), version(), some_u32(), some_u64(), life_cycle())
        .prop_map(|(name, version, parallelism, retention_seconds, life_cycle)| DeadLetterQueue { name, version, parallelism, retention_seconds, life_cycle, ..Default::default() });
    (prop::collection::vec(stream(), 0..3), prop::collection::vec(table(), 0..3), prop::collection::vec(transform, 0..3), prop::collection::vec(consumer, 0..2), prop::collection::vec(api, 0..2), prop::collection::vec(dlq, 0..2))
        .prop_map(|(streams, tables, transforms, consumers, ingest_apis, dead_letter_queues)| Plan { streams, tables, transforms, consumers, ingest_apis, dead_letter_queues })
}

/// A plan the control plane takes (streams in a chain of transforms, a table synced from the first, an ingest API,
/// a consumer), with one thing in it made hostile half of the time: a name, a version, a field's type, an
/// expression, a reference.
fn tame_plan() -> impl Strategy<Value = Plan> {
    let r = |name: &str| Some(ResourceRef { name: name.into(), version: String::new() });
    let tame_field = (some_type(), 0u8..6).prop_map(|(t, flags)| {
        let kind = t.kind.clone();
        let key = flags == 0 && matches!(kind, Some(Kind::Scalar(_)));
        Field { nullable: flags == 1 && !matches!(kind, Some(Kind::Optional(_))), key, r#type: Some(t), ..Default::default() }
    });
    let fields = prop::collection::vec(tame_field, 1..4)
        .prop_map(|fs| fs.into_iter().enumerate().map(|(i, f)| Field { name: format!("f{i}"), ..f }).collect::<Vec<_>>());
    let mutation = (0u8..12, name(), field_type(), expression(), any::<prop::sample::Index>());
    (prop::collection::vec(fields, 1..4), any::<bool>(), any::<bool>(), prop::option::weighted(0.5, mutation)).prop_map(move |(streams, table, api, mutation)| {
        let n = streams.len();
        let mut plan = Plan::default();
        for (i, fields) in streams.into_iter().enumerate() {
            let destination = (i == 0 && table).then(|| ResourceRef { name: "t".into(), version: String::new() });
            plan.streams.push(Stream { name: format!("s{i}"), fields, destination, ..Default::default() });
        }
        if table {
            plan.tables.push(Table { name: "t".into(), fields: plan.streams[0].fields.clone(), ..Default::default() });
        }
        for i in 1..n {
            let function = Some(FunctionRef { name: format!("main.f{i}"), runtime: String::new() });
            plan.transforms.push(Transform { name: format!("t{i}"), source: r(&format!("s{}", i - 1)), destination: r(&format!("s{i}")), function, ..Default::default() });
        }
        let function = Some(FunctionRef { name: "main.c".into(), runtime: "python".into() });
        plan.consumers.push(Consumer { name: "c".into(), source: r(&format!("s{}", n - 1)), function, ..Default::default() });
        if api {
            plan.ingest_apis.push(IngestApi { name: "in".into(), destination: r("s0"), path: "events/v1".into(), ..Default::default() });
        }
        if let Some((what, hostile, ty, expr, at)) = mutation {
            let s = at.index(n);
            let f = at.index(plan.streams[s].fields.len());
            match what {
                0 => plan.streams[s].name = hostile,
                1 => plan.streams[s].version = hostile,
                2 => plan.streams[s].fields[f].name = hostile,
                3 => plan.streams[s].fields[f].r#type = Some(ty),
                4 => plan.streams[s].fields[f].default_expression = expr,
                5 => plan.consumers[0].function.as_mut().unwrap().name = hostile,
                6 => plan.consumers[0].source = r(&hostile),
                7 if table => plan.tables[0].ttl = expr,
                8 if table => plan.tables[0].fields[at.index(plan.streams[0].fields.len())].name = hostile,
                9 if table => plan.tables[0].database = hostile,
                10 if api => plan.ingest_apis[0].path = hostile,
                _ => plan.consumers[0].name = hostile,
            }
        }
        plan
    })
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![tame_plan(), wild_plan()]
}

/// Every field name in a list, nested ones and typed JSON paths included.
fn all_names(fields: &[Field], out: &mut Vec<String>) {
    fn of_type(t: Option<&FieldType>, out: &mut Vec<String>) {
        match t.and_then(|t| t.kind.as_ref()) {
            Some(Kind::Record(r)) => all_names(&r.fields, out),
            Some(Kind::Array(i)) | Some(Kind::Optional(i)) => of_type(Some(i), out),
            Some(Kind::Map(m)) => {
                of_type(m.key.as_deref(), out);
                of_type(m.value.as_deref(), out);
            }
            Some(Kind::Json(j)) => out.extend(j.typed_paths.iter().flat_map(|p| p.name.split('.').map(str::to_string).collect::<Vec<_>>())),
            _ => {}
        }
    }
    for f in fields {
        out.push(f.name.clone());
        of_type(f.r#type.as_ref(), out);
    }
}

#[test]
fn fuzz_plan_validation_never_panics_and_takes_only_identifiers() {
    run("fuzz_plan_validation_never_panics_and_takes_only_identifiers", plan(), |plan| {
        let state = match validate(plan.clone()) {
            Ok(state) => state,
            Err(e) => {
                prop_assert!(!e.reason.is_empty() && !e.to_string().is_empty(), "a refusal says why");
                prop_assert_eq!(validate(plan).unwrap_err(), e, "validation is deterministic");
                return Ok(());
            }
        };
        let mut again = Plan::default();
        for (key, r) in &state {
            prop_assert!(is_valid_resource_name(&key.name) && (key.version.is_empty() || is_valid_version(&key.version)), "{:?}", key);
            prop_assert_eq!(kind_of(spec(r)), key.kind);
            let mut names = Vec::new();
            match spec(r).clone() {
                Spec::Stream(s) => {
                    all_names(&s.fields, &mut names);
                    again.streams.push(s);
                }
                Spec::Table(t) => {
                    all_names(&t.fields, &mut names);
                    let sql = create_table("db", &key.name, &t, &Server::MODERN).map_err(|e| TestCaseError::fail(format!("{key}: no DDL: {e}")))?;
                    prop_assert!(!sql.sql.contains('\0'), "{}", sql.sql);
                    again.tables.push(t);
                }
                Spec::Transform(t) => again.transforms.push(t),
                Spec::Consumer(c) => again.consumers.push(c),
                Spec::IngestApi(i) => again.ingest_apis.push(i),
                Spec::DeadLetterQueue(d) => again.dead_letter_queues.push(d),
            }
            prop_assert!(names.iter().all(|n| is_valid_name(n)), "{:?}", names);
        }
        // Normalised: the state, declared as a plan, validates to itself.
        prop_assert_eq!(validate(again).map_err(|e| TestCaseError::fail(e.to_string()))?, state);
        Ok(())
    });
}

#[test]
fn fuzz_field_types_validate_or_render_without_panics() {
    run("fuzz_field_types_validate_or_render_without_panics", fields(), |fields| {
        let valid = validate_fields(&fields);
        for f in &fields {
            let rendered = ch_column_type(f);
            let _ = physical_columns(f, Dialect { bool_type: false });
            // A stream's fields need no column (a list of lists of records, say); a table's are rendered when its
            // plan is validated (see the property above).
            match rendered {
                Ok(t) => prop_assert!(valid.is_err() || !t.is_empty() && !t.contains('\0'), "{}", t),
                Err(e) => prop_assert!(!e.reason.is_empty()),
            }
        }
        Ok(())
    });
}

/// Types nested as deep as a gRPC message may carry them (prost decodes at most 100 levels): refused, not recursed
/// into without bound.
#[test]
fn fuzz_deeply_nested_types_are_refused() {
    let wrappers = prop::collection::vec(0u8..4, 17..100);
    run("fuzz_deeply_nested_types_are_refused", wrappers, |wrappers| {
        let mut t = FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) };
        for w in wrappers {
            let f = |t: FieldType| Field { name: "a".into(), r#type: Some(t), ..Default::default() };
            t = FieldType {
                kind: Some(match w {
                    0 => Kind::Array(Box::new(t)),
                    1 => Kind::Optional(Box::new(t)),
                    2 => Kind::Record(RecordType { fields: vec![f(t)] }),
                    _ => Kind::Map(Box::new(MapType { key: Some(Box::new(FieldType { kind: Some(Kind::Scalar(1)) })), value: Some(Box::new(t)) })),
                }),
            };
        }
        let fields = [Field { name: "deep".into(), r#type: Some(t), ..Default::default() }];
        prop_assert!(validate_fields(&fields).is_err());
        let _ = ch_column_type(&fields[0]);
        Ok(())
    });
}

