//! The control plane against the real Postgres, broker and ClickHouse.

use millrace_proto::v1::*;
use millrace_tests::*;
use tonic::Code;

/// A synced stream has a dead letter queue (for rows ClickHouse refuses): without its own, the control plane adds
/// `millrace_dead_letters` (deletion protected). These are the other changes.
fn besides_default_dlq(r: &ApplyPlanResponse) -> Vec<(ResourceKind, String, ChangeAction)> {
    actions(r).into_iter().filter(|(k, n, _)| !(*k == ResourceKind::DeadLetterQueue && n == "millrace_dead_letters")).collect()
}

fn declared(resources: &[StoredResource]) -> usize {
    resources.iter().filter(|r| !matches!(&r.resource, Some(Resource { spec: Some(resource::Spec::DeadLetterQueue(d)) }) if d.name == "millrace_dead_letters")).count()
}

fn raw_plan() -> Plan {
    let mut events = stream("events", raw_fields(), 4);
    events.retention_seconds = Some(86_400);
    events.destination = Some(rref("events_table"));
    let mut tbl = table("events_table", raw_fields());
    tbl.fields.push(Field { nullable: true, ..field("note", ScalarType::String) });
    events.fields.push(Field { nullable: true, ..field("note", ScalarType::String) });
    Plan { streams: vec![events], tables: vec![tbl], ..Default::default() }
}

