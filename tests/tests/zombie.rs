//! The real zombie: a worker cut off from the control plane while it still reaches the broker (here its only link
//! to the control plane, a proxy the test controls, goes silent: connections hang, none is reset). It is fenced:
//! it produces and commits nothing once its lease is over, its units resume on the other worker, and when the
//! link comes back it joins again cleanly. Nothing is lost.

use millrace_tests::dataplane::*;
use millrace_tests::proxy::Proxy;
use millrace_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cut_off_from_the_control_plane_but_not_the_broker_is_fenced_and_rejoins() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(4, "double_or_fail")).await;
    let proxy = Proxy::start(cp.addr.trim_start_matches("http://").to_string()).await;
    let sidecar = Sidecar::start().await;
    let (a, b) = (format!("{}-a", env.id), format!("{}-b", env.id));
    let _wa = Worker::start(&a, &proxy.url(), &sidecar.url());
    let _wb = Worker::start(&b, &cp.addr, &sidecar.url());
    let placed = wait_for_placement(&cp, 2, 4).await;
    let moving = units_of(&placed, &a);
    assert!(!moving.is_empty(), "the cut-off worker holds no unit: {placed:?}");
    let a_id = placed.iter().find(|w| w.name == a).map(|w| w.worker_id.clone()).unwrap_or_default();
    let p = producer();
    produce(&p, &env.topic("src"), &raws(0..3000)).await;

    proxy.silence();
    let cut = Instant::now();
    // Past its lease, the cut-off worker's units resume on the other one at newer epochs.
    wait_until_moved(&cp, &moving, &b).await;
    let moved_after = cut.elapsed();
    let committed_at_move: HashMap<String, i64> =
        workers(&cp).await.iter().flat_map(|w| w.assignments.iter().map(|a| (a.unit_id.clone(), a.committed_offset))).collect();
    // Outputs carry the unit and epoch that made them: those of the cut-off worker's units at their old epochs.
    let stale = |records: &[Read]| made_at(records, &moving);
    let out = env.topic("out");
    let stale_at_move = stale(&read_quiet(out.clone(), 4, Duration::from_secs(2)).await);
    // Records keep coming while it is cut off, and after.
    produce(&p, &env.topic("src"), &raws(3000..6000)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let restored = Instant::now();
    produce(&p, &env.topic("src"), &raws(6000..8000)).await;
    let got = read_topic(out.clone(), 4, |r| distinct_ids(r).0.len() == 8000).await;

    // It joins again (a new registration), and gets units back by balance.
    let deadline = Instant::now() + WAIT;
    let rejoined = loop {
        if workers(&cp).await.iter().any(|w| w.name == a && w.live && w.worker_id != a_id) {
            break restored.elapsed();
        }
        assert!(Instant::now() < deadline, "the cut-off worker never registered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nothing produced at a stale epoch once its units had moved, and no commit went backwards.
    let stale_after = stale(&read_quiet(out, 4, Duration::from_secs(2)).await);
    assert_eq!(stale_after, stale_at_move, "the cut-off worker produced after its units moved");
    for w in &workers(&cp).await {
        for u in &w.assignments {
            assert!(u.committed_offset >= committed_at_move.get(&u.unit_id).copied().unwrap_or(-1), "a commit went backwards: {u:?}");
        }
    }
    println!(
        "zombie: units moved {moved_after:?} after the cut, rejoined {rejoined:?} after the link came back; 8000 ids delivered, {} duplicates, {stale_at_move} outputs at the old epochs, none after the move",
        distinct_ids(&got).1
    );
    cp.stop().await;
    env.cleanup().await;
}
