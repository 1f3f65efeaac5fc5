//! Applies never starve the coordinator: however many applies hang on a broker that stopped answering, workers'
//! heartbeats keep their leases, and a waiting apply gives up with what to do instead of queueing forever.

use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::{HeartbeatRequest, Plan, RegisterRequest};
use millrace_tests::broker::PrivateBroker;
use millrace_tests::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applies_stuck_on_a_silent_broker_never_cost_a_worker_its_lease() {
    let env = TestEnv::new();
    let broker = PrivateBroker::start().await;
    let mut config = env.config_with(&["--lease-ms", "3000", "--dependency-timeout-ms", "4000", "--apply-wait-ms", "3000"]);
    config.kafka_brokers = broker.addr.clone();
    let cp = ControlPlane::start(config).await.expect("control plane starts");
    let mut coordinator = WorkerCoordinatorClient::connect(cp.addr.clone()).await.expect("connect");
    let reg = coordinator
        .register(RegisterRequest { name: format!("{}-w", env.id), http_address: "127.0.0.1:1".into(), ..Default::default() })
        .await
        .expect("register")
        .into_inner();

    // The broker hangs: an apply hangs on it until the dependency timeout (4 s), and those queued behind it give up
    // after the apply wait (3 s).
    broker.pause();
    let mut applies = Vec::new();
    for i in 0..12 {
        let mut c = cp.client().await;
        let plan = Plan { streams: vec![stream(&format!("s{i}"), raw_fields(), 1)], ..Default::default() };
        applies.push(tokio::spawn(async move { apply(&mut c, &plan, false).await }));
    }
    // For longer than the lease, every heartbeat answers at once (each well within the lease).
    let until = Instant::now() + Duration::from_secs(6);
    let mut beats = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            coordinator.heartbeat(HeartbeatRequest { worker_id: reg.worker_id.clone(), generation: reg.generation, session: reg.session.clone() }),
        )
        .await;
        match answer {
            Ok(Ok(_)) => beats += 1,
            Ok(Err(status)) => panic!("heartbeat {beats} refused while applies hung: {status}"),
            Err(_) => panic!("heartbeat {beats} got no answer within 2 s while applies hung (started {:?} in)", started.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The applies end, each applied or refused saying what to do (the broker was unreachable, or another apply
    // held the lock too long); none hangs past its bounds.
    broker.resume();
    for a in applies {
        match tokio::time::timeout(Duration::from_secs(120), a).await.expect("an apply hung").expect("apply task") {
            Ok(_) => {}
            // Busy behind the hung apply: ABORTED, "try again"; the hung one itself: the broker is unreachable.
            Err(status) => assert!(
                (status.code() == tonic::Code::Aborted && status.message().contains("try again"))
                    || (status.code() == tonic::Code::Unavailable && status.message().contains("retry")),
                "an apply failed without saying what to do: {status}"
            ),
        }
    }
    cp.stop().await;
    env.cleanup().await;
}
