//! `millrace dlq replay` against the real stack: a replayed dead letter reaches only the function (or table sync)
//! that failed it, keeps its bytes (wide numbers too), and a record the ingest API refused is checked again.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::http::{post, JSON};
use millrace_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn millrace() -> String {
    let dir = std::env::var("MILLRACE_BIN_DIR").unwrap_or_else(|_| format!("{}/../target/debug", env!("CARGO_MANIFEST_DIR")));
    format!("{dir}/millrace")
}

/// `millrace <args>` with a control plane and the worker's ingest API; (success, stdout, stderr).
fn run(cp: &str, ingest: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(millrace()).arg("--control-plane").arg(cp).args(args).env("MILLRACE_INGEST_URL", ingest).output().expect("run millrace");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Rec {
    id: String,
    value: i64,
}

/// A sidecar whose `fail_until_fixed` fails on negative values until `fixed` is set (a function being fixed).
async fn sidecar(fixed: Arc<AtomicBool>) -> String {
    let rt = millrace_sdk::Runtime::new("replay").try_transform("fail_until_fixed", move |r: Rec| {
        if r.value < 0 && !fixed.load(Ordering::SeqCst) {
            Err(format!("value {} is negative", r.value))
        } else {
            Ok(Rec { id: r.id, value: r.value * 2 })
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(rt.serve_with_listener(l, std::future::pending()));
    format!("default=http://127.0.0.1:{port}")
}

/// Every record of a one-partition topic: (payload text, headers), read to its end (as fetches report it: the
/// broker's ListOffsets may lag).
fn records(topic: &str) -> Vec<(String, Vec<(String, String)>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "millrace-tests-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "read {} records of {topic}, and not its end", out.len());
        match c.poll(Timeout::After(Duration::from_millis(200))) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
                    .unwrap_or_default();
                out.push((String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(), headers));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}

async fn ids(env: &TestEnv, table: &str) -> Vec<String> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let sql = format!("SELECT id FROM `{}`.`{table}` ORDER BY id FORMAT JSONEachRow", env.clickhouse_database);
    let a = post(&addr, "/", &[], sql.as_bytes()).await;
    a.body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect()
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut ok: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const WIDE: &str = r#"{"id":"wide","value":-2,"big":12345678901234567890123}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_reaches_only_the_failed_function_keeps_wide_numbers_and_revalidates_refused_records() {
    let env = TestEnv::new();
    let fixed = Arc::new(AtomicBool::new(false));
    let mut events = stream("events", raw_fields(), 1);
    events.destination = Some(rref("events"));
    events.dead_letter_queue = Some(rref("events_dlq"));
    let plan = Plan {
        streams: vec![events, stream("out", raw_fields(), 1)],
        tables: vec![Table { sync_max_delay_ms: Some(100), ..table("events", raw_fields()) }],
        transforms: vec![transform("events_to_out", "events", "out", "fail_until_fixed")],
        ingest_apis: vec![IngestApi {
            name: "events".into(),
            destination: Some(rref("events")),
            dead_letter_queue: Some(rref("events_dlq")),
            ..Default::default()
        }],
        dead_letter_queues: vec![DeadLetterQueue { name: "events_dlq".into(), ..Default::default() }],
        ..Default::default()
    };
    let cp = control_plane_with(&env, &plan).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, &sidecar(fixed.clone()).await);
    let placed = wait_for_placement(&cp, 1, 2).await;
    let http = placed[0].http_address.clone();

    // Two records the transform fails on (one with a number wider than 64 bits), one it takes; the table takes all.
    let p = producer();
    produce(&p, &env.topic("events"), &[Raw { id: "ok-1".into(), value: 1 }, Raw { id: "bad-1".into(), value: -1 }]).await;
    p.send(FutureRecord::to(&env.topic("events")).key("wide").payload(WIDE), Timeout::After(WAIT)).await.unwrap();
    // A record the ingest API refuses, and a refused one that the stream's schema takes now.
    let a = post(&http, "/ingest/events", &[JSON], br#"{"id":"api-bad","value":"nope"}"#).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let letter = serde_json::json!({"original_record": {"id": "api-ok", "value": 5}, "error_message": "value: was refused",
        "error_type": "ValidationError", "failed_at": "2026-11-25T10:00:00Z", "source": "api", "function": "ingest:events",
        "topic": env.topic("events"), "partition": -1, "offset": -1});
    produce_values(&p, &env.topic("events_dlq"), &[letter]).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (rows, letters) = (ids(&env, "events").await, records(&env.topic("events_dlq")));
        if rows.len() == 3 && letters.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "three rows in the table and four dead letters: {rows:?} {letters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(records(&env.topic("out")).len(), 1);

    // The function is fixed; every dead letter is replayed.
    fixed.store(true, Ordering::SeqCst);
    let ingest = format!("http://{http}");
    let (ok, out, err) = run(&cp.addr, &ingest, &["dlq", "replay", "events_dlq", "--json"]);
    println!("{out}{err}");

    // The transform's destination gets the replayed records' outputs, once; the table gets no second copy of the
    // rows it has, and the record the ingest API takes now reaches both.
    wait_until("the replayed outputs", || async {
        let out: Vec<String> = records(&env.topic("out")).into_iter().map(|(v, _)| v).collect();
        out.len() >= 4
    })
    .await;
    wait_until("api-ok in the table", || async { ids(&env, "events").await.contains(&"api-ok".to_string()) }).await;
    let outputs: Vec<serde_json::Value> = records(&env.topic("out")).iter().map(|(v, _)| serde_json::from_str(v).unwrap()).collect();
    let mut got: Vec<(String, i64)> = outputs.iter().map(|o| (o["id"].as_str().unwrap().to_string(), o["value"].as_i64().unwrap())).collect();
    got.sort();
    assert_eq!(got, [("api-ok", 10), ("bad-1", -2), ("ok-1", 2), ("wide", -4)].map(|(k, v)| (k.to_string(), v)));
    assert_eq!(ids(&env, "events").await, ["api-ok", "bad-1", "ok-1", "wide"], "every row once");

    // The replayed records went back with their bytes, for the transform only.
    let source = records(&env.topic("events"));
    let replayed: Vec<&(String, Vec<(String, String)>)> = source.iter().filter(|(_, h)| h.iter().any(|(k, _)| k == "millrace-replay-for")).collect();
    assert_eq!(replayed.len(), 2, "{source:?}");
    assert!(replayed.iter().all(|(_, h)| h.contains(&("millrace-replay-for".to_string(), "events_to_out".to_string()))), "{replayed:?}");
    assert!(replayed.iter().any(|(v, _)| v == WIDE), "the wide number keeps its digits: {replayed:?}");

    // The report: exactly what was replayed, and what was skipped and why.
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert_eq!((report["chosen"].as_u64(), report["replayed"].as_u64()), (Some(4), Some(3)), "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["function"], "ingest:events", "{report}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("still invalid: value"), "{report}");
    assert_eq!(report["failed"].as_array().map(Vec::len), Some(0), "{report}");

    // In text, and choosing by a field of the original record (the refused record was dead-lettered again).
    let (ok, out, err) = run(&cp.addr, &ingest, &["dlq", "replay", "events_dlq", "--filter", "original_record.id=api-bad"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("replayed 0 of 2 dead letters (2 skipped, 0 failed)") && out.contains("still invalid: value"), "{out}");

    // A replayed record last in the partition: the table sync skips it, counts it, and commits past it.
    let (ok, out, err) = run(&cp.addr, &ingest, &["dlq", "replay", "events_dlq", "--filter", "original_record.id=bad-1"]);
    assert!(ok && out.contains("replayed 1 of 1 dead letters (0 skipped, 0 failed)"), "{out}{err}");
    let end = records(&env.topic("events")).len() as i64;
    wait_until("the table sync to commit past the skipped records", || async {
        let ws = workers(&cp).await;
        ws.iter().flat_map(|w| &w.assignments).any(|a| a.unit_id == "table_sync/events/0" && a.committed_offset == end)
    })
    .await;
    assert_eq!(metric(&metrics_of(&cp, &format!("{}-w", env.id)).await, "millrace_replays_skipped_total"), 3);
    assert_eq!(ids(&env, "events").await.len(), 4, "still every row once");
    env.cleanup().await;
}