#[tokio::test]
async fn apply_creates_topics_and_tables_as_declared() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let r = apply(&mut c, &raw_plan(), false).await.unwrap();
    assert_eq!(
        actions(&r),
        vec![
            (ResourceKind::Stream, "events".into(), ChangeAction::Create),
            (ResourceKind::Table, "events_table".into(), ChangeAction::Create),
            (ResourceKind::DeadLetterQueue, "millrace_dead_letters".into(), ChangeAction::Create),
        ]
    );
    assert!(r.apply_id > 0);
    let topic = env.topic("events");
    assert_eq!(env.partitions(&topic), Some(4));
    assert_eq!(env.topic_config(&topic, "retention.ms").await.as_deref(), Some("86400000"));
    assert_eq!(
        env.columns("events_table").await,
        vec![("id".into(), "String".into()), ("value".into(), "Int64".into()), ("note".into(), "Nullable(String)".into())]
    );
    assert_eq!(env.sorting_key("events_table").await, "id");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn datetime_fields_are_utc_columns_and_a_legacy_datetime_column_is_accepted() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let mut plan = raw_plan();
    let at = field("at", ScalarType::Datetime);
    let seen = Field { nullable: true, ..field("seen", ScalarType::Datetime) };
    plan.tables[0].fields.extend([at.clone(), seen.clone()]);
    plan.streams[0].fields.extend([at, seen]);
    apply(&mut c, &plan, false).await.unwrap();
    let columns = env.columns("events_table").await;
    assert!(columns.contains(&("at".into(), "DateTime('UTC')".into())), "{columns:?}");
    assert!(columns.contains(&("seen".into(), "Nullable(DateTime('UTC'))".into())), "{columns:?}");

    // A table made before DATETIME meant DateTime('UTC') has plain DateTime columns: same values on a UTC server.
    let db = &env.clickhouse_database;
    let old = format!("CREATE TABLE `{db}`.`legacy` (`id` String, `at` DateTime) ENGINE = MergeTree() ORDER BY `id`");
    env.clickhouse.query(&old).execute().await.unwrap();
    let mut legacy = table("legacy", vec![key("id", ScalarType::String), field("at", ScalarType::Datetime)]);
    legacy.life_cycle = LifeCycle::FullyManaged as i32;
    plan.tables.push(legacy);
    let r = apply(&mut c, &plan, false).await.unwrap();
    assert!(actions(&r).contains(&(ResourceKind::Table, "legacy".into(), ChangeAction::Create)), "{r:?}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn reapplying_the_same_plan_changes_nothing() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let before = c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner();
    let again = apply(&mut c, &raw_plan(), false).await.unwrap();
    assert!(actions(&again).iter().all(|(_, _, a)| *a == ChangeAction::Unchanged), "{:?}", actions(&again));
    let after = c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner();
    assert_eq!(before, after, "updated_at must not move on a no-op apply");
    assert_eq!(env.partitions(&env.topic("events")), Some(4));
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_plan_applied_again_unchanged_records_no_apply() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let first = apply(&mut c, &raw_plan(), false).await.unwrap();
    assert!(first.apply_id > 0);
    for _ in 0..3 {
        let again = apply(&mut c, &raw_plan(), false).await.unwrap();
        assert!(actions(&again).iter().all(|(_, _, a)| *a == ChangeAction::Unchanged));
        assert_eq!(again.apply_id, 0, "nothing changed, so nothing is recorded");
    }
    let applies = c.list_applies(ListAppliesRequest::default()).await.unwrap().into_inner().applies;
    assert_eq!(applies.len(), 1, "the apply log holds changes only: {applies:?}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn dry_run_reports_the_diff_and_changes_nothing() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let r = apply(&mut c, &raw_plan(), true).await.unwrap();
    assert!(r.dry_run);
    assert_eq!(r.apply_id, 0);
    assert!(actions(&r).iter().all(|(_, _, a)| *a == ChangeAction::Create));
    assert_eq!(env.partitions(&env.topic("events")), None, "a dry run must not create topics");
    assert!(env.tables().await.is_empty(), "a dry run must not create tables");
    assert!(c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources.is_empty());
    assert!(c.list_applies(ListAppliesRequest::default()).await.unwrap().into_inner().applies.is_empty());

    // A dry run of a change shows the update and leaves the topic as it is.
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let mut grown = raw_plan();
    grown.streams[0].parallelism = Some(6);
    let r = apply(&mut c, &grown, true).await.unwrap();
    let change = r.changes.iter().find(|c| c.name == "events").unwrap();
    assert_eq!(change.action, ChangeAction::Update as i32);
    assert!(change.reason.contains("partitions 4 -> 6"), "{}", change.reason);
    assert_eq!(env.partitions(&env.topic("events")), Some(4));
    cp.stop().await;
    env.cleanup().await;
}

/// Kafka and Redpanda grow partitions and change retention in place. A broker without those APIs (Tansu 0.6.0
/// lacks CreatePartitions and AlterConfigs) gets a FAILED_PRECONDITION that says so, and nothing is recorded.
#[tokio::test]
async fn partitions_grow_retention_changes_and_shrinking_is_refused() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let topic = env.topic("events");
    let stored_parallelism = |r: GetResourceResponse| match r.resource.unwrap().resource.unwrap().spec {
        Some(resource::Spec::Stream(s)) => s.parallelism,
        _ => None,
    };
    let get = GetResourceRequest { kind: ResourceKind::Stream as i32, name: "events".into(), version: String::new() };

    let mut plan = raw_plan();
    plan.streams[0].parallelism = Some(6);
    match apply(&mut c, &plan, false).await {
        Ok(_) => assert_eq!(env.partitions(&topic), Some(6)),
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
            assert!(e.message().contains("cannot add partitions to topic"), "{}", e.message());
            assert_eq!(env.partitions(&topic), Some(4));
            let stored = c.get_resource(get.clone()).await.unwrap().into_inner();
            assert_eq!(stored_parallelism(stored), Some(4), "a failed apply records nothing");
            plan.streams[0].parallelism = Some(4);
        }
    }
    plan.streams[0].retention_seconds = Some(3600);
    match apply(&mut c, &plan, false).await {
        Ok(_) => assert_eq!(env.topic_config(&topic, "retention.ms").await.as_deref(), Some("3600000")),
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
            assert!(e.message().contains("cannot change retention.ms of topic"), "{}", e.message());
            assert_eq!(env.topic_config(&topic, "retention.ms").await.as_deref(), Some("86400000"));
            plan.streams[0].retention_seconds = Some(86_400);
        }
    }

    plan.streams[0].parallelism = Some(2);
    let dry = apply(&mut c, &plan, true).await.unwrap();
    assert_eq!(dry.changes.iter().find(|c| c.name == "events").unwrap().action, ChangeAction::Refused as i32);
    let err = apply(&mut c, &plan, false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("stream `events`") && err.message().contains("cannot shrink"), "{}", err.message());
    assert!(env.partitions(&topic).unwrap() >= 4);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn added_fields_become_new_columns() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let mut plan = raw_plan();
    let extra = Field { nullable: true, ..field("score", ScalarType::Float64) };
    plan.tables[0].fields.push(extra.clone());
    plan.streams[0].fields.push(extra);
    let r = apply(&mut c, &plan, false).await.unwrap();
    let change = r.changes.iter().find(|c| c.name == "events_table").unwrap();
    assert_eq!(change.action, ChangeAction::Update as i32);
    assert!(change.reason.contains("add column score"));
    assert!(env.columns("events_table").await.contains(&("score".into(), "Nullable(Float64)".into())));

    // Changing a column's type is refused, not applied.
    plan.tables[0].fields[1] = field("value", ScalarType::String);
    plan.streams[0].fields[1] = field("value", ScalarType::String);
    let err = apply(&mut c, &plan, false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("`value` cannot change type"), "{}", err.message());
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn fully_managed_resources_dropped_from_the_plan_are_deleted() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let r = apply(&mut c, &Plan::default(), false).await.unwrap();
    assert!(besides_default_dlq(&r).iter().all(|(_, _, a)| *a == ChangeAction::Delete));
    assert_eq!(env.partitions(&env.topic("events")), None);
    assert!(env.tables().await.is_empty());
    assert_eq!(declared(&c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources), 0);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn deletion_protected_resources_survive_a_plan_that_drops_them() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let mut plan = raw_plan();
    plan.streams[0].life_cycle = LifeCycle::DeletionProtected as i32;
    plan.tables[0].life_cycle = LifeCycle::DeletionProtected as i32;
    apply(&mut c, &plan, false).await.unwrap();

    // Updates still apply.
    let extra = Field { nullable: true, ..field("score", ScalarType::Float64) };
    plan.tables[0].fields.push(extra.clone());
    plan.streams[0].fields.push(extra);
    apply(&mut c, &plan, false).await.unwrap();
    assert_eq!(env.columns("events_table").await.len(), 4);

    let r = apply(&mut c, &Plan::default(), false).await.unwrap();
    for ch in &r.changes {
        assert_eq!(ch.action, ChangeAction::Blocked as i32, "{ch:?}");
        assert!(ch.reason.contains("deletion protected"), "{}", ch.reason);
    }
    assert_eq!(env.partitions(&env.topic("events")), Some(4));
    assert_eq!(env.tables().await, vec!["events_table".to_string()]);
    assert_eq!(declared(&c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources), 2);

    let err = c
        .delete_resource(DeleteResourceRequest { kind: ResourceKind::Stream as i32, name: "events".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("deletion protected"), "{}", err.message());
    assert_eq!(env.partitions(&env.topic("events")), Some(4));
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn externally_managed_resources_are_never_created_changed_or_deleted() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let mut plan = raw_plan();
    plan.streams[0].life_cycle = LifeCycle::ExternallyManaged as i32;
    plan.tables[0].life_cycle = LifeCycle::ExternallyManaged as i32;
    let r = apply(&mut c, &plan, false).await.unwrap();
    assert!(besides_default_dlq(&r).iter().all(|(_, _, a)| *a == ChangeAction::Blocked), "{:?}", actions(&r));
    assert_eq!(env.partitions(&env.topic("events")), None, "not created");
    assert!(env.tables().await.is_empty(), "not created");
    assert_eq!(declared(&c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources), 2, "declared");

    // Someone else creates the topic; Millrace leaves its partitions alone and never deletes it.
    env.create_topic(&env.topic("events"), 3).await;
    plan.streams[0].parallelism = Some(8);
    apply(&mut c, &plan, false).await.unwrap();
    assert_eq!(env.partitions(&env.topic("events")), Some(3));
    let r = apply(&mut c, &Plan::default(), false).await.unwrap();
    assert!(besides_default_dlq(&r).iter().all(|(_, _, a)| *a == ChangeAction::Delete));
    assert_eq!(env.partitions(&env.topic("events")), Some(3), "an external topic outlives its declaration");
    assert_eq!(declared(&c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources), 0);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_plans_are_refused_with_the_resource_and_field_named() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let base = raw_plan();
    let mut cases: Vec<(Plan, &[&str])> = Vec::new();

    let mut p = base.clone();
    p.streams[0].name = "bad name".into();
    cases.push((p, &["stream", "bad name", "name"]));
    let mut p = base.clone();
    p.streams[0].fields[1].r#type = Some(FieldType { kind: Some(field_type::Kind::Scalar(42)) });
    cases.push((p, &["stream `events`", "fields.value", "unknown scalar type 42"]));
    let mut p = base.clone();
    p.streams[0].fields[1].r#type = None;
    cases.push((p, &["fields.value", "no type"]));
    let mut p = base.clone();
    p.streams[0].destination = Some(rref("nope"));
    cases.push((p, &["stream `events`", "destination", "table `nope`"]));
    let mut p = base.clone();
    p.streams[0].parallelism = Some(0);
    cases.push((p, &["stream `events`", "parallelism"]));
    let mut p = base.clone();
    p.streams[0].dead_letter_queue = Some(rref("missing_dlq"));
    cases.push((p, &["dead_letter_queue", "missing_dlq"]));
    let mut p = base.clone();
    p.transforms.push(transform("t1", "events", "elsewhere", "double"));
    cases.push((p, &["transform `t1`", "destination", "stream `elsewhere`"]));
    let mut p = base.clone();
    p.streams.push(stream("a", raw_fields(), 1));
    p.streams.push(stream("b", raw_fields(), 1));
    p.transforms.push(transform("a_to_b", "a", "b", "f"));
    p.transforms.push(transform("b_to_a", "b", "a", "f"));
    cases.push((p, &["cycle", "a_to_b", "b_to_a"]));
    let mut p = base.clone();
    p.tables[0].fields[1] = field("value", ScalarType::Int32);
    cases.push((p, &["stream `events`", "destination", "`value`"]));
    let mut p = base.clone();
    p.streams[0].version = "1 0".into();
    cases.push((p, &["version"]));
    let mut p = base.clone();
    p.tables[0].order_by = vec!["ghost".into()];
    cases.push((p, &["table `events_table`", "order_by", "ghost"]));

    for (plan, needles) in cases {
        let err = apply(&mut c, &plan, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        for n in needles {
            assert!(err.message().contains(n), "{:?} lacks {n:?}", err.message());
        }
    }
    assert!(c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources.is_empty());
    assert!(env.topics().is_empty());
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn names_with_quotes_or_spaces_never_reach_ddl_or_topics() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    for hostile in ["x` String) ENGINE=Log; DROP DATABASE system; --", "a b", "q\"uote", "semi;colon", "ünï"] {
        let mut plan = raw_plan();
        plan.tables[0].name = hostile.into();
        plan.streams[0].destination = Some(rref(hostile));
        let err = apply(&mut c, &plan, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let mut plan = raw_plan();
        plan.tables[0].fields[1].name = hostile.into();
        let err = apply(&mut c, &plan, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("fields."), "{}", err.message());
        let mut plan = raw_plan();
        plan.streams[0].name = hostile.into();
        plan.streams[0].destination = None;
        assert_eq!(apply(&mut c, &plan, false).await.unwrap_err().code(), Code::InvalidArgument);
    }
    assert!(env.tables().await.is_empty());
    assert!(env.topics().is_empty());
    assert!(c.list_applies(ListAppliesRequest::default()).await.unwrap().into_inner().applies.is_empty());
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn state_survives_a_control_plane_restart() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    let mut plan = raw_plan();
    plan.dead_letter_queues.push(DeadLetterQueue { name: "events_dlq".into(), ..Default::default() });
    plan.streams.push(stream("doubled", raw_fields(), 2));
    plan.transforms.push(transform("events_to_doubled", "events", "doubled", "double"));
    plan.ingest_apis.push(IngestApi { name: "events".into(), destination: Some(rref("events")), ..Default::default() });
    apply(&mut c, &plan, false).await.unwrap();
    let before = c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner();
    // Six declared, and the default dead letter queue the transform gets (it has none, nor has its source).
    assert_eq!(before.resources.len(), 7);
    assert!(before.resources.iter().any(|r| matches!(&r.resource.as_ref().unwrap().spec,
        Some(resource::Spec::DeadLetterQueue(d)) if d.name == "millrace_dead_letters")));
    cp.stop().await;

    let cp = env.start().await;
    let mut c = cp.client().await;
    let after = c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner();
    assert_eq!(before, after);
    let r = apply(&mut c, &plan, false).await.unwrap();
    assert!(actions(&r).iter().all(|(_, _, a)| *a == ChangeAction::Unchanged));
    let got = c
        .get_resource(GetResourceRequest { kind: ResourceKind::Transform as i32, name: "events_to_doubled".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    let Some(resource::Spec::Transform(t)) = got.resource.unwrap().resource.unwrap().spec else { panic!("not a transform") };
    assert_eq!(t.function.unwrap().runtime, "default");
    // The unchanged apply after the restart records nothing: the log holds the first apply alone.
    let applies = c.list_applies(ListAppliesRequest::default()).await.unwrap().into_inner().applies;
    assert_eq!(applies.len(), 1);
    assert_eq!(applies[0].client, "tests");
    assert_eq!(applies[0].changes.len(), 7);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn delete_respects_references_and_life_cycle() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let mut c = cp.client().await;
    apply(&mut c, &raw_plan(), false).await.unwrap();
    let del = |kind: ResourceKind, name: &str| DeleteResourceRequest { kind: kind as i32, name: name.into(), ..Default::default() };
    let err = c.delete_resource(del(ResourceKind::Table, "events_table")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("stream `events`"), "{}", err.message());
    let err = c.delete_resource(del(ResourceKind::Stream, "nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.delete_resource(DeleteResourceRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let r = c.delete_resource(del(ResourceKind::Stream, "events")).await.unwrap().into_inner();
    assert_eq!(r.change.unwrap().action, ChangeAction::Delete as i32);
    assert_eq!(env.partitions(&env.topic("events")), None);
    c.delete_resource(del(ResourceKind::Table, "events_table")).await.unwrap();
    assert!(env.tables().await.is_empty());
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn unreachable_broker_or_clickhouse_gives_unavailable_and_records_nothing() {
    let env = TestEnv::new();
    // Nothing listens on port 1.
    for (flag, value) in [("--kafka-brokers", "127.0.0.1:1"), ("--clickhouse-url", "http://127.0.0.1:1")] {
        let mut args = vec![
            "millrace-control-plane".to_string(),
            "--database-url".into(),
            env.database_url.clone(),
            "--clickhouse-database".into(),
            env.clickhouse_database.clone(),
            "--topic-namespace".into(),
            env.topic_namespace.clone(),
            "--dependency-timeout-ms".into(),
            "2000".into(),
        ];
        for (f, v) in [("--kafka-brokers", kafka_brokers()), ("--clickhouse-url", clickhouse_url())] {
            args.extend([f.to_string(), if f == flag { value.to_string() } else { v }]);
        }
        let cp = ControlPlane::start(<millrace_control_plane::Config as clap::Parser>::parse_from(args)).await.unwrap();
        let mut c = cp.client().await;
        let err = apply(&mut c, &raw_plan(), false).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        assert!(err.message().contains("unreachable") && err.message().contains("Nothing was recorded"), "{}", err.message());
        assert!(c.list_resources(ListResourcesRequest::default()).await.unwrap().into_inner().resources.is_empty());
        assert!(c.list_applies(ListAppliesRequest::default()).await.unwrap().into_inner().applies.is_empty());
        let status = c.get_status(GetStatusRequest {}).await.unwrap().into_inner();
        assert!(status.dependencies.iter().any(|d| !d.reachable), "{status:?}");
        cp.stop().await;
    }
    assert!(env.tables().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_start_up_error_without_the_password() {
    let env = TestEnv::new();
    let mut config = env.config();
    config.database_url = "postgres://millrace:hunter2@127.0.0.1:1/millrace".into();
    config.dependency_timeout_ms = 2000;
    let err = ControlPlane::start(config).await.err().expect("start-up fails").to_string();
    assert!(err.contains("Postgres is unreachable") && err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}
