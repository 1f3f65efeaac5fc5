//! A stream synced into a new table (a new version, as the diff advises for changes ClickHouse cannot make in
//! place) fills it with every record the stream still holds, not only those that arrive after the change; synced
//! back into a table it filled before, it resumes where it left it, inserting no row twice.

use millrace_proto::v1::ResourceRef;
use millrace_tests::dataplane::*;
use millrace_tests::http::post;
use millrace_tests::*;
use std::time::{Duration, Instant};

async fn distinct_ids(env: &TestEnv, table: &str) -> u64 {
    count(env, table, "uniqExact(id)").await
}

async fn count(env: &TestEnv, table: &str, what: &str) -> u64 {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let sql = format!("SELECT toString({what}) AS d FROM `{}`.`{table}` FORMAT JSONEachRow", env.clickhouse_database);
    let a = post(&addr, "/", &[], sql.as_bytes()).await;
    if a.status != 200 {
        return 0; // not created yet
    }
    let row: serde_json::Value = serde_json::from_str(a.body.lines().next().unwrap_or("{}")).unwrap_or_default();
    row["d"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0)
}

async fn wait_ids(env: &TestEnv, table: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = distinct_ids(env, table).await;
        if have >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{have} of {want} records in table {table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_destination_table_gets_every_record_the_stream_holds() {
    let env = TestEnv::new();
    let mut plan = synced_plan("events", raw_fields(), 2);
    let cp = control_plane_with(&env, &plan).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    let values: Vec<serde_json::Value> = (0..200).map(|i| serde_json::json!({"id": format!("r{i:04}"), "value": i})).collect();
    produce_values(&producer(), &env.topic("events"), &values[..100]).await;
    wait_ids(&env, "events", 100).await;
    // Every record's offset committed: the sync units' offsets are past them all.
    let deadline = Instant::now() + WAIT;
    loop {
        let committed: i64 = workers(&cp).await.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset.max(0)).sum();
        if committed >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the sync units committed {committed} of 100 records");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Version 2 of the table: the stream now syncs into it.
    let mut v2 = plan.tables[0].clone();
    v2.version = "2".into();
    plan.tables.push(v2);
    plan.streams[0].destination = Some(ResourceRef { name: "events".into(), version: "2".into() });
    apply(&mut cp.client().await, &plan, false).await.expect("plan applied");
    produce_values(&producer(), &env.topic("events"), &values[100..]).await;
    wait_ids(&env, "events_2", 200).await;

    // Back to version 1: it gets what it missed meanwhile, and no row twice.
    plan.streams[0].destination = Some(ResourceRef { name: "events".into(), version: String::new() });
    apply(&mut cp.client().await, &plan, false).await.expect("plan applied");
    wait_ids(&env, "events", 200).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(count(&env, "events", "count()").await, 200, "rows inserted twice into the table synced back into");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cp.stop().await;
    env.cleanup().await;
}
