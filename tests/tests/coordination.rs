//! The worker's link to the control plane: a control plane host that vanishes without closing its connections
//! is noticed within seconds, and the worker joins again once it is back.

use millrace_tests::dataplane::*;
use millrace_tests::proxy::Proxy;
use millrace_tests::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_that_vanishes_silently_is_noticed_and_rejoined() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(1, "double_or_fail")).await;
    let proxy = Proxy::start(cp.addr.trim_start_matches("http://").to_string()).await;
    let sidecar = Sidecar::start().await;
    let name = format!("{}-a", env.id);
    let _w = Worker::start(&name, &proxy.url(), &sidecar.url());
    let before = wait_for_placement(&cp, 1, 1).await;
    produce(&producer(), &env.topic("src"), &raws(0..100)).await;
    read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 100).await;

    // The host goes silent: every open connection hangs, none is reset.
    proxy.silence();
    let silenced = Instant::now();
    let deadline = Instant::now() + WAIT;
    while workers(&cp).await.iter().any(|w| w.live) {
        assert!(Instant::now() < deadline, "the silent worker kept its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its units stop on the worker's own view of the lease.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = http_get(&before[0].http_address, "/metrics").await;
        if metric(&text, "millrace_units") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "units kept running without a lease:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("silent control plane: units stopped {:?} after it went silent", silenced.elapsed());

    // Back on the network (new connections work; the old ones stay dead): the worker must drop its dead
    // connection and register again.
    proxy.restore();
    let restored = Instant::now();
    let deadline = Instant::now() + WAIT;
    let rejoined = loop {
        let ws = workers(&cp).await;
        if ws.iter().any(|w| w.live && w.name == name && w.worker_id != before[0].worker_id && w.assignments.len() == 1) {
            break restored.elapsed();
        }
        assert!(Instant::now() < deadline, "the worker never registered again: {ws:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("silent control plane: the worker rejoined {rejoined:?} after it came back");
    assert!(rejoined < Duration::from_secs(15), "rejoined only after {rejoined:?}");
    produce(&producer(), &env.topic("src"), &raws(100..200)).await;
    read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 200).await;
    cp.stop().await;
    env.cleanup().await;
}
