//! An apply holds nothing in Postgres while it provisions (no transaction, no lock): it records its intent,
//! provisions, then records the plan. A control plane killed mid-provisioning leaves the intent, and the next leader
//! finishes the apply.

use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::{GetResourceRequest, GetStatusRequest, Plan, ResourceKind};
use millrace_tests::broker::PrivateBroker;
use millrace_tests::replicas::Replica;
use millrace_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

/// What this test's control planes hold in Postgres now: unfinished intents, advisory locks, sessions idle inside a
/// transaction.
async fn held(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    let intents: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('apply_intents') IS NULL THEN 0 ELSE (SELECT count(*) FROM apply_intents) END",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(0);
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let idle: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (intents, locks, idle)
}

fn partitions(brokers: &str, topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    let md = c.fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(5))).expect("metadata");
    md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len())
}

/// Waits until stream `name` is declared (asked of the control plane at `url`) and no intent, lock or open
/// transaction is left; `what` says what failed otherwise.
async fn wait_made(url: &str, name: &str, pool: &sqlx::PgPool, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = ControlPlaneClient::connect(url.to_string()).await.expect("connect to the control plane");
        let got = c.get_resource(GetResourceRequest { kind: ResourceKind::Stream as i32, name: name.into(), version: String::new() }).await;
        if got.is_ok() && held(pool).await == (0, 0, 0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_holds_nothing_while_it_provisions_and_the_next_leader_finishes_one_cut_off() {
    let env = TestEnv::new();
    let broker = PrivateBroker::start().await;
    let mut first = Replica::start_with_brokers(&env, "first", &broker.addr, &["--dependency-timeout-ms", "60000"]).await;
    first.wait_to_lead(WAIT).await;
    let pool = sqlx::PgPool::connect(&env.database_url).await.expect("the test's database");

    // The broker hangs: the apply waits in provisioning.
    broker.pause();
    let mut c = first.client().await;
    let plan = Plan { streams: vec![stream("kept", raw_fields(), 2)], ..Default::default() };
    let applying = tokio::spawn(async move { apply(&mut c, &plan, false).await });
    // Provisioning: its intent is recorded.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = held(&pool).await;
        if now.0 > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the apply never recorded its intent: (intents, advisory locks, sessions idle in a transaction) = {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it holds nothing in Postgres while it provisions (polled: its lock goes a moment after its intent shows).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = held(&pool).await;
        if now == (1, 0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "(intents, advisory locks, sessions idle in a transaction) while provisioning: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Killed mid-provisioning: its caller hears so, and nothing is recorded yet.
    first.kill9();
    assert!(applying.await.unwrap().is_err(), "an apply whose control plane died cannot have answered OK");

    // The next leader tries to finish it while the broker still hangs: that fails, and the intent stays.
    let second = Replica::start_with_brokers(&env, "second", &broker.addr, &["--dependency-timeout-ms", "1500"]).await;
    second.wait_to_lead(WAIT).await;
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&second.log).unwrap_or_default().contains("could not finish an interrupted apply yet") {
        assert!(Instant::now() < deadline, "the new leader did not try to finish the apply: see {}", second.log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held(&pool).await.0, 1, "a failed try to finish an interrupted apply dropped it");

    // The broker is back: the leader's next try finishes it, with no apply asking.
    broker.resume();
    // The new leader finishes it: declared, its topic made, the intent gone.
    let topic = env.topic("kept");
    wait_made(&second.url(), "kept", &pool, &format!("the interrupted apply was not finished: see {}", second.log.display())).await;
    assert_eq!(partitions(&broker.addr, &topic), 2, "the finished apply made its topic");
    pool.close().await;
    drop(second);
    env.cleanup().await;
}

/// An apply whose caller hangs up mid-provisioning is made all the same (it is not cut off half made): once the
/// broker answers, the stream is declared and its topic exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_whose_caller_hangs_up_midway_is_made_whole() {
    let env = TestEnv::new();
    let broker = PrivateBroker::start().await;
    let mut config = env.config_with(&["--dependency-timeout-ms", "60000"]);
    config.kafka_brokers = broker.addr.clone();
    let cp = ControlPlane::start(config).await.expect("control plane starts");
    let pool = sqlx::PgPool::connect(&env.database_url).await.expect("the test's database");
    broker.pause();
    let mut c = cp.client().await;
    let plan = Plan { streams: vec![stream("left", raw_fields(), 1)], ..Default::default() };
    let applying = tokio::spawn(async move { apply(&mut c, &plan, false).await });
    let deadline = Instant::now() + WAIT;
    while held(&pool).await.0 == 0 {
        assert!(Instant::now() < deadline, "the apply never began provisioning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `millrace status` shows it.
    let status = cp.client().await.get_status(GetStatusRequest {}).await.expect("status").into_inner();
    assert!(status.apply_in_progress.starts_with("apply by "), "status shows no apply in progress: {status:?}");
    // The caller gives up (its connection goes with the task).
    applying.abort();
    let _ = applying.await;
    broker.resume();
    wait_made(&cp.addr, "left", &pool, "an apply whose caller hung up was left unmade").await;
    let status = cp.client().await.get_status(GetStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.apply_in_progress, "", "a finished apply is still shown");
    assert_eq!(partitions(&broker.addr, &env.topic("left")), 1);
    pool.close().await;
    cp.stop().await;
    env.cleanup().await;
}
