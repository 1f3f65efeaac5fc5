//! No record stalls a partition: a record too large for the sidecar, an output too large for the broker, a
//! sidecar that crashes or stalls on one record each end with that record in the dead letter queue and every other
//! record delivered. And a SIGTERM hands a worker's units over at once, without duplicates.

use millrace_tests::dataplane::*;
use millrace_tests::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// Runs `function` over records 0..n of a one-partition source (`values` where given), and checks that every
/// record but `bad` reaches the destination and `bad` reaches the dead letter queue with `error_type`.
async fn isolates(env: &TestEnv, cp: &ControlPlane, values: Vec<serde_json::Value>, bad: i64, error_type: &str) -> serde_json::Value {
    let n = values.len();
    produce_values(&producer(), &env.topic("src"), &values).await;
    let out = read_topic(env.topic("out"), 1, move |r| distinct_ids(r).0.len() == n - 1).await;
    assert!(!numbers(&out).contains(&bad), "the bad record was delivered");
    let letters = read_topic(env.topic("src_dlq"), 1, |r| !r.is_empty()).await;
    let letter = letters[0].value.clone();
    assert_eq!(letter["originalRecord"]["id"], format!("id-{bad}"), "{letter}");
    assert_eq!(letter["errorType"], error_type, "{letter}");
    assert_eq!((letter["source"].as_str(), letter["offset"].as_i64()), (Some("transform"), Some(bad)), "{letter}");
    let committed = workers(cp).await.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset).max();
    let deadline = Instant::now() + WAIT;
    let mut committed = committed;
    while committed != Some(n as i64) {
        assert!(Instant::now() < deadline, "the partition did not move past the bad record: committed {committed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        committed = workers(cp).await.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset).max();
    }
    letter
}

