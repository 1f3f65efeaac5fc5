//! Clients given several control plane addresses (`--control-plane a,b`): a worker with a dead address first
//! registers and keeps its units; a worker whose control plane stops moves to the next one without losing its
//! registration; the CLI answers with a dead address first.

use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

fn lease() -> Duration {
    Duration::from_millis(TEST_LEASE_MS.parse().expect("a number"))
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The live worker `name` as `cp` sees it: (worker id, generation, its units with their epochs).
async fn registration(cp: &ControlPlane, name: &str) -> Option<(String, u64, HashMap<String, u64>)> {
    let ws = workers(cp).await;
    let w = ws.iter().find(|w| w.name == name && w.live)?;
    Some((w.worker_id.clone(), w.generation, units_of(&ws, name)))
}

/// Records `from..to` go in and come out of the transform (doubled into `out`), every one.
async fn flows(env: &TestEnv, from: i64, to: i64) {
    produce(&producer(), &env.topic("src"), &raws(from..to)).await;
    let want: std::collections::HashSet<String> = (from..to).map(|i| format!("id-{i}")).collect();
    let got = read_topic(env.topic("out"), 2, move |r| want.iter().all(|id| distinct_ids(r).0.contains(id))).await;
    let (ids, _) = distinct_ids(&got);
    assert!((from..to).all(|i| ids.contains(&format!("id-{i}"))), "records {from}..{to} did not all come through");
}

/// Over three whole leases, the worker keeps the registration and units it had: its lease never lapsed.
async fn keeps(cp: &ControlPlane, name: &str, had: &(String, u64, HashMap<String, u64>)) {
    let until = Instant::now() + lease() * 3;
    while Instant::now() < until {
        let now = registration(cp, name).await;
        assert_eq!(now.as_ref(), Some(had), "the worker lost its registration or its units");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_given_a_dead_address_first_registers_runs_its_units_and_keeps_them() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(2, "double_or_fail")).await;
    let sidecar = Sidecar::start().await;
    let list = format!("http://127.0.0.1:{},{}", dead_port(), cp.addr);
    let worker = Worker::start(&format!("{}-a", env.id), &list, &sidecar.url());
    wait_for_placement(&cp, 1, 2).await;
    let had = registration(&cp, &worker.name).await.expect("registered");
    assert_eq!(had.2.len(), 2);
    flows(&env, 0, 100).await;
    keeps(&cp, &worker.name, &had).await;
    flows(&env, 100, 200).await;
    drop(worker);
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_control_plane_stops_moves_to_the_next_and_keeps_its_generation_and_units() {
    let env = TestEnv::new();
    let first = control_plane_with(&env, &single_plan(2, "double_or_fail")).await;
    // A second control plane on the same database: either serves the worker protocol.
    let second = ControlPlane::start(env.config_with(&["--lease-ms", TEST_LEASE_MS])).await.expect("second control plane starts");
    let sidecar = Sidecar::start().await;
    let worker = Worker::start(&format!("{}-a", env.id), &format!("{},{}", first.addr, second.addr), &sidecar.url());
    wait_for_placement(&second, 1, 2).await;
    let had = registration(&second, &worker.name).await.expect("registered");
    flows(&env, 0, 100).await;

    first.stop().await;
    keeps(&second, &worker.name, &had).await;
    flows(&env, 100, 200).await;
    let metrics = metrics_of(&second, &worker.name).await;
    assert_eq!(metric(&metrics, "millrace_commits_refused_total"), 0, "no commit was fenced: {metrics}");
    drop(worker);
    second.stop().await;
    env.cleanup().await;
}

/// A control plane host that vanishes without closing its connections (a proxy gone silent): the heartbeat that gets
/// no answer gives way to the next address at once, so the worker keeps its lease without waiting for keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_control_plane_goes_silent_moves_to_the_next_within_the_lease() {
    let env = TestEnv::new();
    let first = control_plane_with(&env, &single_plan(2, "double_or_fail")).await;
    let second = ControlPlane::start(env.config_with(&["--lease-ms", TEST_LEASE_MS])).await.expect("second control plane starts");
    let proxy = millrace_tests::proxy::Proxy::start(first.addr.trim_start_matches("http://").to_string()).await;
    let sidecar = Sidecar::start().await;
    let worker = Worker::start(&format!("{}-a", env.id), &format!("{},{}", proxy.url(), second.addr), &sidecar.url());
    wait_for_placement(&second, 1, 2).await;
    let had = registration(&second, &worker.name).await.expect("registered");
    flows(&env, 0, 100).await;

    proxy.silence();
    keeps(&second, &worker.name, &had).await;
    flows(&env, 100, 200).await;
    drop(worker);
    first.stop().await;
    second.stop().await;
    env.cleanup().await;
}

fn millrace() -> String {
    let dir = std::env::var("MILLRACE_BIN_DIR").unwrap_or_else(|_| format!("{}/../target/debug", env!("CARGO_MANIFEST_DIR")));
    format!("{dir}/millrace")
}

/// `millrace <args>` with `MILLRACE_CONTROL_PLANE` set to `list`; (success, stdout, stderr).
async fn run(list: String, args: &'static [&'static str]) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(millrace()).env("MILLRACE_CONTROL_PLANE", list).args(args).output().expect("run millrace");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("millrace ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_with_a_dead_address_first_and_names_a_bad_one() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 2)).await;
    let host_port = cp.addr.trim_start_matches("http://").to_string();
    let list = format!("127.0.0.1:{}, {host_port}", dead_port());
    let (ok, out, err) = run(list.clone(), &["ls"]).await;
    assert!(ok && out.contains("POST /ingest/events -> events"), "{out}{err}");
    let (ok, out, err) = run(list.clone(), &["status"]).await;
    assert!(ok && out.contains("table_sync/events/0"), "{out}{err}");

    let (dead1, dead2) = (dead_port(), dead_port());
    let (ok, _, err) = run(format!("127.0.0.1:{dead1},127.0.0.1:{dead2}"), &["ls"]).await;
    assert!(!ok && err.contains("cannot be reached") && err.contains(&dead1.to_string()) && err.contains(&dead2.to_string()), "{err}");
    let (ok, _, err) = run(format!("{host_port},cp.example"), &["ls"]).await;
    assert!(!ok && err.contains("\"cp.example\" has no port") && err.contains("write host:port"), "{err}");
    cp.stop().await;
    env.cleanup().await;
}
