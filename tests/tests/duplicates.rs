//! Duplicates do not compound down a chain (issue #21): after a kill -9, every hop re-emits what it had processed
//! but not committed, and each unit downstream drops what it had already read (by the provenance header), so a
//! record reaches the last stream and the table at most twice, however many hops it went through.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::http::post;
use millrace_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// src → (pause_1ms) → mid → (pause_1ms) → fin → table fin: three hops, one partition each, one worker.
fn chain() -> Plan {
    let mut src = stream("src", raw_fields(), 1);
    src.dead_letter_queue = Some(rref("dlq"));
    let mut fin = stream("fin", raw_fields(), 1);
    fin.destination = Some(rref("fin"));
    fin.dead_letter_queue = Some(rref("dlq"));
    let mut t = table("fin", raw_fields());
    t.sync_max_delay_ms = Some(200);
    Plan {
        streams: vec![src, stream("mid", raw_fields(), 1), fin],
        transforms: vec![transform("src_to_mid", "src", "mid", "pause_1ms"), transform("mid_to_fin", "mid", "fin", "pause_1ms")],
        tables: vec![t],
        dead_letter_queues: vec![DeadLetterQueue { name: "dlq".into(), ..Default::default() }],
        ..Default::default()
    }
}

/// Rows of table `fin` per id.
async fn table_counts(env: &TestEnv) -> HashMap<String, u64> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let sql = format!("SELECT id, count() AS n FROM `{}`.`fin` GROUP BY id FORMAT JSONEachRow", env.clickhouse_database);
    let a = post(&addr, "/", &[], sql.as_bytes()).await;
    assert_eq!(a.status, 200, "{sql}: {}", a.body);
    a.body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = v["n"].as_u64().or_else(|| v["n"].as_str().and_then(|s| s.parse().ok())).unwrap();
            (v["id"].as_str().unwrap().to_string(), n)
        })
        .collect()
}

/// Copies per id: the most, and how many ids had more than two.
fn spread(counts: &HashMap<String, u64>) -> (u64, usize, u64) {
    let max = counts.values().copied().max().unwrap_or(0);
    let over_two = counts.values().filter(|n| **n > 2).count();
    (max, over_two, counts.values().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_mid_chain_delivers_every_record_to_the_table_at_most_twice() {
    const N: i64 = 4000;
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &chain()).await;
    let sidecar = Sidecar::start().await;
    // Offsets reported every 1.5 s: killed a second after a report, each hop holds a second of processed,
    // uncommitted records.
    let a_name = format!("{}-a", env.id);
    // Batches of 100 (a tenth of a second of the function's time): none outlives its deadline, so the kill is the
    // only fault.
    let mut a = Worker::start_with(&a_name, &cp.addr, &sidecar.url(), &["--progress-interval-ms", "1500", "--batch-size", "100"]);
    wait_for_placement(&cp, 1, 3).await;

    // 1,000 records a second for 4 s: the chain is busy at every hop when the worker dies.
    let src = env.topic("src");
    let load = tokio::spawn(async move {
        let p = records::producer();
        for chunk in 0..N / 100 {
            records::produce(&p, &src, &records::raws(chunk * 100..chunk * 100 + 100)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Every hop has committed (so the new worker starts each one past the beginning, with the marks committed
    // there) and the table fills.
    let deadline = Instant::now() + WAIT;
    loop {
        let ws = workers(&cp).await;
        let committed = ws.iter().filter(|w| w.name == a_name).flat_map(|w| &w.assignments).filter(|u| u.committed_offset > 0).count();
        if committed == 3 && table_counts(&env).await.len() >= 600 {
            break;
        }
        assert!(Instant::now() < deadline, "the chain never filled the table and committed at every hop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.kill9();
    let b_name = format!("{}-b", env.id);
    let _b = Worker::start_with(&b_name, &cp.addr, &sidecar.url(), &["--batch-size", "100"]);
    load.await.unwrap();

    // Every record arrives; then nothing more for a while (re-emits still on their way would come meanwhile).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut counts = table_counts(&env).await;
    while counts.len() < N as usize {
        assert!(Instant::now() < deadline, "{} of {N} ids in the table", counts.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
        counts = table_counts(&env).await;
    }
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = table_counts(&env).await;
        if now != counts {
            counts = now;
            quiet_since = Instant::now();
        }
    }
    let fin = records::read_quiet(env.topic("fin"), 1, Duration::from_secs(3)).await;
    let mut in_fin: HashMap<String, u64> = HashMap::new();
    for r in &fin {
        *in_fin.entry(r.value["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let mid = records::read_quiet(env.topic("mid"), 1, Duration::from_secs(2)).await;
    let text = metrics_of(&cp, &b_name).await;
    let dropped: u64 = text
        .lines()
        .filter(|l| l.starts_with("millrace_duplicates_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let (table_max, table_over, table_rows) = spread(&counts);
    let (fin_max, fin_over, fin_records) = spread(&in_fin);
    println!(
        "kill -9 mid-chain, {N} records: table {table_rows} rows (most copies of one id: {table_max}, ids over two: {table_over}); \
         fin {fin_records} records (most: {fin_max}, over two: {fin_over}); mid {} records; re-emits dropped by the new worker: {dropped}",
        mid.len()
    );
    assert_eq!(counts.len(), N as usize, "ids lost in the table");
    assert_eq!(in_fin.len(), N as usize, "ids lost in the last stream");
    assert!(fin_max <= 2, "{fin_over} ids reached the last stream more than twice (up to {fin_max} times)");
    assert!(table_max <= 2, "{table_over} ids reached the table more than twice (up to {table_max} times)");
    assert!(mid.len() > N as usize, "the first hop re-emitted nothing: the kill did not land mid-flow ({} records)", mid.len());
    assert!(dropped > 0, "the re-emits were never dropped: nothing tested");
    cp.stop().await;
    env.cleanup().await;
}
