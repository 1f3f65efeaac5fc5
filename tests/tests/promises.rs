//! Promises at the edges of the data path (issue #19): a request refused for its content writes nothing; versions
//! side by side each fill their own table; hostile bodies and paths keep the worker's memory and metrics bounded.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::http::{post, JSON};
use millrace_tests::records::read_quiet;
use millrace_tests::*;
use std::time::{Duration, Instant};

async fn rows(env: &TestEnv, table: &str) -> Vec<serde_json::Value> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let sql = format!("SELECT * FROM `{}`.`{table}` ORDER BY id FORMAT JSONEachRow", env.clickhouse_database);
    let a = post(&addr, "/", &[], sql.as_bytes()).await;
    assert_eq!(a.status, 200, "{sql}: {}", a.body);
    a.body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Polls until `table` holds `want` rows; returns them.
async fn wait_rows(env: &TestEnv, table: &str, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rows(env, table).await;
        if r.len() >= want {
            return r;
        }
        assert!(Instant::now() < deadline, "{} of {want} rows in {table}", r.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(w: &Worker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).expect("worker's /proc status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_too_large_for_the_broker_refuses_its_whole_request() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("ev", raw_fields(), 1)).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    let big = "x".repeat(1_100_000);
    let body = serde_json::to_vec(&serde_json::json!([{"id": "dup", "value": 1}, {"id": big, "value": 2}])).unwrap();
    for _ in 0..3 {
        let a = post(&http, "/ingest/ev", &[JSON], &body).await;
        assert!(matches!(a.status, 400 | 413), "a record over the broker's limit is the client's error: {} {}", a.status, a.body);
        let j = a.json();
        assert_eq!(j["errors"][0]["record"], 1, "the answer names the record: {}", a.body);
        assert!(a.body.contains("limit"), "{}", a.body);
    }
    // A valid request afterwards goes through, and is the only thing the stream and table ever got.
    let a = post(&http, "/ingest/ev", &[JSON], br#"{"id":"after","value":3}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let got = wait_rows(&env, "ev", 1).await;
    let in_topic = read_quiet(env.topic("ev"), 1, Duration::from_secs(2)).await;
    assert_eq!(in_topic.len(), 1, "only the valid request's record is in the stream");
    assert_eq!(got.len(), 1, "no copy of `dup` in the table: {got:?}");
    assert_eq!(got[0]["id"], "after");
    // The oversized record went to the dead letter queue, once per refused request, cut to fit and marked.
    let letters = read_quiet(env.topic("ev_dlq"), 1, Duration::from_secs(2)).await;
    assert_eq!(letters.len(), 3, "one dead letter per refused request");
    let l = &letters[0].value;
    assert_eq!(l["source"], "api");
    assert_eq!(l["originalRecordTruncated"], true, "{l}");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_side_by_side_each_fill_their_own_table() {
    let env = TestEnv::new();
    let versioned = |v: &str| ResourceRef { name: "pev".into(), version: v.into() };
    let mut plan = Plan::default();
    for v in ["1", "2"] {
        let mut s = stream("pev", raw_fields(), 2);
        s.version = v.into();
        s.destination = Some(versioned(v));
        let mut t = table("pev", raw_fields());
        t.version = v.into();
        t.sync_max_delay_ms = Some(100);
        plan.streams.push(s);
        plan.tables.push(t);
        plan.ingest_apis.push(IngestApi { name: "pev".into(), version: v.into(), destination: Some(versioned(v)), ..Default::default() });
    }
    let cp = control_plane_with(&env, &plan).await;
    let name = format!("{}-w", env.id);
    let _w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    for v in ["1", "2"] {
        let body: Vec<serde_json::Value> = (0..20).map(|i| serde_json::json!({"id": format!("v{v}-{i}"), "value": i})).collect();
        let a = post(&http, &format!("/ingest/pev/{v}"), &[JSON], &serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for v in ["1", "2"] {
        let got = wait_rows(&env, &format!("pev_{v}"), 20).await;
        assert_eq!(got.len(), 20, "pev_{v}: {got:?}");
        assert!(got.iter().all(|r| r["id"].as_str().unwrap().starts_with(&format!("v{v}-"))), "pev_{v} holds another version's rows");
    }
    // Each physical resource has its own units: two sync units per version.
    let ids: Vec<String> = workers(&cp).await.iter().flat_map(|w| w.assignments.iter().map(|a| a.unit_id.clone())).collect();
    assert_eq!(ids.iter().filter(|i| i.starts_with("table_sync/")).count(), 4, "{ids:?}");
    cp.stop().await;
    env.cleanup().await;
}

/// The worker's resident memory may grow by at most this much while it answers the hostile bodies below
/// (documented in docs/operations.md).
const HOSTILE_RSS_BOUND_MIB: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_and_paths_keep_the_worker_bounded_and_serving() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("ev", raw_fields(), 1)).await;
    let name = format!("{}-w", env.id);
    let w = Worker::start(&name, &cp.addr, "default=http://127.0.0.1:1");
    let http = http_of(&cp, &name).await;
    assert_eq!(post(&http, "/ingest/ev", &[JSON], br#"{"id":"warm","value":1}"#).await.status, 200);
    let before = rss_kib(&w);
    // 10 MiB of empty objects: 3.5 million invalid records in one request, sent twice at once.
    let mut empty = Vec::with_capacity(10 << 20);
    empty.push(b'[');
    while empty.len() < (10 << 20) - 4 {
        empty.extend_from_slice(b"{},");
    }
    empty.extend_from_slice(b"{}]");
    let (a, b) = tokio::join!(post(&http, "/ingest/ev", &[JSON], &empty), post(&http, "/ingest/ev", &[JSON], &empty));
    for x in [&a, &b] {
        assert_eq!(x.status, 400, "{}", &x.body[..x.body.len().min(300)]);
        assert!(x.body.len() < 1 << 20, "the answer lists a bounded number of errors ({} bytes)", x.body.len());
        assert!(x.json()["invalid"].as_u64().unwrap() > 3_000_000);
    }
    let grown = rss_kib(&w).saturating_sub(before) / 1024;
    eprintln!("two hostile bodies grew the worker by {grown} MiB");
    assert!(grown < HOSTILE_RSS_BOUND_MIB, "the worker grew by {grown} MiB on two hostile bodies");
    // Thousands of unknown names: 404 each, and no metric series or control plane call per name.
    // Requests that miss at once share one read; sequential ones are held to ten reads a second.
    for round in 0..40 {
        let asks = (0..50).map(|i| {
            let http = http.clone();
            async move { post(&http, &format!("/ingest/nope{}", round * 50 + i), &[JSON], b"{}").await }
        });
        for a in futures::future::join_all(asks).await {
            assert_eq!(a.status, 404, "{}", a.body);
        }
    }
    let metrics = http_get(&http, "/metrics").await;
    assert!(!metrics.contains("nope1"), "an unknown path became a metric series");
    let refreshes = metric(&metrics, "millrace_catalog_refreshes_total");
    assert!(refreshes < 200, "{refreshes} catalog reads from the control plane for 2000 unknown names");
    // A body that never finishes is cut off, and the worker keeps serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(&http).await.unwrap();
    slow.write_all(b"POST /ingest/ev HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\"").await.unwrap();
    let mut answer = Vec::new();
    let cut = tokio::time::timeout(WAIT, slow.read_to_end(&mut answer)).await;
    assert!(cut.is_ok(), "a request whose body never arrives is never cut off");
    let a = post(&http, "/ingest/ev", &[JSON], br#"{"id":"still","value":2}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    cp.stop().await;
    env.cleanup().await;
}
