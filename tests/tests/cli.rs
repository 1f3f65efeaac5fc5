//! The `millrace` command against the real stack: the quickstart as a user types it (`millrace dev`, POST, the
//! table, `peek`, an edit that adds a transform, a broken edit, Ctrl-C), and each admin command in text and JSON.

use millrace_proto::v1::*;
use millrace_tests::dataplane::*;
use millrace_tests::http::{post, JSON};
use millrace_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the tests' binaries are (the control plane and worker `millrace dev` starts, too).
fn bin_dir() -> String {
    std::env::var("MILLRACE_BIN_DIR").unwrap_or_else(|_| format!("{}/../target/debug", env!("CARGO_MANIFEST_DIR")))
}

fn millrace() -> String {
    format!("{}/millrace", bin_dir())
}

/// `millrace <args>` with a control plane; (success, stdout, stderr).
fn run(cp: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(millrace()).arg("--control-plane").arg(cp).args(args).output().expect("run millrace");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rows(env: &TestEnv, table: &str) -> Vec<serde_json::Value> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let sql = format!("SELECT * FROM `{}`.`{table}` FORMAT JSONEachRow", env.clickhouse_database);
    let a = post(&addr, "/", &[], sql.as_bytes()).await;
    a.body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `millrace dev`, interrupted (Ctrl-C) when the test ends, even by a failure.
struct Interrupt(std::process::Child);

impl Interrupt {
    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGINT);
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.interrupt();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
        }
    }
}

const TRANSFORM: &str = r#"
class Audit(BaseModel):
    id: Key[str]
    total: int

