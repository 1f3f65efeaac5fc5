//! Workers running transforms and consumers against the real broker, with real worker processes.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::*;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::time::{Duration, Instant};


fn chain_plan() -> Plan {
    let final_fields = vec![
        key("id", ScalarType::String),
        field("transformedValue", ScalarType::Int64),
        field("anotherTransformedValue", ScalarType::Int64),
        field("transformedAt", ScalarType::Datetime),
    ];
    let mid_fields = vec![key("id", ScalarType::String), field("transformedValue", ScalarType::Int64), field("transformedAt", ScalarType::Datetime)];
    Plan {
        streams: vec![stream("raw_data", raw_fields(), 4), stream("intermediate_stream", mid_fields, 4), stream("final_stream", final_fields, 4)],
        transforms: vec![
            transform("raw_to_intermediate", "raw_data", "intermediate_stream", "double_value"),
            transform("intermediate_to_final", "intermediate_stream", "final_stream", "triple_value"),
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chained_transforms_run_end_to_end_on_two_workers() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &chain_plan()).await;
    let sidecar = Sidecar::start().await;
    let _w1 = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    let _w2 = Worker::start(&format!("{}-b", env.id), &cp.addr, &sidecar.url());
    let live = wait_for_placement(&cp, 2, 8).await;
    assert!(live.iter().all(|w| w.assignments.len() == 4), "{live:?}");
    // Admins see the same through grpcurl.
    let addr = cp.addr.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || grpcurl(&addr, None, &["millrace.v1.ControlPlane/ListWorkers"])).await.unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = v["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{out}");
    for w in listed {
        assert!(w["live"].as_bool().unwrap() && w["leaseExpiresAt"].is_string() && w["generation"].is_string(), "{w}");
        assert_eq!(w["assignments"].as_array().unwrap().len(), 4, "{w}");
    }

    let n = 3000;
    produce(&producer(), &env.topic("raw_data"), &raws(0..n)).await;
    let topic = env.topic("final_stream");
    let out = tokio::task::spawn_blocking(move || {
        read_until(&topic, 4, Duration::from_secs(60), |r| distinct_ids(r).0.len() == n as usize)
    })
    .await
    .unwrap();
    for r in &out {
        let id: i64 = r.value["id"].as_str().unwrap().trim_start_matches("id-").parse().unwrap();
        assert_eq!(r.value["transformedValue"], id * 4, "{:?}", r.value);
        assert_eq!(r.value["anotherTransformedValue"], id * 6, "{:?}", r.value);
        assert_eq!(r.key.as_deref(), r.value["id"].as_str(), "outputs are keyed by the Key field");
    }
    let (_, dups) = distinct_ids(&out);
    println!("chain: {n} ids delivered, {dups} duplicates");

    // Offsets are committed through the control plane once outputs are durable.
    let deadline = Instant::now() + WAIT;
    loop {
        let committed: i64 = workers(&cp).await.iter().flat_map(|w| &w.assignments).filter(|a| a.unit_id.starts_with("transform/raw_to_intermediate/")).map(|a| a.committed_offset.max(0)).sum();
        if committed == n {
            break;
        }
        assert!(Instant::now() < deadline, "committed {committed} of {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(sidecar);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_fan_out_and_consumers() {
    let env = TestEnv::new();
    let plan = Plan {
        streams: vec![stream("src", raw_fields(), 2), stream("evens", raw_fields(), 1), stream("triples", raw_fields(), 1)],
        transforms: vec![transform("keep_evens", "src", "evens", "evens_only"), transform("fan_out", "src", "triples", "split_in_three")],
        consumers: vec![Consumer {
            name: "counter".into(),
            source: Some(rref("src")),
            function: Some(FunctionRef { name: "count".into(), runtime: String::new() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 6).await;
    produce(&producer(), &env.topic("src"), &raws(0..100)).await;
    let evens = env.topic("evens");
    let got = tokio::task::spawn_blocking(move || read_until(&evens, 1, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 50)).await.unwrap();
    assert!(got.iter().all(|r| r.value["value"].as_i64().unwrap() % 2 == 0));
    let triples = env.topic("triples");
    let got = tokio::task::spawn_blocking(move || read_until(&triples, 1, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 300)).await.unwrap();
    assert!(got.iter().any(|r| r.value["id"] == "id-7-2"));
    let deadline = Instant::now() + WAIT;
    while sidecar.consumed.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "the consumer saw {} of 100", sidecar.consumed.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Consumer records are consumed, not "filtered"; the filter's are.
    let http = workers(&cp).await[0].http_address.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = http_get(&http, "/metrics").await;
        let filtered = |f: &str| text.lines().find(|l| l.starts_with(&format!(r#"millrace_records_filtered_total{{function="{f}"}}"#))).map(|l| l.rsplit(' ').next().unwrap().to_string());
        if filtered("keep_evens").as_deref() == Some("50") {
            assert!(filtered("counter").is_none_or(|v| v == "0"), "consumer records counted as filtered:\n{text}");
            break;
        }
        assert!(Instant::now() < deadline, "filter metrics never showed the run:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_records_go_to_the_dead_letter_queue_with_provenance() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(2, "double_or_fail")).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 2).await;
    let mut records = raws(0..200);
    // Chosen records fail: their values are negative.
    let bad = [3usize, 17, 42, 199];
    for &i in &bad {
        records[i].value = -(i as i64);
    }
    produce(&producer(), &env.topic("src"), &records).await;
    let out = env.topic("out");
    let got = tokio::task::spawn_blocking(move || read_until(&out, 2, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 196)).await.unwrap();
    assert!(got.iter().all(|r| !bad.iter().any(|b| r.value["id"] == format!("id-{b}"))));
    let dlq = env.topic("src_dlq");
    let letters = tokio::task::spawn_blocking(move || read_until(&dlq, 1, Duration::from_secs(30), |r| r.len() >= 4)).await.unwrap();
    let mut ids: Vec<String> = letters.iter().map(|l| l.value["originalRecord"]["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, vec!["id-17", "id-199", "id-3", "id-42"]);
    for l in &letters {
        let v = &l.value;
        assert_eq!(v["errorType"], "NegativeValue");
        assert!(v["errorMessage"].as_str().unwrap().contains("is negative"));
        assert_eq!(v["source"], "transform");
        assert_eq!(v["function"], "src_to_out");
        assert_eq!(v["topic"], env.topic("src"));
        assert!(v["partition"].as_i64().unwrap() < 2 && v["offset"].as_i64().unwrap() >= 0);
        assert!(chrono::DateTime::parse_from_rfc3339(v["failedAt"].as_str().unwrap()).is_ok());
    }

    // The worker's /metrics shows what happened, per function and per partition.
    let http = workers(&cp).await[0].http_address.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = http_get(&http, "/metrics").await;
        let has = |line: &str| text.lines().any(|l| l == line);
        let done = has(r#"millrace_records_in_total{function="src_to_out"} 200"#)
            && has(r#"millrace_records_out_total{function="src_to_out"} 196"#)
            && has(r#"millrace_records_failed_total{function="src_to_out"} 4"#)
            && has(r#"millrace_dead_letters_total{function="src_to_out"} 4"#)
            && has(r#"millrace_records_filtered_total{function="src_to_out"} 0"#)
            && text.contains(r#"millrace_batch_latency_seconds_bucket{function="src_to_out",le="+Inf"}"#)
            && text.contains(&format!(r#"millrace_consumer_lag{{function="src_to_out",partition="1",topic="{}"}} 0"#, env.topic("src")))
            && text.contains(&format!(r#"millrace_commit_lag{{function="src_to_out",partition="1",topic="{}"}} 0"#, env.topic("src")));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "metrics never showed the run:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_sidecar_mid_stream_loses_nothing() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(2, "double_or_fail")).await;
    let mut sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 2).await;
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..2000)).await;
    let out = env.topic("out");
    let o = out.clone();
    tokio::task::spawn_blocking(move || read_until(&o, 2, Duration::from_secs(30), |r| !r.is_empty())).await.unwrap();
    sidecar.stop().await;
    produce(&p, &env.topic("src"), &raws(2000..4000)).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the worker meets a dead sidecar and backs off
    sidecar.restart().await;
    produce(&p, &env.topic("src"), &raws(4000..5000)).await;
    let got = tokio::task::spawn_blocking(move || read_until(&out, 2, Duration::from_secs(60), |r| distinct_ids(r).0.len() == 5000)).await.unwrap();
    println!("sidecar restart: 5000 ids delivered, {} duplicates", distinct_ids(&got).1);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_partitions_resume_within_the_lease_and_nothing_is_lost() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(4, "double_or_fail")).await;
    let sidecar = Sidecar::start().await;
    let Pair { a: mut wa, b: wb, moving: moved, .. } = Pair::start(&env, &cp, &sidecar.url(), 4).await;
    let b = wb.name.clone();
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..5000)).await;
    let out = env.topic("out");
    let o = out.clone();
    tokio::task::spawn_blocking(move || read_until(&o, 4, Duration::from_secs(30), |r| r.len() >= 1000)).await.unwrap();

    wa.kill9();
    let killed_at = Instant::now();
    produce(&p, &env.topic("src"), &raws(5000..10000)).await;
    // The dead worker's units come back on the other one, at a higher epoch, and make progress there.
    let deadline = Instant::now() + WAIT;
    let resumed = loop {
        let ws = workers(&cp).await;
        let on_b = units_of(&ws, &b);
        let progressed = moved.iter().all(|(u, e)| {
            on_b.get(u).is_some_and(|e2| e2 > e)
                && ws.iter().flat_map(|w| &w.assignments).any(|x| &x.unit_id == u && x.committed_offset > 0)
        });
        if progressed {
            break killed_at.elapsed();
        }
        assert!(Instant::now() < deadline, "the killed worker's units did not resume: {on_b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = tokio::task::spawn_blocking(move || read_until(&out, 4, Duration::from_secs(60), |r| distinct_ids(r).0.len() == 10_000)).await.unwrap();
    let dups = distinct_ids(&got).1;
    println!("kill -9: units resumed {resumed:?} after the kill (lease {TEST_LEASE_MS} ms); 10000 ids delivered, {dups} duplicates");
    let lease: u64 = TEST_LEASE_MS.parse().unwrap();
    assert!(resumed < Duration::from_millis(lease + 3000), "resumed after {resumed:?}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_worker_neither_commits_nor_produces_for_units_that_moved() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(4, "double_or_fail")).await;
    let sidecar = Sidecar::start().await;
    let Pair { a: wa, b: wb, placed, moving: moved } = Pair::start(&env, &cp, &sidecar.url(), 4).await;
    let (a, b) = (wa.name.clone(), wb.name.clone());
    let wa_http = placed.iter().find(|w| w.name == a).unwrap().http_address.clone();
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..3000)).await;

    wa.signal(Signal::SIGSTOP);
    // Past the lease, A's units move to B; records keep coming meanwhile.
    wait_until_moved(&cp, &moved, &b).await;
    produce(&p, &env.topic("src"), &raws(3000..6000)).await;
    let committed_before: HashMap<String, i64> = workers(&cp).await.iter().flat_map(|w| w.assignments.iter().map(|a| (a.unit_id.clone(), a.committed_offset))).collect();
    // Records carry the unit and epoch that produced them: count those of A's units at their old epochs.
    let stale = |records: &[Read]| made_at(records, &moved);
    let out = env.topic("out");
    let stale_before = stale(&read_quiet(out.clone(), 4, Duration::from_secs(2)).await);
    wa.signal(Signal::SIGCONT);
    produce(&p, &env.topic("src"), &raws(6000..8000)).await;
    let got = read_topic(out.clone(), 4, |r| distinct_ids(r).0.len() == 8000).await;

    // A notices its lost lease, tries to commit its last offsets, is refused, and registers again.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = http_get(&wa_http, "/metrics").await;
        let live_again = workers(&cp).await.iter().any(|w| w.name == a && w.live);
        if live_again && metric(&text, "millrace_commits_refused_total") >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the paused worker's stale commits were never refused:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was produced at a stale epoch after A woke up: the destination, read again, has no more of them.
    let stale_after = stale(&read_quiet(out, 4, Duration::from_secs(2)).await);
    assert_eq!(stale_after, stale_before, "records were produced at a stale epoch after SIGCONT");
    // Commits never went backwards; a moved unit is only ever held again at a newer epoch.
    for w in &workers(&cp).await {
        for u in &w.assignments {
            assert!(u.committed_offset >= committed_before.get(&u.unit_id).copied().unwrap_or(-1), "{u:?}");
            if let Some(old) = moved.get(&u.unit_id) {
                assert!(u.epoch > *old, "{} is held at its pre-pause epoch", u.unit_id);
            }
        }
    }
    println!("SIGSTOP: 8000 ids delivered, {} duplicates, no stale produce after resume", distinct_ids(&got).1);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_produce_is_retried_and_never_committed_past() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "double_or_fail")).await;
    // The destination disappears behind Millrace's back: every produce fails until it is back.
    let out = env.topic("out");
    env.delete_topic(&out).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start_with(&format!("{}-a", env.id), &cp.addr, &sidecar.url(), &["--produce-timeout-ms", "1000"]);
    wait_for_placement(&cp, 1, 1).await;
    produce(&producer(), &env.topic("src"), &raws(0..500)).await;

    let committed = |ws: &[WorkerInfo]| ws.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset).max().unwrap_or(-1);
    let http = workers(&cp).await[0].http_address.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = http_get(&http, "/metrics").await;
        if metric(&text, "millrace_unit_restarts_total") >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the unit never retried its failed produce");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed(&workers(&cp).await), -1, "an offset was committed past records whose outputs failed");

    env.create_topic(&out, 1).await;
    let got = tokio::task::spawn_blocking(move || read_until(&out, 1, Duration::from_secs(60), |r| distinct_ids(r).0.len() == 500)).await.unwrap();
    assert!(got.iter().all(|r| r.value["value"].as_i64().unwrap() % 2 == 0));
    let deadline = Instant::now() + WAIT;
    while committed(&workers(&cp).await) != 500 {
        assert!(Instant::now() < deadline, "the offset never reached 500 once the topic was back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_ride_out_a_control_plane_restart() {
    let env = TestEnv::new();
    let config = env.config_with(&["--lease-ms", "10000"]);
    let cp = ControlPlane::start(config.clone()).await.unwrap();
    let port = cp.port();
    apply(&mut cp.client().await, &single_plan(2, "double_or_fail"), false).await.unwrap();
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    let before = wait_for_placement(&cp, 1, 2).await;
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..2000)).await;

    // Down briefly (within the lease): the worker keeps processing; commits wait for the control plane.
    cp.stop().await;
    produce(&p, &env.topic("src"), &raws(2000..4000)).await;
    let out = env.topic("out");
    let o = out.clone();
    tokio::task::spawn_blocking(move || read_until(&o, 2, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 4000)).await.unwrap();
    let cp = ControlPlane::start_on(config, port).await.unwrap();
    produce(&p, &env.topic("src"), &raws(4000..5000)).await;
    tokio::task::spawn_blocking(move || read_until(&out, 2, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 5000)).await.unwrap();

    // Same worker, same epochs, and every offset committed through the restarted control plane.
    let deadline = Instant::now() + WAIT;
    loop {
        let ws = workers(&cp).await;
        let live: Vec<&WorkerInfo> = ws.iter().filter(|w| w.live).collect();
        let total: i64 = live.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset.max(0)).sum();
        if live.len() == 1 && total == 5000 {
            assert_eq!(live[0].worker_id, before[0].worker_id, "the worker kept its lease through the restart");
            break;
        }
        assert!(Instant::now() < deadline, "committed {total} of 5000 after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_that_times_out_is_retried_and_nothing_is_skipped() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "slow_first_call")).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start_with(&format!("{}-a", env.id), &cp.addr, &sidecar.url(), &["--sidecar-timeout-ms", "500"]);
    wait_for_placement(&cp, 1, 1).await;
    produce(&producer(), &env.topic("src"), &raws(0..300)).await;
    let out = env.topic("out");
    tokio::task::spawn_blocking(move || read_until(&out, 1, Duration::from_secs(30), |r| distinct_ids(r).0.len() == 300)).await.unwrap();
    let text = http_get(&workers(&cp).await[0].http_address, "/metrics").await;
    assert!(metric(&text, "millrace_unit_restarts_total") >= 1, "the slow batch was not retried:\n{text}");
    cp.stop().await;
    env.cleanup().await;
}
