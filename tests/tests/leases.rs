//! Leases as the control plane grants them now, heartbeats that survive a hiccup, and joins placed together.

use millrace_tests::dataplane::*;
use millrace_tests::proxy::Proxy;
use millrace_tests::stall::StallProxy;
use millrace_tests::*;
use nix::sys::signal::Signal;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Records in a topic (the sum of its partitions' high watermarks): what was ever produced to it.
fn written(topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("consumer");
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, WAIT).expect("watermarks").1).sum()
}

/// How long the lease of worker `id` has left, by the control plane's word; None once the worker is not live.
async fn lease_left(cp: &ControlPlane, id: &str) -> Option<Duration> {
    let ws = workers(cp).await;
    let w = ws.iter().find(|w| w.worker_id == id && w.live)?;
    let t = w.lease_expires_at.as_ref()?;
    let expires = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    Some(expires.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A worker registered with a control plane whose lease is 30 s, which is then restarted with a 3 s lease; returns
/// once the restarted control plane renewed the worker's lease (that is, answered one of its heartbeats).
struct Restarted {
    env: TestEnv,
    cp: ControlPlane,
    worker: Worker,
    worker_id: String,
    held: HashMap<String, u64>,
    /// Between the worker and the control plane, when asked for.
    proxy: Option<Proxy>,
    _sidecar: Sidecar,
}

const SHORT_LEASE: Duration = Duration::from_secs(3);

async fn restarted_with_a_shorter_lease(proxied: bool) -> Restarted {
    let env = TestEnv::new();
    let cp = ControlPlane::start(env.config_with(&["--lease-ms", "30000"])).await.expect("control plane starts");
    apply(&mut cp.client().await, &single_plan(2, "double_or_fail"), false).await.expect("plan applied");
    let port = cp.port();
    let sidecar = Sidecar::start().await;
    let proxy = if proxied { Some(Proxy::start(format!("127.0.0.1:{port}")).await) } else { None };
    let url = proxy.as_ref().map_or(cp.addr.clone(), Proxy::url);
    // Deliveries within 800 ms fit the short lease too (at most 30% of it), so the worker keeps its producer.
    let worker = Worker::start_with(&format!("{}-a", env.id), &url, &sidecar.url(), &["--produce-timeout-ms", "800"]);
    let placed = wait_for_placement(&cp, 1, 2).await;
    let (worker_id, held) = (placed[0].worker_id.clone(), units_of(&placed, &worker.name));
    produce(&producer(), &env.topic("src"), &raws(0..100)).await;
    read_topic(env.topic("out"), 2, |r| distinct_ids(r).0.len() == 100).await;

    cp.stop().await;
    let cp = ControlPlane::start_on(env.config_with(&["--lease-ms", &SHORT_LEASE.as_millis().to_string()]), port).await.expect("restarts");
    // The first heartbeat the restarted control plane answers sets the lease to 3 s (it was 30 s).
    let deadline = Instant::now() + WAIT;
    loop {
        let left = lease_left(&cp, &worker_id).await;
        if left.is_some_and(|l| l < Duration::from_secs(5)) {
            break;
        }
        assert!(left.is_some() && Instant::now() < deadline, "the worker never heartbeat the restarted control plane: lease left {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Restarted { env, cp, worker, worker_id, held, proxy, _sidecar: sidecar }
}

/// Paused and cut off from the control plane (but not from the broker) past the restarted control plane's shorter
/// lease, a worker must count its lease with that length: it produces nothing for units Postgres already moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_worker_produces_nothing_once_the_shorter_lease_of_a_restarted_control_plane_ran_out() {
    let mut r = restarted_with_a_shorter_lease(true).await;
    let proxy = r.proxy.take().expect("proxied");
    let out = r.env.topic("out");

    r.worker.signal(Signal::SIGSTOP);
    let paused = Instant::now();
    // The zombie: it reaches the broker, not the control plane.
    proxy.silence();
    produce(&producer(), &r.env.topic("src"), &raws(100..200)).await;
    let deadline = Instant::now() + WAIT;
    while lease_left(&r.cp, &r.worker_id).await.is_some() {
        assert!(Instant::now() < deadline, "the paused worker kept its lease in Postgres");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep((paused + SHORT_LEASE + Duration::from_secs(2)).saturating_duration_since(Instant::now())).await;
    let before = written(&out, 2);
    r.worker.signal(Signal::SIGCONT);
    // Under the 30 s lease it was registered with, it would go on for 20 s more: its units read the new records and
    // produce their outputs.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = written(&out, 2);
    assert_eq!(
        after - before,
        0,
        "the worker produced {} outputs after its {SHORT_LEASE:?} lease ran out (paused {:?} ago), for units Postgres had moved",
        after - before,
        paused.elapsed()
    );

    // Back on the network it registers again and does the work, losing nothing.
    proxy.restore();
    read_topic(out, 2, |r| distinct_ids(r).0.len() == 200).await;
    r.cp.stop().await;
    r.env.cleanup().await;
}

/// A worker heartbeats as often as the restarted control plane's shorter lease needs (not at the interval it was
/// given at registration), so it keeps its registration and its units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_keeps_its_units_under_the_shorter_lease_of_a_restarted_control_plane() {
    let r = restarted_with_a_shorter_lease(false).await;
    tokio::time::sleep(SHORT_LEASE * 3).await;
    let ws = workers(&r.cp).await;
    let live: Vec<(&str, &str)> = ws.iter().filter(|w| w.live).map(|w| (w.name.as_str(), w.worker_id.as_str())).collect();
    assert_eq!(live, vec![(r.worker.name.as_str(), r.worker_id.as_str())], "the worker lost its lease and registered again: {ws:?}");
    assert_eq!(units_of(&ws, &r.worker.name), r.held, "its units moved");
    produce(&producer(), &r.env.topic("src"), &raws(100..200)).await;
    read_topic(r.env.topic("out"), 2, |r| distinct_ids(r).0.len() == 200).await;
    r.cp.stop().await;
    r.env.cleanup().await;
}

/// One heartbeat that never gets an answer, well within the lease: the worker tries again at once, keeps its
/// lease, and no unit moves or restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_that_gets_no_answer_once_costs_the_worker_no_unit() {
    let env = TestEnv::new();
    let lease = Duration::from_secs(4);
    let cp = ControlPlane::start(env.config_with(&["--lease-ms", &lease.as_millis().to_string()])).await.expect("control plane starts");
    apply(&mut cp.client().await, &single_plan(2, "double_or_fail"), false).await.expect("plan applied");
    let proxy = StallProxy::start(&cp.addr).await;
    let sidecar = Sidecar::start().await;
    let worker = Worker::start(&format!("{}-a", env.id), &proxy.url(), &sidecar.url());
    let placed = wait_for_placement(&cp, 1, 2).await;
    let (worker_id, held) = (placed[0].worker_id.clone(), units_of(&placed, &worker.name));
    produce(&producer(), &env.topic("src"), &raws(0..100)).await;
    read_topic(env.topic("out"), 2, |r| distinct_ids(r).0.len() == 100).await;

    proxy.stall_next_heartbeat();
    let deadline = Instant::now() + WAIT;
    while proxy.stalled() == 0 {
        assert!(Instant::now() < deadline, "the worker sent no heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(lease * 2).await;
    let ws = workers(&cp).await;
    let live: Vec<&str> = ws.iter().filter(|w| w.live).map(|w| w.worker_id.as_str()).collect();
    assert_eq!(live, vec![worker_id.as_str()], "one unanswered heartbeat cost the worker its lease (it registered again): {ws:?}");
    assert_eq!(units_of(&ws, &worker.name), held, "its units moved");
    produce(&producer(), &env.topic("src"), &raws(100..200)).await;
    read_topic(env.topic("out"), 2, |r| distinct_ids(r).0.len() == 200).await;
    cp.stop().await;
    env.cleanup().await;
}

/// Where each placed unit is, by (worker id, epoch).
async fn placements(cp: &mut millrace_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>) -> HashMap<String, (String, u64)> {
    let ws = cp.list_workers(millrace_proto::v1::ListWorkersRequest {}).await.expect("ListWorkers").into_inner().workers;
    ws.into_iter().filter(|w| w.live).flat_map(|w| w.assignments.into_iter().map(move |a| (a.unit_id, (w.worker_id.clone(), a.epoch)))).collect()
}

/// Workers joining one shortly after another are placed by one round: no more units move than balance needs
/// (12 units on one worker, three more join: 9 moves), and none moves twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_within_a_moment_move_no_more_units_than_one_round_would() {
    let env = TestEnv::new();
    // A quiet time longer than the default, so that workers started 150 ms apart on a loaded machine still join
    // within it: what is tested is that joins within the quiet time make one round.
    let cp = ControlPlane::start(env.config_with(&["--lease-ms", TEST_LEASE_MS, "--join-quiet-ms", "1500"])).await.expect("control plane starts");
    apply(&mut cp.client().await, &single_plan(12, "double_or_fail"), false).await.expect("plan applied");
    let sidecar = Sidecar::start().await;
    let mut ws = vec![Worker::start(&format!("{}-0", env.id), &cp.addr, &sidecar.url())];
    wait_for_placement(&cp, 1, 12).await;
    // Moves are counted as they happen (a unit's worker or epoch changing), polled faster than rounds follow joins:
    // epochs alone do not say how many times a unit moved.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = {
        let (done, mut client) = (done.clone(), cp.client().await);
        tokio::spawn(async move {
            let mut last = placements(&mut client).await;
            let mut moves = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = placements(&mut client).await;
                moves += now.iter().filter(|(u, p)| last.get(*u) != Some(*p)).count();
                last = now;
            }
            moves
        })
    };
    for i in 1..4 {
        ws.push(Worker::start(&format!("{}-{i}", env.id), &cp.addr, &sidecar.url()));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_for_placement(&cp, 4, 12).await;
    // Settled: later rounds move nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let moves = counter.await.expect("counter");
    println!("3 workers joining 150 ms apart: {moves} unit moves (one round: 9)");
    assert!(moves <= 9, "3 workers joining 150 ms apart moved units {moves} times; one round for all of them moves 9");
    cp.stop().await;
    env.cleanup().await;
}
