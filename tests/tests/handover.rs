//! A planned move between two live workers (a worker joins under load) hands each unit over: the old holder
//! finishes what it has in flight, commits, and lets go before the new one starts. So nothing is processed twice
//! and each key's records stay in order.

use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const KEYS: i64 = 20;
const PER_KEY: i64 = 300;

/// Records keyed `k<n>` with values counting up per key, produced in chunks over about three seconds.
async fn produce_flow(topic: String) {
    let p = producer();
    let all: Vec<(String, Vec<u8>)> = (0..PER_KEY)
        .flat_map(|v| (0..KEYS).map(move |k| (k, v)))
        .map(|(k, v)| {
            let id = format!("k{k}");
            let value = serde_json::to_vec(&serde_json::json!({ "id": id, "value": v })).unwrap();
            (id, value)
        })
        .collect();
    for chunk in all.chunks(200) {
        produce_keyed(&p, &topic, chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_joining_under_load_takes_units_over_with_no_duplicate_and_order_kept() {
    let env = TestEnv::new();
    // A millisecond a record keeps batches in flight at the sidecar when units move.
    let cp = control_plane_with(&env, &single_plan(4, "pause_1ms")).await;
    let sidecar = Sidecar::start().await;
    let _a = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 4).await;

    let flow = tokio::spawn(produce_flow(env.topic("src")));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let b = Worker::start(&format!("{}-b", env.id), &cp.addr, &sidecar.url());
    let placed = wait_for_placement(&cp, 2, 4).await;
    assert!(!units_of(&placed, &b.name).is_empty(), "no unit moved to the new worker: {placed:?}");
    flow.await.expect("producer");

    let total = (KEYS * PER_KEY) as usize;
    let pairs = |r: &[Read]| r.iter().map(|r| (r.value["id"].as_str().unwrap_or_default().to_string(), r.value["value"].as_i64().unwrap_or(-1))).collect::<HashSet<_>>();
    let out = read_topic(env.topic("out"), 4, move |r| pairs(r).len() >= total).await;
    let distinct = pairs(&out);
    assert_eq!(distinct.len(), total, "records lost");
    let duplicates = out.len() - distinct.len();
    // Each key's values, in the order its (one) output partition holds them.
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut out_of_order = 0;
    for r in &out {
        let (id, v) = (r.value["id"].as_str().unwrap_or_default().to_string(), r.value["value"].as_i64().unwrap_or(-1));
        if last.get(&id).is_some_and(|&l| v <= l) {
            out_of_order += 1;
        }
        last.insert(id, v);
    }
    println!("handover: {total} records, {duplicates} duplicates, {out_of_order} out of order");
    assert_eq!(duplicates, 0, "records processed twice when units moved to the joining worker");
    assert_eq!(out_of_order, 0, "a key's records went out of order when units moved");
    cp.stop().await;
    env.cleanup().await;
}