fn plain(range: std::ops::Range<i64>) -> Vec<serde_json::Value> {
    range.map(|i| serde_json::json!({ "id": format!("id-{i}"), "value": i })).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100kb_record_in_a_batch_of_1000_goes_to_the_dead_letter_queue_and_the_rest_through() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "double_or_fail")).await;
    // The sidecar takes messages up to 64 KiB; the worker keeps batches under 32 KiB.
    let sidecar = Sidecar::start_with_limit(64 << 10).await;
    let _w = Worker::start_with(&format!("{}-a", env.id), &cp.addr, &sidecar.url(), &["--batch-max-bytes", "32768"]);
    wait_for_placement(&cp, 1, 1).await;
    let mut values = plain(0..1000);
    values[500]["pad"] = serde_json::Value::String("x".repeat(100_000));
    let letter = isolates(&env, &cp, values, 500, "RecordTooLarge").await;
    assert_eq!(letter["originalRecord"]["pad"].as_str().map(str::len), Some(100_000), "the dead letter keeps the record");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_over_the_brokers_limit_sends_its_input_to_the_dead_letter_queue() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "inflate")).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 1).await;
    let letter = isolates(&env, &cp, plain(0..300), 7, "OutputTooLarge").await;
    assert!(letter["errorMessage"].as_str().unwrap().contains("over the broker's limit"), "{letter}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_that_aborts_on_one_record_loses_only_that_record_to_the_dead_letter_queue() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "abort_on_13")).await;
    let sidecar = SidecarProcess::start();
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 1).await;
    isolates(&env, &cp, plain(0..500), 13, "SidecarCrashed").await;
    let crashes = sidecar.restarts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(crashes >= 3, "the sidecar crashed only {crashes} times: the record was condemned too early");
    println!("sidecar abort: the record was isolated after {crashes} crashes");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_slower_than_the_sidecar_timeout_is_isolated() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "sleep_on_13")).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start_with(&format!("{}-a", env.id), &cp.addr, &sidecar.url(), &["--sidecar-timeout-ms", "1000"]);
    wait_for_placement(&cp, 1, 1).await;
    isolates(&env, &cp, plain(0..100), 13, "SidecarTimeout").await;
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_hands_units_over_at_once_without_duplicates() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(4, "double_or_fail")).await;
    let sidecar = Sidecar::start().await;
    let Pair { a: mut wa, b: wb, moving: moved, .. } = Pair::start(&env, &cp, &sidecar.url(), 4).await;
    let b = wb.name.clone();
    let load = Load::start(env.topic("src"));
    read_topic(env.topic("out"), 4, |r| r.len() >= 1000).await;

    wa.signal(Signal::SIGTERM);
    let termed = Instant::now();
    // Held by B at a newer epoch, then committing past where A left off.
    let deadline = Instant::now() + WAIT;
    let (taken, left_at) = loop {
        let ws = workers(&cp).await;
        let on_b = units_of(&ws, &b);
        if moved.iter().all(|(u, e)| on_b.get(u).is_some_and(|e2| e2 > e)) {
            let offsets: std::collections::HashMap<String, i64> =
                ws.iter().flat_map(|w| &w.assignments).map(|x| (x.unit_id.clone(), x.committed_offset)).collect();
            break (termed.elapsed(), offsets);
        }
        assert!(Instant::now() < deadline, "A's units did not move: {on_b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resumed = loop {
        let ws = workers(&cp).await;
        let progressed = moved.keys().all(|u| {
            ws.iter().flat_map(|w| &w.assignments).any(|x| &x.unit_id == u && x.committed_offset > left_at[u])
        });
        if progressed {
            break termed.elapsed();
        }
        assert!(Instant::now() < deadline, "A's units did not resume on B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = tokio::task::spawn_blocking(move || wa.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the worker exited with {status}");
    let total = load.stop().await;
    let got = read_topic(env.topic("out"), 4, move |r| distinct_ids(r).0.len() == total as usize).await;
    let dups = distinct_ids(&got).1;
    println!("SIGTERM: units held by B {taken:?} after the signal, committing there {resumed:?} after; {total} ids, {dups} duplicates");
    assert_eq!(dups, 0, "a clean hand-over duplicated records");
    // One second, plus a scheduling round (a quarter lease), plus a progress report.
    let bound = Duration::from_millis(1000 + TEST_LEASE_MS.parse::<u64>().unwrap() / 4 + 200);
    assert!(resumed < bound, "resumed {resumed:?} after SIGTERM (bound {bound:?})");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_crashes_a_shared_sidecar_condemns_no_other_partitions_records() {
    use rdkafka::producer::FutureRecord;
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(2, "abort_on_13_slow_past_999")).await;
    // One sidecar process serves both partitions' units: each crash breaks both units' streams, and partition 1's
    // slow batches are always half done when it comes.
    let sidecar = SidecarProcess::start();
    let _w = Worker::start_with(&format!("{}-a", env.id), &cp.addr, &sidecar.url(), &["--batch-size", "64"]);
    wait_for_placement(&cp, 1, 2).await;
    let p = producer();
    let send = |partition: i32, i: i64| {
        let v = serde_json::json!({ "id": format!("id-{i}"), "value": i }).to_string();
        let f = p.send_result(FutureRecord::to(&env.topic("src")).partition(partition).key(&format!("id-{i}")).payload(&v)).map_err(|(e, _)| e).unwrap();
        async move { f.await.unwrap().unwrap() }
    };
    // Partition 1's three records take six seconds as one batch, and 13 crashes the process 1.5 s into its batch:
    // after each crash both units start again together, so every crash while partition 0 isolates its poison record
    // breaks partition 1's batch half done. Counted against partition 1 (as they were before probation), five such
    // crashes condemn one of its records.
    futures::future::join_all((1000..1003).map(|i| send(1, i))).await;
    futures::future::join_all((0..200).map(|i| send(0, i))).await;
    let out_topic = env.topic("out");
    let out = tokio::task::spawn_blocking(move || read_until(&out_topic, 2, 4 * WAIT, |r| distinct_ids(r).0.len() >= 202)).await.unwrap();
    assert_eq!(distinct_ids(&out).0.len(), 202);
    let letters = read_quiet(env.topic("src_dlq"), 1, Duration::from_secs(2)).await;
    let ids: Vec<&serde_json::Value> = letters.iter().map(|l| &l.value["originalRecord"]["id"]).collect();
    assert_eq!(ids, vec!["id-13"], "only the crashing record is condemned");
    println!("shared sidecar: the poison record isolated after {} crashes", sidecar.restarts.load(std::sync::atomic::Ordering::SeqCst));
    cp.stop().await;
    env.cleanup().await;
}
