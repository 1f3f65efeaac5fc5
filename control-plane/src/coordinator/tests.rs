//! Control planes sharing one Postgres (the real one of the test stack, a database of each test's own): one
//! leader at a time, rounds fenced by their term, and followers that send workers the stored sets.

use super::*;
use crate::leadership::Leadership;
use millrace_proto::v1::worker_coordinator_server::WorkerCoordinator;
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A fresh, migrated database; its URL.
async fn database() -> String {
    let server = std::env::var("MILLRACE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{server}/millrace_u_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    Store::connect(&url, Duration::from_secs(10), Duration::from_secs(10)).await.expect("Postgres (scripts/stack.sh start)");
    url
}

async fn drop_database(url: &str) {
    use sqlx::Connection;
    let (server, name) = url.rsplit_once('/').expect("a database URL");
    if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::Executor::execute(&mut c, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
    }
}

async fn leadership(url: &str, name: &str, lease: Duration) -> Leadership {
    let pool = Store::connect_leadership(url, Duration::from_secs(10)).await.expect("pool");
    Leadership::new(pool, name.into(), lease, Duration::from_secs(10))
}

async fn coordinator(url: &str, leadership: Leadership) -> Coordinator {
    let store = Store::connect_coordinator(url, Duration::from_secs(10)).await.expect("pool");
    // No broker: these tests never read partition counts.
    let kafka = Kafka::new("127.0.0.1:1", Duration::from_secs(1), 1).expect("kafka client");
    let names = crate::scheduler::Names { topic_namespace: "t_".into(), clickhouse_database: "t".into() };
    Coordinator::new(store, kafka, Duration::from_secs(10), Duration::from_millis(100), names, leadership)
}

/// Takes office at once (the lease being free), as the leadership loop's first attempt does.
async fn take_office(l: &Leadership) -> i64 {
    l.take().await;
    l.term().expect("took office")
}

async fn unit_ids(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT unit_id FROM assignments ORDER BY unit_id").fetch_all(pool).await.expect("assignments")
}

#[tokio::test]
async fn a_round_of_a_stale_term_commits_nothing() {
    let url = database().await;
    let a = leadership(&url, "a:1", Duration::from_secs(30)).await;
    let b = leadership(&url, "b:1", Duration::from_secs(30)).await;
    let (ca, cb) = (coordinator(&url, a.clone()).await, coordinator(&url, b.clone()).await);
    let first = take_office(&a).await;
    // A unit no longer declared: any round that commits deletes its row.
    let pool = ca.inner.store.pool().clone();
    sqlx::query("INSERT INTO assignments (unit_id, worker_id, epoch) VALUES ('transform/gone/0', NULL, 1)")
        .execute(&pool)
        .await
        .unwrap();

    // A is paused past its lease (Postgres lets it lapse) and B takes office, while A still believes it leads.
    sqlx::query("UPDATE leader SET expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    let second = take_office(&b).await;
    assert_eq!(second, first + 1);
    assert_eq!(a.term(), Some(first), "A's own view has not lapsed yet: the point is that Postgres decides");
    let stale = ca.reschedule().await;
    assert!(matches!(stale, Err(Error::NotLeader(_))), "a round of term {first} ran under term {second}: {stale:?}");
    assert_eq!(unit_ids(&pool).await, vec!["transform/gone/0"], "the stale round committed");

    // The same round in the current term commits.
    cb.reschedule().await.expect("the leader's round");
    assert!(unit_ids(&pool).await.is_empty(), "the leader's round did not commit");
    drop_database(&url).await;
}

#[tokio::test]
async fn a_leader_whose_term_ended_while_its_round_waited_for_the_lock_commits_nothing() {
    let url = database().await;
    let a = leadership(&url, "a:1", Duration::from_secs(30)).await;
    let ca = coordinator(&url, a.clone()).await;
    take_office(&a).await;
    let pool = ca.inner.store.pool().clone();
    sqlx::query("INSERT INTO assignments (unit_id, worker_id, epoch) VALUES ('transform/gone/0', NULL, 1)")
        .execute(&pool)
        .await
        .unwrap();
    // Another session holds the scheduling lock; meanwhile A's term ends in Postgres (another took office).
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(0x6d69_6c6c_7363_6864_i64).execute(&mut *blocker).await.unwrap();
    let round = tokio::spawn({
        let ca = ca.clone();
        async move { ca.reschedule().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("UPDATE leader SET holder = 'other', term = term + 1").execute(&pool).await.unwrap();
    blocker.commit().await.unwrap();
    let r = round.await.unwrap();
    assert!(matches!(r, Err(Error::NotLeader(_))), "the round went on after its term ended: {r:?}");
    assert_eq!(unit_ids(&pool).await, vec!["transform/gone/0"], "the stale round committed");
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_both_hold_the_lease() {
    let url = database().await;
    let lease = Duration::from_millis(300);
    let mut replicas: Vec<(Leadership, tokio::task::JoinHandle<()>)> = Vec::new();
    for i in 0..4 {
        let l = leadership(&url, &format!("r{i}:1"), lease).await;
        replicas.push((l.clone(), tokio::spawn(l.run())));
    }
    let both = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let views: Vec<Leadership> = replicas.iter().map(|(l, _)| l.clone()).collect();
    let views = Arc::new(Mutex::new(views));
    let checker = {
        let (both, samples, views) = (both.clone(), samples.clone(), views.clone());
        tokio::spawn(async move {
            loop {
                let leading: Vec<(String, i64)> = views
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|l| l.term().map(|t| (l.holder().to_string(), t)))
                    .collect();
                if leading.len() > 1 {
                    eprintln!("two leaders at once: {leading:?}");
                    both.store(true, Ordering::SeqCst);
                }
                samples.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Kill the leader (no resignation: its lease must run out) over and over, each replaced by a new process.
    let mut terms = Vec::new();
    let mut took = Vec::new();
    for round in 0..6 {
        let deadline = Instant::now() + lease * 4;
        let (i, term) = loop {
            if let Some((i, t)) = replicas.iter().enumerate().find_map(|(i, (l, _))| l.term().map(|t| (i, t))) {
                break (i, t);
            }
            assert!(Instant::now() < deadline, "no leader within four leases (round {round})");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        took.push(Instant::now());
        terms.push(term);
        tokio::time::sleep(lease).await;
        let (dead, task) = replicas.remove(i);
        task.abort();
        let _ = task.await;
        let fresh = leadership(&url, &format!("n{round}:1"), lease).await;
        replicas.push((fresh.clone(), tokio::spawn(fresh.clone().run())));
        // The killed one's own view stays in the check: it must lapse before Postgres lets another take office.
        let _ = dead;
        views.lock().unwrap().push(fresh);
    }
    checker.abort();
    for (_, t) in replicas {
        t.abort();
    }
    assert!(!both.load(Ordering::SeqCst), "two replicas led at once");
    assert!(samples.load(Ordering::SeqCst) > 200, "the checker hardly ran");
    assert!(terms.windows(2).all(|w| w[1] > w[0]), "terms did not grow: {terms:?}");
    drop_database(&url).await;
}

#[tokio::test]
async fn concurrent_takeovers_give_one_term_to_one_replica() {
    let url = database().await;
    let mut all = Vec::new();
    for i in 0..8 {
        all.push(leadership(&url, &format!("r{i}:1"), Duration::from_secs(30)).await);
    }
    futures::future::join_all(all.iter().map(|l| l.take())).await;
    let leading: Vec<i64> = all.iter().filter_map(|l| l.term()).collect();
    assert_eq!(leading, vec![1], "every replica tried the free lease at once; exactly one must hold it");
    drop_database(&url).await;
}

#[tokio::test]
async fn a_followers_watch_sends_the_stored_set_and_runs_no_round() {
    let url = database().await;
    let leader = leadership(&url, "leader:1", Duration::from_secs(30)).await;
    let follower = leadership(&url, "follower:1", Duration::from_secs(30)).await;
    take_office(&leader).await;
    let (cl, cf) = (coordinator(&url, leader.clone()).await, coordinator(&url, follower.clone()).await);
    let pool = cf.inner.store.pool().clone();
    // What the leader's last round stored: a worker holding one unit at epoch 7, committed up to 42. The
    // definition is not one the follower could compute (nothing is declared): it must come from the row.
    let unit = WorkUnit { unit_id: "transform/t/0".into(), name: "t".into(), source_topic: "t_src".into(), ..Default::default() };
    sqlx::query("INSERT INTO workers (worker_id, name, http_address, generation, lease_expires_at, session_hash) VALUES ('w', 'w', '', 1, now() + interval '1 minute', $1)")
        .bind(super::session::hash("s"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO assignments (unit_id, worker_id, epoch, committed_offset, definition) VALUES ('transform/t/0', 'w', 7, 42, $1)")
        .bind(unit.encode_to_vec())
        .execute(&pool)
        .await
        .unwrap();

    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen("millrace_wake").await.unwrap();
    let req = tonic::Request::new(WatchAssignmentsRequest { worker_id: "w".into(), generation: 1, session: "s".into() });
    let mut stream = cf.watch_assignments(req).await.expect("a follower serves WatchAssignments").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut stream)).await.expect("a set at once");
    let set = first.expect("the stream is open").expect("a set");
    assert_eq!(set.assignments.len(), 1);
    assert_eq!(set.assignments[0].unit.as_ref(), Some(&unit), "the definition was not the stored one");
    assert_eq!((set.assignments[0].epoch, set.assignments[0].committed_offset), (7, 42));
    assert_eq!(unit_ids(&pool).await, vec!["transform/t/0"], "the follower ran a round");
    let woke = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.expect("the leader was woken").unwrap();
    assert_eq!(woke.payload(), "join");

    // The leader's round changes the set (the unit is not declared, so it goes); the follower hears of it and
    // sends the worker its new set.
    let follower_listens = AbortOnDrop(tokio::spawn(cf.clone().listen()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.reschedule().await.expect("the leader's round");
    let next = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut stream))
        .await
        .expect("the follower published the leader's change")
        .expect("the stream is open")
        .expect("a set");
    assert!(next.assignments.is_empty(), "the follower sent {next:?}");
    drop(follower_listens);
    drop_database(&url).await;
}

#[tokio::test]
async fn workers_get_the_lease_the_leader_wrote_whatever_this_replicas_flag() {
    let url = database().await;
    let pool = Store::connect_leadership(&url, Duration::from_secs(10)).await.unwrap();
    // The leader runs with a 4 s worker lease; this replica's flag says 10 s.
    let leader = Leadership::new(pool, "leader:1".into(), Duration::from_secs(30), Duration::from_secs(4));
    take_office(&leader).await;
    let follower = coordinator(&url, leadership(&url, "follower:1", Duration::from_secs(30)).await).await;
    let reg = follower
        .register(tonic::Request::new(RegisterRequest { name: "w".into(), http_address: "127.0.0.1:1".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reg.lease_ms, reg.heartbeat_interval_ms), (4000, 1000));
    let hb = follower
        .heartbeat(tonic::Request::new(HeartbeatRequest { worker_id: reg.worker_id.clone(), generation: reg.generation, session: reg.session.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lease_ms, 4000);
    let left: f64 = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM lease_expires_at - now())::float8 FROM workers WHERE worker_id = $1")
        .bind(&reg.worker_id)
        .fetch_one(follower.inner.store.pool())
        .await
        .unwrap();
    assert!(left <= 4.0 && left > 3.0, "Postgres holds a lease of {left} s, not the cluster's 4 s");
    drop_database(&url).await;
}

#[tokio::test]
async fn a_write_on_a_follower_goes_to_the_leader_or_says_who_it_was_and_to_try_again() {
    use crate::forward::{self, Route};
    let url = database().await;
    let follower = leadership(&url, "follower:1", Duration::from_secs(30)).await;
    let pool = Store::connect_coordinator(&url, Duration::from_secs(10)).await.unwrap().pool().clone();
    // The leader is another process, at an address where nothing answers (it just died, say).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    sqlx::query("UPDATE leader SET holder = 'other', term = 4, address = $1, expires_at = now() + interval '30 seconds'")
        .bind(&dead)
        .execute(&pool)
        .await
        .unwrap();
    let route = forward::route(&follower, &pool, false, Duration::from_millis(200)).await.unwrap();
    assert_eq!(route, Route::Leader(dead.clone()));
    // Forwarded once already: never again (two replicas that each think the other leads do not ping-pong).
    let again = forward::route(&follower, &pool, true, Duration::from_millis(200)).await;
    assert!(matches!(again, Err(Error::NotLeader(_))), "{again:?}");
    let refused = forward::apply(&dead, ApplyPlanRequest::default(), Duration::from_secs(2), &Default::default()).await.expect_err("nothing answers there");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains(&dead) && refused.message().contains("try again"), "{}", refused.message());

    // Its lease ran out and nobody took office: after a short wait, UNAVAILABLE naming the last leader.
    sqlx::query("UPDATE leader SET expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    let started = Instant::now();
    let none = forward::route(&follower, &pool, false, Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300), "it did not wait for a leader");
    let Err(e) = none else { panic!("routed without a leader: {none:?}") };
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains(&dead) && status.message().contains("term 4") && status.message().contains("try again"), "{}", status.message());
    drop_database(&url).await;
}

/// An apply of a leader whose term ended (its own view not lapsed yet) records nothing: its intent is refused
/// by the fence before anything is provisioned.
#[tokio::test]
async fn an_apply_of_a_deposed_leader_records_nothing() {
    use millrace_proto::v1::field_type::Kind;
    let url = database().await;
    let brokers = std::env::var("MILLRACE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let clickhouse = std::env::var("MILLRACE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let a = leadership(&url, "a:1", Duration::from_secs(30)).await;
    take_office(&a).await;
    let timeout = Duration::from_secs(10);
    let store = Store::connect(&url, timeout, timeout).await.unwrap();
    let kafka = Kafka::new(&brokers, timeout, 1).unwrap();
    let namespace = format!("u{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let provisioner = crate::provision::Provisioner {
        kafka: kafka.clone(),
        clickhouse: crate::provision::clickhouse::ClickHouse::new(&clickhouse, "default", "", "u_unused", timeout),
        topic_namespace: namespace,
    };
    let api = crate::api::Api {
        store: store.clone(),
        provisioner,
        coordinator: coordinator(&url, a.clone()).await,
        started: std::time::Instant::now(),
        forward_timeout: timeout,
        leader_wait: timeout,
        via: Default::default(),
    };
    let field = |name: &str, key| Field {
        name: name.into(),
        r#type: Some(FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) }),
        key,
        ..Default::default()
    };
    let plan = Plan {
        streams: vec![Stream { name: "s".into(), fields: vec![field("id", true)], parallelism: Some(1), ..Default::default() }],
        ..Default::default()
    };
    // Another control plane took office, A's own view not having lapsed yet.
    sqlx::query("UPDATE leader SET holder = 'other', term = term + 1").execute(store.pool()).await.unwrap();
    let refused = api.apply(plan.clone(), false, "tests").await;
    assert!(matches!(refused, Err(Error::NotLeader(_))), "{refused:?}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM resources").fetch_one(store.pool()).await.unwrap();
    assert_eq!(recorded, 0, "a deposed leader's apply was recorded");
    // Its own term again: the same apply is made.
    sqlx::query("UPDATE leader SET expires_at = now() - interval '1 second'").execute(store.pool()).await.unwrap();
    take_office(&a).await;
    api.apply(plan, false, "tests").await.expect("the leader's apply");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM resources").fetch_one(store.pool()).await.unwrap();
    assert_eq!(recorded, 1);
    drop_database(&url).await;
}

/// Every pool's sessions ask Postgres for TCP keepalives, so a control plane host that vanishes (no reset sent)
/// is noticed within about 25 s and its locks are freed, whatever its transactions were doing.
#[tokio::test]
async fn every_postgres_session_has_keepalives() {
    let url = database().await;
    let timeout = Duration::from_secs(10);
    let pools = [
        Store::connect(&url, timeout, timeout).await.unwrap().pool().clone(),
        Store::connect_coordinator(&url, timeout).await.unwrap().pool().clone(),
        Store::connect_leadership(&url, timeout).await.unwrap(),
    ];
    for pool in pools {
        for (setting, want) in [("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3")] {
            let got: String = sqlx::query_scalar(&format!("SHOW {setting}")).fetch_one(&pool).await.unwrap();
            assert!(got == want || got == format!("{want}s"), "{setting} = {got}");
        }
        pool.close().await;
    }
    drop_database(&url).await;
}

/// A registration retried with its id (its first answer lost, or sent to another replica) is answered again: one
/// worker, one generation; another id is another worker; a bad id is refused saying what to send.
#[tokio::test]
async fn a_retried_registration_is_the_same_worker() {
    let url = database().await;
    let l = leadership(&url, "a:1", Duration::from_secs(30)).await;
    let (a, b) = (coordinator(&url, l.clone()).await, coordinator(&url, leadership(&url, "b:1", Duration::from_secs(30)).await).await);
    let reg = |id: &str| tonic::Request::new(RegisterRequest { name: "w".into(), http_address: "127.0.0.1:1".into(), registration: id.into() });
    let first = a.register(reg("4b1c0b1e-0000-4000-8000-000000000001")).await.unwrap().into_inner();
    let again = b.register(reg("4b1c0b1e-0000-4000-8000-000000000001")).await.unwrap().into_inner();
    assert_eq!((&again.worker_id, again.generation), (&first.worker_id, first.generation));
    let other = a.register(reg("4b1c0b1e-0000-4000-8000-000000000002")).await.unwrap().into_inner();
    assert_ne!(other.worker_id, first.worker_id);
    let (unnamed1, unnamed2) = (a.register(reg("")).await.unwrap().into_inner(), a.register(reg("")).await.unwrap().into_inner());
    assert_ne!(unnamed1.worker_id, unnamed2.worker_id, "without an id every registration is new");
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers").fetch_one(a.inner.store.pool()).await.unwrap();
    assert_eq!(workers, 4);
    // Retried after its lease ran out (its units may have moved meanwhile): the same worker at a new generation.
    sqlx::query("UPDATE workers SET lease_expires_at = now() - interval '1 second' WHERE worker_id = $1")
        .bind(&first.worker_id)
        .execute(a.inner.store.pool())
        .await
        .unwrap();
    let late = a.register(reg("4b1c0b1e-0000-4000-8000-000000000001")).await.unwrap().into_inner();
    assert_eq!(late.worker_id, first.worker_id);
    assert!(late.generation > first.generation, "{} after {}", late.generation, first.generation);
    // Each answer has its own session: the retry's replaces the first's, which no longer works.
    assert!(first.session != again.session && again.session != late.session && late.session.len() == 64);
    let beat = |generation: u64, session: &str| {
        tonic::Request::new(HeartbeatRequest { worker_id: first.worker_id.clone(), generation, session: session.into() })
    };
    let old = a.heartbeat(beat(late.generation, &first.session)).await.unwrap_err();
    assert_eq!(old.code(), tonic::Code::PermissionDenied, "{old:?}");
    // The generation fence holds on its own, with the current session.
    let stale = a.heartbeat(beat(first.generation, &late.session)).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "a heartbeat of the old generation was taken: {stale:?}");
    a.heartbeat(beat(late.generation, &late.session)).await.expect("the current session and generation");
    // A worker that sends no session (an older binary) is told to register again, not refused for good.
    let none = a.heartbeat(beat(late.generation, "")).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition, "{none:?}");
    let refused = a.register(reg("x'; DROP TABLE workers; --")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("letters, digits and dashes"), "{}", refused.message());
    drop_database(&url).await;
}
