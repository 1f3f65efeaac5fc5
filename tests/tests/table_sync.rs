//! Table sync's promises against the real stack (ClickHouse 18.16): rows ClickHouse took are never inserted again
//! while their batch's dead letters wait for the broker; a dead letter too large for the broker is cut to fit
//! rather than stall the partition; values ClickHouse would store wrong are refused before the insert; a batch
//! over ClickHouse's memory limit is split; and a sync batch stays within the worker's in-flight byte budget.

use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::http::post;
use millrace_tests::*;
use std::time::{Duration, Instant};

fn typed(name: &str, kind: Kind) -> Field {
    Field { name: name.into(), r#type: Some(FieldType { kind: Some(kind) }), nullable: false, key: false, ..Default::default() }
}

/// Rows of a ClickHouse query, as JSON objects.
async fn query(sql: &str) -> Vec<serde_json::Value> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let a = post(&addr, "/", &[], format!("{sql} FORMAT JSONEachRow").as_bytes()).await;
    assert_eq!(a.status, 200, "{sql}: {}", a.body);
    a.body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Rows in the table (`count()`), and distinct ids.
async fn counts(env: &TestEnv) -> (u64, u64) {
    let rows = query(&format!("SELECT toString(count()) AS n, toString(uniqExact(id)) AS d FROM `{}`.events", env.clickhouse_database)).await;
    (rows[0]["n"].as_str().unwrap().parse().unwrap(), rows[0]["d"].as_str().unwrap().parse().unwrap())
}

async fn wait_rows(env: &TestEnv, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, distinct) = counts(env).await;
        if distinct >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{distinct} of {want} rows in the table");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts for `watch` that the table holds exactly `want` rows, each once.
async fn stays_exact(env: &TestEnv, want: u64, watch: Duration, why: &str) {
    let until = Instant::now() + watch;
    while Instant::now() < until {
        assert_eq!(counts(env).await, (want, want), "{why}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn raw_values(n: usize) -> Vec<serde_json::Value> {
    (0..n).map(|i| serde_json::json!({"id": format!("p{i:04}"), "value": i})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_clickhouse_took_are_not_inserted_again_while_their_dead_letters_wait_for_the_broker() {
    let env = TestEnv::new();
    // The dead letter queue is someone else's, and not there yet: producing dead letters fails until it is.
    let mut p = synced_plan("events", raw_fields(), 1);
    p.dead_letter_queues[0].life_cycle = LifeCycle::ExternallyManaged as i32;
    let cp = control_plane_with(&env, &p).await;
    let dlq = env.topic("events_dlq");
    assert_eq!(env.partitions(&dlq), None);
    let partitions = 1;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    let mut values = raw_values(100);
    values[40]["value"] = "forty".into();
    produce_values(&producer(), &env.topic("events"), &values).await;
    wait_rows(&env, 99, WAIT).await;
    // Records keep coming while the dead letter cannot be produced: no row is ever in the table twice.
    let until = Instant::now() + Duration::from_secs(8);
    let mut more = 0;
    while Instant::now() < until {
        produce_values(&producer(), &env.topic("events"), &[serde_json::json!({"id": format!("more{more}"), "value": more})]).await;
        more += 1;
        let (all, distinct) = counts(&env).await;
        assert_eq!(all, distinct, "rows inserted again while the dead letter could not be produced");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.create_topic(&dlq, partitions).await;
    let letters = read_topic(dlq, partitions, |r| !r.is_empty()).await;
    assert_eq!(letters[0].value["originalRecord"]["id"], "p0040");
    assert_eq!(letters[0].value["source"], "table");
    // The partition goes on past the batch, and nothing of it was inserted twice.
    wait_rows(&env, 99 + more, WAIT).await;
    stays_exact(&env, 99 + more, Duration::from_secs(1), "a row is in the table twice").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_over_the_brokers_limit_is_cut_to_fit_and_the_partition_goes_on() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 1)).await;
    // A refused row whose key alone nearly fills a message of the worker's limit: its dead letter, key and all,
    // would be over it.
    let _w = Worker::start_with(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1", &["--max-message-bytes", "4000"]);
    let mut values = raw_values(100);
    values[30] = serde_json::json!({"id": format!("big{}", "x".repeat(3900)), "value": "thirty"});
    produce_values(&producer(), &env.topic("events"), &values).await;
    let dlq = env.topic("events_dlq");
    let letters = read_topic(dlq, 1, |r| !r.is_empty()).await;
    assert_eq!(letters[0].value["errorType"], "ClickHouseRejected");
    assert_eq!(letters[0].value["offset"], 30);
    wait_rows(&env, 99, WAIT).await;
    stays_exact(&env, 99, Duration::from_secs(3), "rows inserted again after the dead letter was refused").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dates_outside_clickhouses_range_and_malformed_decimals_are_refused_before_the_insert() {
    let env = TestEnv::new();
    let fields = vec![
        key("id", ScalarType::String),
        field("day", ScalarType::Date),
        typed("amount", Kind::Decimal(DecimalType { precision: 10, scale: 2 })),
        typed("days", Kind::Array(Box::new(scalar(ScalarType::Date)))),
    ];
    let cp = control_plane_with(&env, &synced_plan("events", fields, 1)).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    let row = |id: &str, day: &str, amount: serde_json::Value| serde_json::json!({"id": id, "day": day, "amount": amount, "days": [day]});
    let mut values = vec![
        row("good", "2026-11-25", "12.50".into()),
        row("first-day", "1970-01-01", serde_json::json!(7)),
        row("last-day", "2105-12-31", "-0.5".into()),
        row("before-1970", "1969-12-31", "1".into()),
        row("after-2105", "2106-01-01", "1".into()),
        row("no-such-day", "2026-02-30", "1".into()),
        row("short-date", "2026-1-1", "1".into()),
        row("two-points", "2026-11-25", "1.5.5".into()),
        row("too-precise", "2026-11-25", "1.555".into()),
        row("too-big", "2026-11-25", "123456789.5".into()),
    ];
    values.push(serde_json::json!({"id": "bad-in-array", "day": "2026-11-25", "amount": "1", "days": ["2026-11-25", "2200-01-01"]}));
    produce_values(&producer(), &env.topic("events"), &values).await;
    let letters = read_topic(env.topic("events_dlq"), 1, |r| r.len() >= 8).await;
    wait_rows(&env, 3, WAIT).await;
    let mut refused: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.value["originalRecord"]["id"].as_str().unwrap().to_string(), l.value["errorType"].as_str().unwrap().to_string()))
        .collect();
    refused.sort();
    let mut want: Vec<(String, String)> = ["before-1970", "after-2105", "no-such-day", "short-date", "two-points", "too-precise", "too-big", "bad-in-array"]
        .iter()
        .map(|id| (id.to_string(), "RowConversionError".to_string()))
        .collect();
    want.sort();
    assert_eq!(refused, want, "{letters:?}");
    for l in &letters {
        assert_eq!(l.value["source"], "table");
        let message = l.value["errorMessage"].as_str().unwrap();
        assert!(message.starts_with("day:") || message.starts_with("amount:") || message.starts_with("days:"), "{message}");
    }
    // Days since 1970 (ClickHouse 18.16 shows day 0 as 0000-00-00).
    let rows = query(&format!("SELECT id, toString(toUInt16(day)) AS day, toString(amount) AS amount FROM `{}`.events ORDER BY id", env.clickhouse_database)).await;
    let rows: Vec<(String, String, String)> =
        rows.iter().map(|r| (r["id"].as_str().unwrap().into(), r["day"].as_str().unwrap().into(), r["amount"].as_str().unwrap().into())).collect();
    assert_eq!(
        rows,
        [
            ("first-day".to_string(), "0".to_string(), "7.00".to_string()),
            ("good".into(), "20782".into(), "12.50".into()),
            ("last-day".into(), "49672".into(), "-0.50".into()),
        ]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_over_clickhouses_memory_limit_is_split_and_every_row_goes_in_once() {
    let env = TestEnv::new();
    let mut p = synced_plan("events", raw_fields(), 1);
    p.tables[0].sync_max_rows = Some(5000);
    p.tables[0].sync_max_delay_ms = Some(2000);
    let cp = control_plane_with(&env, &p).await;
    // The backlog is there before the worker: its first batch is all 5000 rows, which an insert under an 8 MB
    // memory limit cannot take at once (a few hundred rows of this size can).
    let values: Vec<serde_json::Value> = (0..5000).map(|i| serde_json::json!({"id": format!("{i:05}{}", "m".repeat(200)), "value": i})).collect();
    produce_values(&producer(), &env.topic("events"), &values).await;
    let url = format!("{}/?max_memory_usage=8000000", clickhouse_url());
    let _w = Worker::start_with(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1", &["--clickhouse-url", &url]);
    wait_rows(&env, 5000, WAIT).await;
    assert_eq!(counts(&env).await, (5000, 5000));
    let letters = read_quiet(env.topic("events_dlq"), 1, Duration::from_secs(1)).await;
    assert!(letters.is_empty(), "rows were dead-lettered for the memory limit: {:?}", letters.first().map(|l| &l.value["errorMessage"]));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_batch_stays_within_the_workers_in_flight_byte_budget() {
    let env = TestEnv::new();
    let mut p = synced_plan("events", raw_fields(), 1);
    // Rows and delay would let one batch take the whole backlog; the worker's 64 KiB budget must not.
    p.tables[0].sync_max_rows = Some(100_000);
    p.tables[0].sync_max_delay_ms = Some(5000);
    let cp = control_plane_with(&env, &p).await;
    let n = 20_000;
    produce_values(&producer(), &env.topic("events"), &raw_values(n)).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start_with(&name, &cp.addr, "default=http://127.0.0.1:1", &["--max-in-flight-bytes", "65536"]);
    wait_rows(&env, n as u64, WAIT).await;
    assert_eq!(counts(&env).await, (n as u64, n as u64));
    // About 70 bytes a record: 1.4 MB in batches of at most half the budget is 40 inserts or more.
    let m = metrics_of(&cp, &name).await;
    let inserts = metric(&m, "millrace_table_insert_latency_seconds_count");
    assert!(inserts >= 40, "{n} records went in {inserts} inserts: a batch held more than the in-flight budget");
    env.cleanup().await;
}
