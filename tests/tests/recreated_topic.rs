//! An external topic deleted and created again outside Millrace: its offsets start over, below what was committed.
//! The units read the new topic from its beginning and say so; none of its records is skipped.

use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::time::{Duration, Instant};

/// The committed offset of the one unit of `function`, once `want` holds (within WAIT).
async fn committed_when(cp: &ControlPlane, function: &str, want: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let offsets: Vec<i64> = workers(cp)
            .await
            .iter()
            .filter(|w| w.live)
            .flat_map(|w| &w.assignments)
            .filter(|a| a.unit_id.contains(function))
            .map(|a| a.committed_offset)
            .collect();
        if let [o] = offsets[..] {
            if want(o) {
                return o;
            }
        }
        assert!(Instant::now() < deadline, "the committed offset of {function} never became what was wanted: {offsets:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An external topic of 100 records transformed into `out` by one worker, every record committed.
async fn all_of_the_first_topic_committed(env: &TestEnv) -> (String, ControlPlane, Sidecar, Worker) {
    let plan = external_topic_plan(env, 1, 100).await;
    let cp = control_plane_with(env, &plan).await;
    let sidecar = Sidecar::start().await;
    let worker = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    committed_when(&cp, "ext_to_out", |o| o == 100).await;
    (env.topic("ext"), cp, sidecar, worker)
}

/// Recreates `topic` (one partition) with records `range`.
async fn recreate(env: &TestEnv, topic: &str, range: std::ops::Range<i64>) {
    env.delete_topic(topic).await;
    env.create_topic(topic, 1).await;
    produce(&producer(), topic, &raws(range)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_recreated_while_no_worker_runs_is_read_from_its_beginning() {
    let env = TestEnv::new();
    let (ext, cp, sidecar, worker) = all_of_the_first_topic_committed(&env).await;
    drop(worker);

    // The new topic holds 30 records, fewer than the 100 committed: each of them is new.
    recreate(&env, &ext, 1000..1030).await;
    let worker = Worker::start(&format!("{}-b", env.id), &cp.addr, &sidecar.url());
    let out = read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() >= 130).await;
    let ids = distinct_ids(&out).0;
    assert!((1000..1030).all(|i| ids.contains(&format!("id-{i}"))), "records of the recreated topic were skipped: {} distinct outputs of 130", ids.len());
    // The offset goes back to the new topic's, and records after them are read once.
    committed_when(&cp, "ext_to_out", |o| o == 30).await;
    produce(&producer(), &ext, &raws(1030..1040)).await;
    committed_when(&cp, "ext_to_out", |o| o == 40).await;
    let metrics = metrics_of(&cp, &worker.name).await;
    assert!(metric(&metrics, "millrace_source_recreated_total") >= 1, "the recreation was not reported:\n{metrics}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_recreated_under_a_running_worker_is_read_from_its_beginning_and_committed_there() {
    let env = TestEnv::new();
    let (ext, cp, sidecar, worker) = all_of_the_first_topic_committed(&env).await;

    recreate(&env, &ext, 2000..2030).await;
    // librdkafka (2.12) may crash (a segfault in its main thread) when a topic it reads is deleted on Tansu: then the
    // worker is started again, as `millrace dev` or any supervisor would, and finds the topic recreated on start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut worker = worker;
    if let Some(status) = worker.exited() {
        eprintln!("the worker exited when its topic was deleted ({status}); starting it again");
        worker = Worker::start(&format!("{}-a2", env.id), &cp.addr, &sidecar.url());
    }
    let out = read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() >= 130).await;
    let ids = distinct_ids(&out).0;
    assert!((2000..2030).all(|i| ids.contains(&format!("id-{i}"))), "records of the recreated topic were skipped: {} distinct outputs of 130", ids.len());
    // Committed at the new topic's offset: a restart would otherwise skip the new topic's records up to 100.
    committed_when(&cp, "ext_to_out", |o| o == 30).await;
    drop(worker);
    produce(&producer(), &ext, &raws(2030..2040)).await;
    let _worker = Worker::start(&format!("{}-b", env.id), &cp.addr, &sidecar.url());
    let out = read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() >= 140).await;
    assert!(distinct_ids(&out).0.contains("id-2039"), "records after the recreation were skipped after a restart");
    cp.stop().await;
    env.cleanup().await;
}
