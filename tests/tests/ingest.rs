//! The ingest API and table sync against the real stack: records POSTed to a worker reach their stream and, through
//! the sync units, their ClickHouse table; every bad request gets its code and writes nothing; a row ClickHouse
//! refuses goes to the dead letter queue and the rest of its batch to the table.

use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::*;
use millrace_tests::broker::PrivateBroker;
use millrace_tests::dataplane::*;
use millrace_tests::http::{post, JSON, NDJSON};
use millrace_tests::*;
use std::time::{Duration, Instant};

fn typed(name: &str, kind: Kind, nullable: bool) -> Field {
    Field { name: name.into(), r#type: Some(FieldType { kind: Some(kind) }), nullable, key: false, ..Default::default() }
}

/// Every column type the sync must carry exactly.
fn all_types() -> Vec<Field> {
    let s = |t: ScalarType| Kind::Scalar(t as i32);
    vec![
        key("id", ScalarType::String),
        field("small", ScalarType::Int8),
        field("big", ScalarType::Uint64),
        field("ratio", ScalarType::Float64),
        field("ok", ScalarType::Bool),
        field("at", ScalarType::Datetime),
        field("day", ScalarType::Date),
        field("uid", ScalarType::Uuid),
        typed("amount", Kind::Decimal(DecimalType { precision: 18, scale: 4 }), false),
        typed("tags", Kind::Array(Box::new(scalar(ScalarType::String))), false),
        typed("note", s(ScalarType::String), true),
        typed("maybe", s(ScalarType::Int32), true),
    ]
}

/// Rows of a ClickHouse query, as JSON objects.
async fn query(sql: &str) -> Vec<serde_json::Value> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let a = post(&addr, "/", &[], format!("{sql} FORMAT JSONEachRow").as_bytes()).await;
    assert_eq!(a.status, 200, "{sql}: {}", a.body);
    a.body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn count(env: &TestEnv, table: &str, distinct: bool) -> u64 {
    let what = if distinct { "uniqExact(id)" } else { "count()" };
    let rows = query(&format!("SELECT toString({what}) AS n FROM `{}`.`{table}`", env.clickhouse_database)).await;
    rows[0]["n"].as_str().unwrap().parse().unwrap()
}

async fn wait_count(env: &TestEnv, table: &str, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = count(env, table, true).await;
        if n >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{n} of {want} rows in {table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn record(i: usize) -> serde_json::Value {
    serde_json::json!({
        "id": format!("r{i:03}"), "small": -128 + (i % 256) as i64, "big": u64::MAX - i as u64, "ratio": i as f64 + 0.25,
        "ok": i.is_multiple_of(2), "at": format!("2026-11-25T10:{:02}:{:02}+01:00", i % 60, (i * 7) % 60), "day": "2026-11-25",
        "uid": format!("0f8fad5b-d9cb-469f-a165-{i:012}"), "amount": format!("{i}.0625"), "tags": ["a", format!("t{i}")],
        "note": if i.is_multiple_of(3) { serde_json::Value::Null } else { format!("n{i}").into() },
        "maybe": if i.is_multiple_of(2) { serde_json::Value::Null } else { (i as i64 * 1000).into() },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posted_records_reach_the_table_with_every_field_exact() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", all_types(), 2)).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &format!("{}-w", env.id)).await;
    let records: Vec<serde_json::Value> = (0..30).map(record).collect();
    // An array, NDJSON, and single objects (one without a content type: JSON is assumed).
    let a = post(&http, "/ingest/events", &[JSON], serde_json::to_string(&records[..10]).unwrap().as_bytes()).await;
    assert_eq!((a.status, a.json()["written"].as_u64()), (200, Some(10)), "{}", a.body);
    let nd: String = records[10..20].iter().map(|r| format!("{r}\n")).collect();
    let a = post(&http, "/ingest/events", &[NDJSON], nd.as_bytes()).await;
    assert_eq!((a.status, a.json()["written"].as_u64()), (200, Some(10)), "{}", a.body);
    for r in &records[20..] {
        let a = post(&http, "/ingest/events", &[], r.to_string().as_bytes()).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    wait_count(&env, "events", 30, WAIT).await;
    let rows = query(&format!(
        "SELECT id, toString(small) AS small, toString(big) AS big, ratio, ok, toString(at) AS at, toString(day) AS day, \
         toString(uid) AS uid, toString(amount) AS amount, tags, note, maybe FROM `{}`.events ORDER BY id",
        env.clickhouse_database
    ))
    .await;
    assert_eq!(rows.len(), 30, "each record once");
    for (i, row) in rows.iter().enumerate() {
        let r = &records[i];
        assert_eq!(row["id"], r["id"]);
        assert_eq!(row["small"], r["small"].to_string(), "{row}");
        assert_eq!(row["big"], r["big"].to_string(), "{row}");
        assert_eq!(row["ratio"].as_f64(), r["ratio"].as_f64(), "{row}");
        assert_eq!(row["ok"].as_u64(), Some(u64::from(r["ok"].as_bool().unwrap())), "{row}");
        // 10:MM:SS+01:00 is 09:MM:SS UTC.
        assert_eq!(row["at"], format!("2026-11-25 09:{:02}:{:02}", i % 60, (i * 7) % 60), "{row}");
        assert_eq!(row["day"], "2026-11-25");
        assert_eq!(row["uid"], r["uid"]);
        assert_eq!(row["amount"], format!("{i}.0625"), "{row}");
        assert_eq!(row["tags"], r["tags"]);
        assert_eq!(row["note"], r["note"], "{row}");
        assert_eq!(row["maybe"].as_str().map(|s| s.parse::<i64>().unwrap()).or(row["maybe"].as_i64()), r["maybe"].as_i64(), "{row}");
    }
    // Keys spread the records over both partitions.
    let read = read_topic(env.topic("events"), 2, |r| r.len() >= 30).await;
    let partitions: std::collections::BTreeSet<i32> = read.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 2, "records keyed by id land on every partition");
    let m = metrics_of(&cp, &format!("{}-w", env.id)).await;
    assert_eq!(metric(&m, "millrace_table_rows_inserted_total"), 30);
    assert!(m.contains("millrace_table_insert_latency_seconds_bucket"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_request_gets_its_code_and_writes_nothing() {
    let env = TestEnv::new();
    let mut plan = synced_plan("events", vec![key("id", ScalarType::String), field("value", ScalarType::Int8)], 1);
    // A second version of the API: the bare name is the newest.
    plan.streams.push(stream("events_v2", vec![key("id", ScalarType::String), field("v2", ScalarType::Int64)], 1));
    plan.ingest_apis.push(IngestApi { name: "events".into(), version: "2".into(), destination: Some(rref("events_v2")), ..Default::default() });
    plan.ingest_apis[0].version = "1".into();
    plan.ingest_apis[0].dead_letter_queue = Some(rref("events_dlq"));
    let cp = control_plane_with(&env, &plan).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start_with(&name, &cp.addr, "default=http://127.0.0.1:1", &["--ingest-max-body-bytes", "2000"]);
    let http = http_of(&cp, &name).await;

    let a = post(&http, "/ingest/events/1", &[JSON], br#"[{"id":"a","value":1},{"id":"b","value":300},{"value":2,"x":1},{"id":"c","value":3}]"#).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let body = a.json();
    assert_eq!(body["invalid"], 2);
    let errors: Vec<(u64, String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["record"].as_u64().unwrap(), e["field"].as_str().unwrap().into(), e["reason"].as_str().unwrap().into()))
        .collect();
    assert_eq!(errors[0], (1, "value".into(), "300 is out of range (-128 to 127)".into()));
    assert!(errors.iter().any(|e| e.0 == 2 && e.1 == "id" && e.2 == "required, missing"), "{errors:?}");
    assert!(errors.iter().any(|e| e.0 == 2 && e.1 == "x" && e.2 == "not a field of the stream"), "{errors:?}");
    // Only the invalid records reach the dead letter queue, with source "api" and the reason.
    let letters = read_topic(env.topic("events_dlq"), 1, |r| r.len() >= 2).await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].value["originalRecord"], serde_json::json!({"id": "b", "value": 300}));
    assert_eq!(letters[0].value["source"], "api");
    assert!(letters[0].value["errorMessage"].as_str().unwrap().contains("value: 300 is out of range"));

    for (path, headers, body, status, words) in [
        ("/ingest/nope", vec![JSON], &br#"{"id":"a"}"#[..], 404, "no ingest API `nope`: declared: events/1, events/2"),
        ("/ingest/events/3", vec![JSON], br#"{"id":"a"}"#, 404, "events/3"),
        ("/ingest/Events", vec![JSON], br#"{"id":"a"}"#, 404, "no ingest API"),
        ("/ingest/events", vec!["Content-Type: text/csv"], b"id,value\na,1", 415, "application/x-ndjson"),
        ("/ingest/events", vec![JSON], b"[{\"id\":", 400, "not a valid JSON array"),
        ("/ingest/events", vec![JSON], b"", 400, "the body is empty"),
        ("/ingest/events/1", vec![JSON], &[b' '; 3000], 413, "over the limit of 2000"),
        // The bare name is version 2, whose stream has v2 and no value.
        ("/ingest/events", vec![JSON], br#"{"id":"a","value":1}"#, 400, "not a field of the stream"),
    ] {
        let a = post(&http, path, &headers, body).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert!(a.json()["error"].is_string() && a.body.contains(words), "{path}: {}", a.body);
    }
    let a = post(&http, "/ingest/events", &[JSON], br#"{"id":"z","v2":5}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // An API applied while the worker runs is served as soon as the apply returned, without a restart.
    let mut more = plan.clone();
    more.ingest_apis.push(IngestApi { name: "late".into(), destination: Some(rref("events_v2")), ..Default::default() });
    apply(&mut cp.client().await, &more, false).await.expect("plan applied");
    let a = post(&http, "/ingest/late", &[JSON], br#"{"id":"late","v2":7}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Nothing of the refused requests reached the streams.
    let v1 = read_quiet(env.topic("events"), 1, Duration::from_secs(2)).await;
    assert!(v1.is_empty(), "a refused request wrote {v1:?}");
    let v2 = read_topic(env.topic("events_v2"), 1, |r| r.len() >= 2).await;
    assert_eq!(v2.len(), 2);

    // With an API key, requests without it are refused.
    let keyed = format!("{}-k", env.id);
    let _k = Worker::start_with(&keyed, &cp.addr, "default=http://127.0.0.1:1", &["--ingest-api-key", "s3cret"]);
    let khttp = http_of(&cp, &keyed).await;
    assert_eq!(post(&khttp, "/ingest/events", &[JSON], br#"{"id":"k","v2":1}"#).await.status, 401);
    assert_eq!(post(&khttp, "/ingest/events", &[JSON, "Authorization: Bearer wrong"], br#"{"id":"k","v2":1}"#).await.status, 401);
    assert_eq!(post(&khttp, "/ingest/events", &[JSON, "Authorization: Bearer s3cret"], br#"{"id":"k","v2":1}"#).await.status, 200);
    // The key's former variable still closes the API (an upgrade must not open it).
    let old = format!("{}-old", env.id);
    let _o = Worker::start_env(&kafka_brokers(), &old, &cp.addr, "default=http://127.0.0.1:1", &[], &[("MILLRACE_INGEST_API_KEY", "0ld-k3y")]);
    let ohttp = http_of(&cp, &old).await;
    assert_eq!(post(&ohttp, "/ingest/events", &[JSON], br#"{"id":"o","v2":1}"#).await.status, 401);
    assert_eq!(post(&ohttp, "/ingest/events", &[JSON, "Authorization: Bearer 0ld-k3y"], br#"{"id":"o","v2":1}"#).await.status, 200);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_clickhouse_refuses_goes_to_the_dead_letter_queue_and_the_rest_to_the_table() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", vec![key("id", ScalarType::String), field("value", ScalarType::Int64), field("at", ScalarType::Datetime)], 1)).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    // Written around the ingest API, as an external producer could: a value ClickHouse cannot parse, and a
    // date-time that is no date-time; the records after them must still arrive.
    let mut values: Vec<serde_json::Value> =
        (0..200).map(|i| serde_json::json!({"id": format!("p{i:03}"), "value": i, "at": "2026-11-25T10:00:00Z"})).collect();
    values[50]["value"] = "fifty".into();
    values[120]["at"] = "noon".into();
    produce_values(&producer(), &env.topic("events"), &values).await;
    wait_count(&env, "events", 198, WAIT).await;
    let letters = read_topic(env.topic("events_dlq"), 1, |r| r.len() >= 2).await;
    let mut bad: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.value["originalRecord"]["id"].as_str().unwrap().to_string(), l.value["errorType"].as_str().unwrap().to_string()))
        .collect();
    bad.sort();
    assert_eq!(bad, [("p050".to_string(), "ClickHouseRejected".to_string()), ("p120".to_string(), "RowConversionError".to_string())]);
    assert!(letters.iter().all(|l| l.value["source"] == "table"));
    assert_eq!(count(&env, "events", false).await, 198, "no row twice, none lost");
    let m = metrics_of(&cp, &format!("{}-w", env.id)).await;
    assert_eq!(metric(&m, "millrace_table_rows_dead_lettered_total"), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlogs_tail_goes_at_once_while_a_trickle_waits_for_its_batch() {
    let env = TestEnv::new();
    let mut plan = synced_plan("events", raw_fields(), 1);
    // A tenth of a batch is 100 rows; the delay is far longer than the test waits for the burst.
    plan.tables[0].sync_max_rows = Some(1000);
    plan.tables[0].sync_max_delay_ms = Some(8000);
    let cp = control_plane_with(&env, &plan).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    // Two full batches and a tail of 50 rows: the tail goes when the partition pauses, not after 8 s.
    let (ok, _) = load(&http, 0, 2050, 2050, 1).await;
    assert_eq!(ok.len(), 2050);
    wait_count(&env, "events", 2050, Duration::from_secs(5)).await;
    // One record on its own is a trickle: it waits for more (or the delay), so inserts stay few.
    let (ok, _) = load(&http, 2050, 2051, 1, 1).await;
    assert_eq!(ok.len(), 1);
    let quiet = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet {
        assert_eq!(count(&env, "events", false).await, 2050, "a lone record was inserted before its batch's delay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_count(&env, "events", 2051, Duration::from_secs(15)).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_synced_stream_stops_its_units_before_its_topic_goes() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 4)).await;
    let name = format!("{}-w", env.id);
    let mut w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    let (ok, _) = load(&http, 0, 100, 100, 1).await;
    assert_eq!(ok.len(), 100);
    wait_count(&env, "events", 100, WAIT).await;
    let _ = wait_for_placement(&cp, 1, 4).await;
    // Everything removed: the sync units stop first, then the topics go (a consumer whose topic vanished under it
    // used to take the worker down on Tansu).
    apply(&mut cp.client().await, &Plan::default(), false).await.expect("apply");
    assert!(env.topics().is_empty(), "topics left: {:?}", env.topics());
    let _ = wait_for_placement(&cp, 1, 0).await;
    let watch = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch {
        assert!(w.child.try_wait().unwrap().is_none(), "the worker died after its units' topic was deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.cleanup().await;
}

/// POSTs records `from..to` in requests of `per` records, `conns` at a time; returns the ids answered 200 and
/// the statuses seen.
async fn load(http: &str, from: usize, to: usize, per: usize, conns: usize) -> (Vec<usize>, Vec<u16>) {
    let bodies: Vec<(Vec<usize>, String)> = (from..to)
        .step_by(per)
        .map(|s| {
            let ids: Vec<usize> = (s..(s + per).min(to)).collect();
            let body = ids.iter().map(|i| format!("{{\"id\":\"{i}\",\"value\":{i}}}\n")).collect();
            (ids, body)
        })
        .collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (queue, http) = (queue.clone(), http.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut statuses) = (Vec::new(), Vec::new());
            loop {
                let Some((ids, body)) = queue.lock().unwrap().pop() else { return (ok, statuses) };
                let a = post(&http, "/ingest/events", &[NDJSON], body.as_bytes()).await;
                statuses.push(a.status);
                if a.status == 200 {
                    ok.extend(ids);
                }
            }
        }));
    }
    let (mut ok, mut statuses) = (Vec::new(), Vec::new());
    for t in tasks {
        let (o, s) = t.await.unwrap();
        ok.extend(o);
        statuses.extend(s);
    }
    (ok, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_posted_records_are_all_in_the_table() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 4)).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    let n = 1_000_000;
    let started = Instant::now();
    let (ok, statuses) = load(&http, 0, n, 1000, 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "every request answered 200: {:?}", statuses.iter().filter(|s| **s != 200).take(5).collect::<Vec<_>>());
    assert_eq!(ok.len(), n);
    wait_count(&env, "events", n as u64, Duration::from_secs(300)).await;
    let (distinct, all) = (count(&env, "events", true).await, count(&env, "events", false).await);
    println!("1M records: posted and in the table after {:?}; {} duplicates", started.elapsed(), all - distinct);
    assert_eq!(distinct, n as u64);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_away_for_20_seconds_loses_nothing_and_stalls_nothing_else() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 2)).await;
    let proxy = millrace_tests::proxy::Proxy::start(clickhouse_url().trim_start_matches("http://").to_string()).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start_with(&name, &cp.addr, "default=http://127.0.0.1:1", &["--clickhouse-url", &proxy.url(), "--clickhouse-timeout-ms", "1000"]);
    let http = http_of(&cp, &name).await;
    let (ok, _) = load(&http, 0, 20_000, 500, 4).await;
    assert_eq!(ok.len(), 20_000);
    wait_count(&env, "events", 20_000, WAIT).await;
    proxy.silence();
    let silenced = Instant::now();
    // While ClickHouse is away, ingest goes on.
    let (ok, statuses) = load(&http, 20_000, 60_000, 500, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "ingest answered {statuses:?} while ClickHouse was away");
    assert_eq!(ok.len(), 40_000);
    let away = Duration::from_secs(20).saturating_sub(silenced.elapsed());
    tokio::time::sleep(away).await;
    let m = metrics_of(&cp, &name).await;
    assert!(metric(&m, "millrace_table_insert_retries_total") > 0, "inserts were retried while ClickHouse was away");
    proxy.restore();
    wait_count(&env, "events", 60_000, Duration::from_secs(60)).await;
    assert_eq!(count(&env, "events", true).await, 60_000);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_answers_503_and_never_200_for_a_record_that_is_not_there() {
    let broker = PrivateBroker::start().await;
    let env = TestEnv::new();
    let mut config = env.config_with(&["--lease-ms", TEST_LEASE_MS]);
    config.kafka_brokers = broker.addr.clone();
    let cp = ControlPlane::start(config).await.expect("control plane starts");
    let mut plan = synced_plan("events", raw_fields(), 2);
    // No table: this is about the ingest API and the broker.
    plan.streams[0].destination = None;
    plan.tables.clear();
    apply(&mut cp.client().await, &plan, false).await.expect("plan applied");
    let name = format!("{}-w", env.id);
    let _w = Worker::start_on(&broker.addr, &name, &cp.addr, "default=http://127.0.0.1:1", &["--ingest-timeout-ms", "1500"]);
    let http = http_of(&cp, &name).await;
    let (before, _) = load(&http, 0, 5_000, 100, 4).await;
    assert_eq!(before.len(), 5_000);
    let mut broker = broker;
    broker.stop();
    let (during, statuses) = load(&http, 5_000, 7_000, 100, 4).await;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert!(refused > 0, "requests during the outage are answered 503: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    broker.start_again().await;
    let ok: std::collections::HashSet<String> = before.iter().chain(&during).map(|i| i.to_string()).collect();
    let topic = env.topic("events");
    let read = read_topic_at(&broker.addr, &topic, 2, ok.len()).await;
    let missing: Vec<&String> = ok.iter().filter(|id| !read.contains(*id)).take(5).collect();
    assert!(missing.is_empty(), "answered 200 but not in the topic: {missing:?}");
    env.cleanup().await;
}

/// The ids in a topic of another broker, read until `want` distinct ones are there (or the wait runs out).
async fn read_topic_at(brokers: &str, topic: &str, partitions: i32, want: usize) -> std::collections::HashSet<String> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let done = |r: &[Read]| distinct_ids(r).0.len() >= want;
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_until_at(&brokers, &topic, partitions, WAIT, done)));
        read.map(|r| distinct_ids(&r).0).unwrap_or_default()
    })
    .await
    .unwrap()
}
