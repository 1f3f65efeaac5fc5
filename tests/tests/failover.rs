//! Two control planes against one Postgres, as real processes: kill -9 of the leader under load. The other leads
//! within 5 s, the worker keeps its registration and its units their epochs (no unit stopped), and every record
//! arrives. The worker is given both addresses, leader first, and moves to the next one when the first fails; or
//! (the second test) one address, of a TCP balancer in front of both, as a deployment may have.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::replicas::Replica;
use millrace_tests::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The workers' lease: far longer than a failover, so that only a fault would cost one.
const WORKER_LEASE_MS: &str = "10000";
const LEADER_LEASE_MS: &str = "3000";

/// The live workers as `cp` lists them: name -> (generation, unit -> epoch).
async fn placement(cp: &Replica) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
    let listed = cp.client().await.list_workers(ListWorkersRequest {}).await.expect("ListWorkers").into_inner();
    listed
        .workers
        .into_iter()
        .filter(|w| w.live)
        .map(|w| (w.name, (w.generation, w.assignments.into_iter().map(|a| (a.unit_id, a.epoch)).collect())))
        .collect()
}

/// A TCP balancer on loopback: each connection goes to the first of `targets` that accepts it.
async fn balancer(targets: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let targets = targets.clone();
            tokio::spawn(async move {
                for t in &targets {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(t).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_fails_over_within_5_s_and_no_worker_stops() {
    failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_balancer_kill_9_of_the_leader_fails_over_within_5_s_and_no_worker_stops() {
    failover(true).await;
}

async fn failover(via_balancer: bool) {
    let env = TestEnv::new();
    let flags = ["--lease-ms", WORKER_LEASE_MS, "--leader-lease-ms", LEADER_LEASE_MS];
    let mut a = Replica::start(&env, "cp-a", &flags).await;
    a.wait_to_lead(WAIT).await;
    let b = Replica::start(&env, "cp-b", &flags).await;
    assert!(!b.leads().await, "two leaders at once");

    // An apply sent to the follower is made by the leader.
    let plan = single_plan(2, "double_or_fail");
    let applied = apply(&mut b.client().await, &plan, false).await.expect("an apply through the follower");
    assert!(applied.apply_id > 0, "the forwarded apply recorded nothing: {applied:?}");
    let status = b.status().await.expect("the follower answers");
    assert_eq!((status.leader_address.as_str(), status.is_leader), (a.listen.as_str(), false), "{status:?}");

    let sidecar = Sidecar::start().await;
    let name = format!("{}-w", env.id);
    let addresses = if via_balancer { balancer(vec![a.listen.clone(), b.listen.clone()]).await } else { format!("{},{}", a.url(), b.url()) };
    let _worker = Worker::start(&name, &addresses, &sidecar.url());
    let deadline = Instant::now() + WAIT;
    let before = loop {
        let p = placement(&b).await;
        if p.get(&name).is_some_and(|(_, units)| units.len() == 2) {
            break p;
        }
        assert!(Instant::now() < deadline, "the worker never held both units: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Records flow before, during and after the failover.
    let load = Load::start(env.topic("src"));
    load.wait_past(1_000).await;
    let killed = Instant::now();
    a.kill9();
    b.wait_to_lead(Duration::from_secs(10)).await;
    let failover = killed.elapsed();
    println!("failover ({}): {} led {:.2} s after kill -9 of the leader", if via_balancer { "balancer" } else { "address list" }, b.listen, failover.as_secs_f64());
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    let status = b.status().await.expect("the new leader answers");
    assert_eq!(status.leader_address, b.listen);
    // The load goes on past one worker lease after the kill: a worker that reached no other control plane would
    // have lost its lease, its registration and its units by then.
    let lease = Duration::from_millis(WORKER_LEASE_MS.parse().unwrap());
    while killed.elapsed() < lease + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let produced = load.stop().await;
    let out = read_topic(env.topic("out"), 2, move |r| numbers(r).len() as i64 == produced).await;
    let (ids, duplicates) = distinct_ids(&out);
    assert_eq!(ids.len() as i64, produced, "records lost");
    println!("records: {produced} produced, {} out, {duplicates} duplicates", out.len());
    // Every offset committed, through the new leader (one record per id in 0..produced, in 2 partitions).
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = b.client().await.list_workers(ListWorkersRequest {}).await.expect("ListWorkers").into_inner();
        let committed: i64 = listed.workers.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset.max(0)).sum();
        if committed == produced {
            break;
        }
        assert!(Instant::now() < deadline, "committed offsets add up to {committed}, not {produced}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Same registration, same epochs: no unit was stopped, moved or restarted.
    let after = placement(&b).await;
    assert_eq!(after, before, "the worker lost its registration or its units changed epochs across the failover");
    let log = std::fs::read_to_string(std::env::temp_dir().join("millrace-test-logs").join(format!("{name}.log"))).expect("the worker's log");
    for sign in ["unit revoked", "lease lost", "lease ran out", "registering again"] {
        assert!(!log.contains(sign), "the worker logged {sign:?} across the failover");
    }
    // An apply after the failover is made by the new leader.
    apply(&mut b.client().await, &plan, false).await.expect("an apply on the new leader");
    drop(b);
    env.cleanup().await;
}