audit = Stream[Audit]("audit")
final_data.get_stream().add_transform(destination=audit, transformation=lambda r: Audit(id=r.id, total=r.transformedValue + r.anotherTransformedValue))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quickstart_runs_applies_edits_survives_a_broken_app_and_stops_cleanly() {
    let env = TestEnv::new();
    let dir = std::env::temp_dir().join(format!("millrace-dev-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.py");
    let original = std::fs::read_to_string(format!("{}/../examples/reference_chained.py", env!("CARGO_MANIFEST_DIR"))).unwrap();
    std::fs::write(&app, &original).unwrap();
    let db = format!("millrace_t_{}", env.id);
    let state = ["--database", &db, "--clickhouse-database", &env.clickhouse_database, "--topic-namespace", &env.topic_namespace];
    let Dev { process: mut dev, output, cp, http, ports } = start_dev(&app, &state);
    let seen = |s: &str| output.lock().unwrap().contains(s);
    wait_for("millrace dev to be up", Duration::from_secs(300), || seen("watching")).await;
    assert!(seen(&format!("http://{http}/ingest/raw_data")), "the ingest URL is printed");

    // POST records, see them in the table and in peek.
    let body = br#"[{"id":"q1","value":1},{"id":"q2","value":2},{"id":"q3","value":3}]"#;
    let a = post(&http, "/ingest/raw_data", &[JSON], body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let deadline = Instant::now() + WAIT;
    while rows(&env, "final_stream").await.len() < 3 {
        assert!(Instant::now() < deadline, "rows did not reach the table");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = run(&cp, &["peek", "final_stream", "-n", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"id\":\"q3\"") && out.contains("\"anotherTransformedValue\":18"), "{out}");

    // An edit that adds a transform is planned, applied and served.
    std::fs::write(&app, format!("{original}{TRANSFORM}")).unwrap();
    wait_for("the edit to be applied", WAIT, || seen("+ transform final_stream__audit: CREATE") && seen("applied; the sidecar serves")).await;
    let a = post(&http, "/ingest/raw_data", &[JSON], br#"{"id":"q4","value":4}"#).await;
    assert_eq!(a.status, 200);
    // A new transform reads its source from the beginning: every record so far, and the new one.
    let audit = read_topic(env.topic("audit"), 1, |r| r.iter().any(|r| r.value["id"] == "q4")).await;
    let totals: std::collections::BTreeMap<String, i64> =
        audit.iter().map(|r| (r.value["id"].as_str().unwrap().to_string(), r.value["total"].as_i64().unwrap())).collect();
    assert_eq!(totals, [("q1", 10), ("q2", 20), ("q3", 30), ("q4", 40)].map(|(k, v)| (k.to_string(), v)).into());

    // A broken app shows its error and the last good version keeps running; fixing it applies again.
    std::fs::write(&app, format!("{original}{TRANSFORM}\ndef broken(:\n")).unwrap();
    wait_for("the error", WAIT, || seen("syntax error") && seen("the last good version keeps running")).await;
    assert_eq!(post(&http, "/ingest/raw_data", &[JSON], br#"{"id":"q5","value":5}"#).await.status, 200);
    let applies = output.lock().unwrap().matches("applied; the sidecar serves").count();
    std::fs::write(&app, format!("{original}{TRANSFORM}\n# fixed\n")).unwrap();
    wait_for("the fixed app to be applied", WAIT, || output.lock().unwrap().matches("applied; the sidecar serves").count() > applies).await;
    let audit = read_topic(env.topic("audit"), 1, |r| r.iter().any(|r| r.value["id"] == "q5")).await;
    assert!(audit.iter().any(|r| r.value["id"] == "q5"));

    // Ctrl-C stops everything it started.
    dev.interrupt();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "millrace dev did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    for port in ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} is still served after Ctrl-C");
    }
    assert!(seen("stopped control-plane") && seen("stopped worker") && seen("stopped sidecar"));
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_commands_answer_in_text_and_json_and_replay_puts_dead_letters_back() {
    let env = TestEnv::new();
    let mut events = stream("events", raw_fields(), 2);
    events.destination = Some(rref("events"));
    events.dead_letter_queue = Some(rref("events_dlq"));
    let plan = Plan {
        streams: vec![events],
        tables: vec![Table { sync_max_delay_ms: Some(100), ..table("events", raw_fields()) }],
        ingest_apis: vec![IngestApi { name: "events".into(), destination: Some(rref("events")), ..Default::default() }],
        dead_letter_queues: vec![DeadLetterQueue { name: "events_dlq".into(), ..Default::default() }],
        ..Default::default()
    };
    let cp = control_plane_with(&env, &plan).await;
    let _w = Worker::start(&format!("{}-w", env.id), &cp.addr, "default=http://127.0.0.1:1");
    let _ = wait_for_placement(&cp, 1, 2).await;

    let (ok, out, _) = run(&cp.addr, &["ls"]);
    assert!(ok && out.contains("stream") && out.contains("POST /ingest/events -> events") && out.contains("dead_letter_queue"), "{out}");
    let (ok, out, _) = run(&cp.addr, &["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && listed.as_array().unwrap().iter().any(|r| r["kind"] == "table" && r["name"] == "events"), "{out}");

    produce(&producer(), &env.topic("events"), &raws(0..5)).await;
    let (ok, out, err) = run(&cp.addr, &["peek", "events", "-n", "2", "--json"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l["value"]["id"].as_str().unwrap().starts_with("id-")));
    let (ok, _, err) = run(&cp.addr, &["peek", "nope"]);
    assert!(!ok && err.contains("no stream or dead letter queue named `nope`"), "{err}");

    let (ok, out, _) = run(&cp.addr, &["status"]);
    assert!(ok && out.contains("1 live worker") && out.contains("table_sync/events/0"), "{out}");
    let (ok, out, _) = run(&cp.addr, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && status["workers"][0]["units"].as_array().unwrap().len() == 2, "{out}");

    // Two dead letters, as a refused insert leaves them; replay sends the chosen one back and it reaches the table.
    // One under moose's names (as workers write them now), one under an earlier Millrace's: both are read.
    let letter = |id: &str, error_type: &str| {
        serde_json::json!({"original_record": {"id": id, "value": 7}, "error_message": "boom", "error_type": error_type,
            "failed_at": "2026-11-25T10:00:00Z", "source": "table", "function": "table:events", "topic": env.topic("events"),
            "partition": 0, "offset": 3})
    };
    let moose_letter = |id: &str, error_type: &str| {
        serde_json::json!({"originalRecord": {"id": id, "value": 7}, "errorMessage": "boom", "errorType": error_type,
            "failedAt": "2026-11-25T10:00:00Z", "source": "table", "function": "table:events", "topic": env.topic("events"),
            "partition": 0, "offset": 3})
    };
    produce_values(&producer(), &env.topic("events_dlq"), &[letter("back-1", "ValueError"), moose_letter("stay", "KeyError")]).await;
    let (ok, out, _) = run(&cp.addr, &["dlq", "events_dlq"]);
    assert!(ok && out.contains("(ValueError)") && out.contains("back-1") && out.contains("(KeyError)"), "{out}");
    let (ok, out, _) = run(&cp.addr, &["dlq", "events_dlq", "--json", "--filter", "error_type=KeyError"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && shown.as_array().unwrap().len() == 1 && shown[0]["originalRecord"]["id"] == "stay", "{out}");
    let (ok, out, err) = run(&cp.addr, &["dlq", "replay", "events_dlq", "--json", "--filter", "error_type=NoSuchError"]);
    let none: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok && none["replayed"] == 0 && none["chosen"] == 0, "{out}");
    let (ok, out, err) = run(&cp.addr, &["dlq", "replay", "events_dlq", "--filter", "error_type=ValueError"]);
    assert!(ok && out.contains("replayed 1 of 1 dead letters (0 skipped, 0 failed)"), "{out}{err}");
    let deadline = Instant::now() + WAIT;
    loop {
        let ids: Vec<String> = rows(&env, "events").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        if ids.contains(&"back-1".to_string()) {
            assert!(!ids.contains(&"stay".to_string()), "only the chosen dead letter was replayed");
            break;
        }
        assert!(Instant::now() < deadline, "the replayed record did not reach the table: {ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // plan and apply of a Python app, through the Python SDK.
    let app = std::env::temp_dir().join(format!("millrace-cli-{}.py", env.id));
    std::fs::write(&app, "from pydantic import BaseModel\nfrom millrace import Key, Stream\nclass R(BaseModel):\n    id: Key[str]\nonly = Stream[R](\"only\")\n").unwrap();
    let app = app.to_str().unwrap();
    let (ok, out, err) = run(&cp.addr, &["plan", app]);
    assert!(ok && out.contains("+ stream only: CREATE") && out.contains("- ingest_api events: DELETE"), "{out}{err}");
    let (ok, out, err) = run(&cp.addr, &["plan", app, "--json"]);
    let planned: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok && planned["dryRun"] == true, "{out}");
    let (ok, out, err) = run(&cp.addr, &["apply", app, "--json"]);
    let applied: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok && applied["applyId"].as_str().is_some_and(|id| id != "0"), "{out}");
    let (ok, out, _) = run(&cp.addr, &["plan", app]);
    assert!(ok && out.starts_with("nothing to do"), "{out}");
    env.cleanup().await;
}

/// `millrace dev app` on free ports, with `extra` flags (none: its default state).
/// A running `millrace dev`: its process, its output so far, its control plane URL, its ingest address, and the
/// ports it serves (control plane, HTTP, sidecar).
struct Dev {
    process: Interrupt,
    output: Arc<Mutex<String>>,
    cp: String,
    http: String,
    ports: [u16; 3],
}

fn start_dev(app: &std::path::Path, extra: &[&str]) -> Dev {
    let (cp_port, http_port, sidecar_port) = (free_port(), free_port(), free_port());
    let (cp, http) = (format!("http://127.0.0.1:{cp_port}"), format!("127.0.0.1:{http_port}"));
    let mut child = Command::new(millrace())
        .args(["--control-plane", &cp, "dev", app.to_str().unwrap(), "--http-listen", &http, "--sidecar-port", &sidecar_port.to_string()])
        .args(extra)
        .env("MILLRACE_SIDECAR_PROCESSES", "1")
        .env("MILLRACE_BIN_DIR", bin_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start millrace dev");
    let output = Arc::new(Mutex::new(String::new()));
    let reader = BufReader::new(child.stdout.take().unwrap());
    let sink = output.clone();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            println!("dev> {line}");
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Dev { process: Interrupt(child), output, cp, http, ports: [cp_port, http_port, sidecar_port] }
}

/// The state `millrace dev` printed: (Postgres database, ClickHouse database, topic prefix).
fn state_of(output: &str) -> (String, String, String) {
    // Without the line, the names millrace dev has always used.
    let Some(line) = output.lines().find(|l| l.starts_with("state of this app:")) else {
        return ("millrace".into(), "millrace".into(), String::new());
    };
    let word_after = |w: &str| line.split(w).nth(1).and_then(|r| r.split([' ', ',']).find(|s| !s.is_empty())).unwrap_or_default().to_string();
    (word_after("Postgres database "), word_after("ClickHouse database "), word_after("topics prefixed "))
}

async fn count(database: &str, table: &str) -> Option<u64> {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    let a = post(&addr, "/", &[], format!("SELECT count() FROM `{database}`.`{table}`").as_bytes()).await;
    (a.status == 200).then(|| a.body.trim().parse().unwrap())
}

async fn stop(dev: Interrupt) {
    dev.interrupt();
    let mut dev = dev;
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "millrace dev did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drop_state(postgres: &str, clickhouse: &str) {
    let addr = clickhouse_url().trim_start_matches("http://").to_string();
    post(&addr, "/", &[], format!("DROP DATABASE IF EXISTS `{clickhouse}`").as_bytes()).await;
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server())).await {
        let _ = sqlx::Executor::execute(&mut c, format!("DROP DATABASE IF EXISTS \"{postgres}\" WITH (FORCE)").as_str()).await;
    }
}

const NOTES: &str = r#"
from millrace import IngestPipeline, IngestPipelineConfig, Key
from pydantic import BaseModel

class Note(BaseModel):
    id: Key[str]
    text: str

notes = IngestPipeline[Note]("notes", IngestPipelineConfig(ingest_api=True, stream=True, table=TABLE))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_keeps_each_apps_state_apart_and_does_not_drop_rows_unasked() {
    let env = TestEnv::new();
    let root = std::env::temp_dir().join(format!("millrace-apps-{}", env.id));
    let (a, b) = (root.join("shop").join("app.py"), root.join("notes").join("app.py"));
    for p in [&a, &b] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    std::fs::write(&a, std::fs::read_to_string(format!("{}/../examples/reference_chained.py", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap();
    std::fs::write(&b, NOTES.replace("TABLE", "True")).unwrap();

    // The first app, with rows in its table.
    let Dev { process: dev, output, http, .. } = start_dev(&a, &[]);
    wait_for("millrace dev to be up", Duration::from_secs(300), || output.lock().unwrap().contains("watching")).await;
    let (pg_a, ch_a, ns_a) = state_of(&output.lock().unwrap());
    assert_eq!(post(&http, "/ingest/raw_data", &[JSON], br#"{"id":"a1","value":1}"#).await.status, 200);
    let deadline = Instant::now() + WAIT;
    while count(&ch_a, "final_stream").await != Some(1) {
        assert!(Instant::now() < deadline, "the first app's row did not reach its table");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(dev).await;

    // Another app, in another directory: its own state; the first app's table and rows stay.
    let Dev { process: dev, output, http, .. } = start_dev(&b, &[]);
    wait_for("millrace dev to be up", Duration::from_secs(300), || output.lock().unwrap().contains("watching")).await;
    let (pg_b, ch_b, ns_b) = state_of(&output.lock().unwrap());
    assert_eq!(count(&ch_a, "final_stream").await, Some(1), "the first app's table and its row are still there");
    assert!(pg_a.starts_with("millrace_shop_") && ch_a == pg_a && ns_a.starts_with("shop_"), "{pg_a} {ch_a} {ns_a}");
    assert!(pg_b.starts_with("millrace_notes_") && ch_b == pg_b && ns_b.starts_with("notes_"), "{pg_b} {ch_b} {ns_b}");

    // A change that drops a table holding rows is shown and not applied.
    assert_eq!(post(&http, "/ingest/notes", &[JSON], br#"{"id":"n1","text":"keep me"}"#).await.status, 200);
    let deadline = Instant::now() + WAIT;
    while count(&ch_b, "notes").await != Some(1) {
        assert!(Instant::now() < deadline, "the note did not reach its table");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&b, NOTES.replace("TABLE", "False")).unwrap();
    let seen = |s: &str| output.lock().unwrap().contains(s);
    wait_for("the refusal", WAIT, || seen("not applied: the change drops table notes") && seen("holding 1 rows") && seen("--allow-drop")).await;
    assert_eq!(count(&ch_b, "notes").await, Some(1), "the table and its row are still there");
    stop(dev).await;

    let _ = std::fs::remove_dir_all(&root);
    drop_state(&pg_a, &ch_a).await;
    drop_state(&pg_b, &ch_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_units_no_worker_runs() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &synced_plan("events", raw_fields(), 2)).await;
    let addr = cp.addr.clone();
    // No worker at all: both sync units are declared and run nowhere; status must say so, in text and JSON.
    let (ok, text, err) = tokio::task::spawn_blocking(move || run(&addr, &["status"])).await.unwrap();
    assert!(ok, "{err}");
    assert!(text.contains("2 unit(s) not running") && text.contains("table_sync/events/0") && text.contains("table_sync/events/1"), "{text}");
    let addr = cp.addr.clone();
    let (ok, json, err) = tokio::task::spawn_blocking(move || run(&addr, &["status", "--json"])).await.unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["not_running"].as_array().map(|a| a.len()), Some(2), "{json}");
    cp.stop().await;
    env.cleanup().await;
}

/// The pid of the process `millrace dev` (pid `dev`) started whose command line holds `what` (and not `--child`: the
/// sidecar's own server processes are its children, not dev's).
fn started_by(dev: u32, what: &str) -> Option<i32> {
    let pids = std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.into_iter().find(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the command's name (in parentheses, which may hold spaces): its state, then its parent's pid.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        let command = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        parent == Some(dev) && command.contains(what) && !command.contains("--child")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_says_when_a_process_it_started_dies_and_restarts_it() {
    let env = TestEnv::new();
    let dir = std::env::temp_dir().join(format!("millrace-dev-restart-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.py");
    std::fs::write(&app, std::fs::read_to_string(format!("{}/../examples/reference_chained.py", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap();
    let db = format!("millrace_t_{}", env.id);
    let state = ["--database", &db, "--clickhouse-database", &env.clickhouse_database, "--topic-namespace", &env.topic_namespace];
    let Dev { process: dev, output, http, .. } = start_dev(&app, &state);
    let seen = |s: &str| output.lock().unwrap().contains(s);
    wait_for("millrace dev to be up", Duration::from_secs(300), || seen("watching")).await;

    // Posts records r<from>..r<to> and waits (bounded) until every record posted so far is in the table; the ids
    // missing, if some never arrive.
    let post_and_wait = |from: usize, to: usize, within: Duration| {
        let (env, http) = (&env, http.clone());
        async move {
            let batch: Vec<serde_json::Value> = (from..to).map(|i| serde_json::json!({"id": format!("r{i}"), "value": i})).collect();
            let a = post(&http, "/ingest/raw_data", &[JSON], serde_json::to_string(&batch).unwrap().as_bytes()).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let deadline = Instant::now() + within;
            loop {
                let ids: std::collections::BTreeSet<String> = rows(env, "final_stream").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
                let missing: Vec<String> = (0..to).map(|i| format!("r{i}")).filter(|id| !ids.contains(id)).collect();
                if missing.is_empty() || Instant::now() >= deadline {
                    return missing;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(post_and_wait(0, 3, WAIT).await, Vec::<String>::new(), "records before any kill reach the table");

    // kill -9 of each process dev started: dev says which died and how, starts it again, and records posted
    // afterwards reach the table (the worker's units move to its successor once the dead one's lease ends).
    let mut posted = 3;
    for (name, command) in [("control-plane", "millrace-control-plane"), ("worker", "millrace-worker"), ("sidecar", "millrace serve")] {
        let pid = started_by(dev.0.id(), command).unwrap_or_else(|| panic!("no {name} started by millrace dev"));
        let before = output.lock().unwrap().len();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let (died, back) = (format!("{name} (pid {pid}) was killed by signal 9 (SIGKILL)"), format!("{name} is back"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(seen(&died) && seen(&back)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let said = (seen(&died), seen(&back));
        let missing = post_and_wait(posted, posted + 3, Duration::from_secs(90)).await;
        posted += 3;
        let after = output.lock().unwrap()[before..].to_string();
        assert!(
            said == (true, true) && missing.is_empty(),
            "after kill -9 of the {name} (pid {pid}): millrace dev said it died: {}, said it is back: {}; records posted after the \
             kill missing from the table after 90 s: {missing:?}; dev's output since the kill:\n{after}",
            said.0,
            said.1
        );
        assert!(after.contains(&format!("dev/{name}.log")), "the line names its log: {after}");
        assert!(started_by(dev.0.id(), command).is_some_and(|p| p != pid), "a new {name} runs");
    }

    // Ctrl-C stops everything, and nothing is started again while it does.
    let before = output.lock().unwrap().len();
    stop(dev).await;
    let after = output.lock().unwrap()[before..].to_string();
    assert!(after.contains("stopped control-plane") && after.contains("stopped worker") && after.contains("stopped sidecar"), "{after}");
    // (dev's own lines about its processes start with "! " or "✓ "; the sidecar's output is shown after "  | ".)
    assert!(!after.lines().any(|l| l.starts_with("! ") || l.contains(" is back (pid ")), "nothing restarts while dev stops: {after}");
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
