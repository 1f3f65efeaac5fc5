//! What a control plane's restart and a plan's churn must not undo: committed offsets survive a restart even
//! when the broker cannot be asked for partition counts, and a unit removed then declared again never reuses an
//! epoch a stale holder could still commit at.

use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Committed offsets of every assigned unit, by unit id.
async fn committed(cp: &ControlPlane) -> BTreeMap<String, i64> {
    workers(cp).await.iter().flat_map(|w| &w.assignments).map(|a| (a.unit_id.clone(), a.committed_offset)).collect()
}

/// A broker address nothing listens on: a control plane pointed there can never read partition counts.
fn dead_broker() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_control_plane_keeps_every_committed_offset() {
    let env = TestEnv::new();
    // An external topic declared without `parallelism`: its three units exist only because the broker said so.
    let ext = env.topic("ext");
    let plan = external_topic_plan(&env, 3, 300).await;
    let cp = control_plane_with(&env, &plan).await;
    let sidecar = Sidecar::start().await;
    let _w = Worker::start(&format!("{}-a", env.id), &cp.addr, &sidecar.url());
    wait_for_placement(&cp, 1, 3).await;
    // Every record processed and committed: offsets start at 0, so the three offsets add up to 300.
    let deadline = Instant::now() + WAIT * 2;
    let before = loop {
        let c = committed(&cp).await;
        if c.len() == 3 && c.values().sum::<i64>() == 300 {
            break c;
        }
        assert!(Instant::now() < deadline, "offsets never reached 300 in all: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The restarted control plane cannot reach the broker: it knows the partition counts only from Postgres.
    let port = cp.port();
    cp.stop().await;
    let mut config = env.config_with(&["--lease-ms", TEST_LEASE_MS]);
    config.kafka_brokers = dead_broker();
    let cp = ControlPlane::start_on(config, port).await.expect("control plane restarts");
    let placed = wait_for_placement(&cp, 1, 3).await;
    let after: BTreeMap<String, i64> =
        placed.iter().flat_map(|w| &w.assignments).map(|a| (a.unit_id.clone(), a.committed_offset)).collect();
    assert_eq!(after, before, "a unit lost its committed offset across the restart");

    // Only new records are processed: none of the first 300 is read again.
    produce(&producer(), &ext, &raws(300..600)).await;
    let out = read_topic(env.topic("out"), 1, |r| distinct_ids(r).0.len() == 600).await;
    assert_eq!(out.len(), 600, "records processed again after the restart: {} outputs for 600 records", out.len());
    cp.stop().await;
    env.cleanup().await;
}

/// The next assignment set sent on `stream`, within WAIT.
async fn next_set(stream: &mut tonic::Streaming<AssignmentSet>) -> AssignmentSet {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an assignment set within WAIT")
        .expect("the assignment stream")
        .expect("the assignment stream stays open")
}

/// The epoch of `unit` in the first set sent that satisfies `want` (None: the unit is absent from the set).
async fn epoch_when(stream: &mut tonic::Streaming<AssignmentSet>, unit: &str, want: impl Fn(Option<u64>) -> bool) -> Option<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let set = next_set(stream).await;
        let epoch = set.assignments.iter().find(|a| a.unit.as_ref().is_some_and(|u| u.unit_id == unit)).map(|a| a.epoch);
        if want(epoch) {
            return epoch;
        }
        assert!(Instant::now() < deadline, "no set with the wanted state of {unit}; last: {set:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_declared_again_gets_an_epoch_above_any_it_had() {
    let env = TestEnv::new();
    let plan = single_plan(1, "double_or_fail");
    let cp = control_plane_with(&env, &plan).await;
    // The test is the worker, so it sees the epochs it is sent and can commit at an old one, as a stale worker would.
    let mut coord = WorkerCoordinatorClient::connect(cp.addr.clone()).await.expect("connect");
    let reg = coord
        .register(RegisterRequest { name: format!("{}-fake", env.id), http_address: "127.0.0.1:1".into(), ..Default::default() })
        .await
        .expect("register")
        .into_inner();
    let heartbeats = {
        let (mut c, worker_id, generation, session) = (coord.clone(), reg.worker_id.clone(), reg.generation, reg.session.clone());
        let every = Duration::from_millis(reg.heartbeat_interval_ms);
        tokio::spawn(async move {
            loop {
                let _ = c.heartbeat(HeartbeatRequest { worker_id: worker_id.clone(), generation, session: session.clone() }).await;
                tokio::time::sleep(every).await;
            }
        })
    };
    let mut stream = coord
        .watch_assignments(WatchAssignmentsRequest { worker_id: reg.worker_id.clone(), generation: reg.generation, session: reg.session.clone() })
        .await
        .expect("watch")
        .into_inner();
    let unit = "transform/src_to_out/0";
    let first = epoch_when(&mut stream, unit, |e| e.is_some()).await.expect("the unit");

    // Removed, then declared again exactly as it was: its row is deleted, then created anew.
    let mut without = plan.clone();
    without.transforms.clear();
    apply(&mut cp.client().await, &without, false).await.expect("the transform removed");
    epoch_when(&mut stream, unit, |e| e.is_none()).await;
    apply(&mut cp.client().await, &plan, false).await.expect("the transform declared again");
    let again = epoch_when(&mut stream, unit, |e| e.is_some()).await.expect("the unit");
    assert!(again > first, "the recreated unit got epoch {again}, not above the {first} it had before its removal");

    // A holder that never saw the removal still runs the unit at its old epoch: its commit is refused.
    let stale = coord
        .report_progress(ReportProgressRequest {
            worker_id: reg.worker_id.clone(),
            generation: reg.generation,
            units: vec![UnitProgress { unit_id: unit.into(), epoch: first, committed_offset: 5, lag: 0, ..Default::default() }],
            session: reg.session.clone(),
        })
        .await
        .expect("report progress")
        .into_inner();
    assert_eq!(stale.revoked, vec![unit.to_string()], "a commit at the old epoch was not refused: {stale:?}");
    heartbeats.abort();
    cp.stop().await;
    env.cleanup().await;
}
