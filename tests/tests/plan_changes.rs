//! A changed declaration reaches the running units; every partition of a source is read; a unit whose function
//! its sidecar does not host says so.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::time::{Duration, Instant};

fn reason_of(r: &ApplyPlanResponse, kind: ResourceKind, name: &str) -> String {
    r.changes.iter().find(|c| c.kind == kind as i32 && c.name == name).map(|c| c.reason.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_destination_sends_every_later_record_to_the_new_stream_only() {
    let env = TestEnv::new();
    let mut plan = single_plan(2, "double_or_fail");
    plan.streams.push(stream("out2", raw_fields(), 2));
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 2).await;
    let load = Load::start(env.topic("src"));
    read_topic(env.topic("out"), 2, |r| r.len() >= 500).await;

    plan.transforms[0].destination = Some(rref("out2"));
    let r = apply(&mut cp.client().await, &plan, false).await.unwrap();
    assert!(reason_of(&r, ResourceKind::Transform, "src_to_out").contains("destination out -> out2"), "{r:?}");
    // Every id from here on was produced after the apply returned (a chunk later still, so that the worker has
    // received its new set: the apply answers once the set is sent).
    let fresh = load.next_fresh() + Load::CHUNK;
    load.wait_past(fresh + 1000).await;
    let total = load.stop().await;

    let later: Vec<i64> = (fresh..total).collect();
    let want = later.len();
    let new = read_topic(env.topic("out2"), 2, move |r| numbers(r).range(fresh..).count() == want).await;
    let old = read_quiet(env.topic("out"), 2, Duration::from_secs(2)).await;
    let old = numbers(&old);
    assert!(old.range(fresh..).next().is_none(), "records produced after the change reached the old destination: {:?}", old.range(fresh..).take(5).collect::<Vec<_>>());
    let all: std::collections::BTreeSet<i64> = old.union(&numbers(&new)).copied().collect();
    assert_eq!(all.len() as i64, total, "every record reached one destination or the other");
    println!("destination change: {} records before the change, {} after it, all in the new stream", fresh, later.len());
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_source_is_read_from_its_beginning() {
    let env = TestEnv::new();
    let mut plan = single_plan(1, "double_or_fail");
    plan.streams.push(stream("src2", raw_fields(), 1));
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let name = format!("{}-a", env.id);
    let _w = Worker::start(&name, &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 1).await;
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..500)).await;
    read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 500).await;
    // The new source already holds 300 records: fewer than the old source's committed offset.
    produce(&p, &env.topic("src2"), &raws(1000..1300)).await;

    plan.transforms[0].source = Some(rref("src2"));
    let r = apply(&mut cp.client().await, &plan, false).await.unwrap();
    assert!(reason_of(&r, ResourceKind::Transform, "src_to_out").contains("source src -> src2"), "{r:?}");
    let got = read_topic(env.topic("out"), 1, |r| numbers(r).range(1000..).count() == 300).await;
    assert!(got.iter().all(|r| r.value["value"].as_i64().unwrap() % 2 == 0));
    // The old source's gauges went with its unit.
    let old_gauge = format!(r#"topic="{}""#, env.topic("src"));
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics_of(&cp, &name).await;
        let lag = |t: &str| text.lines().any(|l| l.starts_with("millrace_consumer_lag") && l.contains(t));
        if !lag(&old_gauge) && lag(&format!(r#"topic="{}""#, env.topic("src2"))) {
            break;
        }
        assert!(Instant::now() < deadline, "gauges of the old source stayed:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_function_applies_to_every_later_record() {
    let env = TestEnv::new();
    let mut plan = single_plan(1, "double_or_fail");
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 1).await;
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..200)).await;
    read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 200).await;

    plan.transforms[0].function = Some(FunctionRef { name: "evens_only".into(), runtime: String::new() });
    let r = apply(&mut cp.client().await, &plan, false).await.unwrap();
    assert!(reason_of(&r, ResourceKind::Transform, "src_to_out").contains("function default:double_or_fail -> default:evens_only"), "{r:?}");
    produce(&p, &env.topic("src"), &raws(200..400)).await;
    let got = read_topic(env.topic("out"), 1, |r| numbers(r).range(200..).count() == 100).await;
    for r in got.iter().filter(|r| numbers(std::slice::from_ref(r)).range(200..).next().is_some()) {
        let id: i64 = r.value["id"].as_str().unwrap()[3..].parse().unwrap();
        assert!(id % 2 == 0 && r.value["value"] == id, "{:?} did not go through the new function", r.value);
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_external_topic_is_read_on_every_partition() {
    let env = TestEnv::new();
    let plan = external_topic_plan(&env, 3, 300).await;
    let cp = ControlPlane::start(env.config_with(&["--lease-ms", TEST_LEASE_MS])).await.unwrap();
    let r = apply(&mut cp.client().await, &plan, false).await.unwrap();
    let reason = reason_of(&r, ResourceKind::Stream, "ext");
    assert!(reason.contains("has 3 partitions where 1 are declared: all 3 are processed"), "{reason}");
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 3).await;
    let got = read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 300).await;
    assert_eq!(numbers(&got).len(), 300);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_its_sidecar_lacks_or_of_the_wrong_kind_is_an_error_on_the_unit() {
    let env = TestEnv::new();
    let mut plan = single_plan(1, "no_such_function");
    plan.transforms.push(transform("runs_a_consumer", "src", "out", "count"));
    plan.consumers.push(Consumer {
        name: "runs_a_transform".into(),
        source: Some(rref("src")),
        function: Some(FunctionRef { name: "double_value".into(), runtime: String::new() }),
        ..Default::default()
    });
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let name = format!("{}-a", env.id);
    let _w = Worker::start(&name, &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 3).await;
    produce(&producer(), &env.topic("src"), &raws(0..10)).await;

    let expected = [
        ("transform/src_to_out/0", "function `no_such_function` is not hosted by sidecar `default`"),
        ("transform/runs_a_consumer/0", "is a consumer, but transform `runs_a_consumer` needs a transform"),
        ("consumer/runs_a_transform/0", "is a transform, but consumer `runs_a_transform` needs a consumer"),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let ws = workers(&cp).await;
        let units: Vec<&UnitAssignmentInfo> = ws.iter().flat_map(|w| &w.assignments).collect();
        let shown = expected.iter().all(|(u, e)| units.iter().any(|a| &a.unit_id == u && a.error.contains(e)));
        if shown {
            assert!(units.iter().all(|a| a.committed_offset == -1), "a unit that cannot run committed: {units:?}");
            break;
        }
        assert!(Instant::now() < deadline, "unit errors not shown: {units:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics_of(&cp, &name).await;
    for line in [
        r#"millrace_unit_errors{function="src_to_out",reason="missing_function"} 1"#,
        r#"millrace_unit_errors{function="runs_a_consumer",reason="wrong_kind"} 1"#,
        r#"millrace_unit_errors{function="runs_a_transform",reason="wrong_kind"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert_eq!(metric(&text, "millrace_records_in_total"), 0, "records were read by units that cannot run");

    // Fixing the plan restarts the unit, which clears its error and processes everything.
    plan.transforms[0].function = Some(FunctionRef { name: "double_or_fail".into(), runtime: String::new() });
    apply(&mut cp.client().await, &plan, false).await.unwrap();
    read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 10).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let ws = workers(&cp).await;
        if ws.iter().flat_map(|w| &w.assignments).any(|a| a.unit_id == "transform/src_to_out/0" && a.error.is_empty() && a.committed_offset == 10) {
            break;
        }
        assert!(Instant::now() < deadline, "the fixed unit still shows an error: {ws:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}
