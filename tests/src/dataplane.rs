//! Sidecars, workers and records for the data-plane tests.

pub use crate::records::*;
use crate::{kafka_brokers, ControlPlane, WAIT};
use crate::{raw_fields, rref, stream, table, transform};
use millrace_proto::v1::{DeadLetterQueue, Field, IngestApi, LifeCycle, ListWorkersRequest, Plan, Stream, WorkerInfo};
use std::time::Instant;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Raw {
    pub id: String,
    pub value: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[allow(non_snake_case)]
pub struct Intermediate {
    pub id: String,
    pub transformedValue: i64,
    pub transformedAt: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[allow(non_snake_case)]
pub struct Final {
    pub id: String,
    pub transformedValue: i64,
    pub anotherTransformedValue: i64,
    pub transformedAt: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug)]
pub struct NegativeValue(i64);

impl std::fmt::Display for NegativeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "value {} is negative", self.0)
    }
}

/// The test sidecar's functions: the reference page's chain, and a few shapes.
pub fn runtime(consumed: Arc<AtomicU64>) -> millrace_sdk::Runtime {
    millrace_sdk::Runtime::new("tests")
        .transform("double_value", |r: Raw| Intermediate { id: r.id, transformedValue: r.value * 2, transformedAt: chrono::Utc::now() })
        .transform("triple_value", |r: Intermediate| Final {
            id: r.id,
            transformedValue: r.transformedValue * 2,
            anotherTransformedValue: r.transformedValue * 3,
            transformedAt: chrono::Utc::now(),
        })
        .try_transform("double_or_fail", |r: Raw| {
            if r.value < 0 {
                Err(NegativeValue(r.value))
            } else {
                Ok(Raw { id: r.id, value: r.value * 2 })
            }
        })
        .transform("evens_only", |r: Raw| (r.value % 2 == 0).then_some(r))
        .transform("split_in_three", |r: Raw| (0..3).map(|i| Raw { id: format!("{}-{i}", r.id), value: r.value }).collect::<Vec<_>>())
        // Stalls on its first call only: a sidecar that times out once.
        .transform("slow_first_call", {
            let first = std::sync::atomic::AtomicBool::new(true);
            move |r: Raw| {
                if first.swap(false, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_secs(3));
                }
                r
            }
        })
        // Value 7 makes an output far over the broker's 1 MB limit.
        .transform("inflate", |r: Raw| {
            let pad = if r.value == 7 { "x".repeat(2_000_000) } else { String::new() };
            serde_json::json!({ "id": r.id, "value": r.value, "pad": pad })
        })
        // A millisecond a record: units stay busy and their backlog stays in the broker (the memory benchmark).
        .transform("pause_1ms", |r: Raw| {
            std::thread::sleep(Duration::from_millis(1));
            r
        })
        // Value 13 takes longer than any sidecar timeout the tests set.
        .transform("sleep_on_13", |r: Raw| {
            if r.value == 13 {
                std::thread::sleep(Duration::from_secs(5));
            }
            r
        })
        .consumer("count", move |_: Raw| {
            consumed.fetch_add(1, Ordering::SeqCst);
        })
}

/// An in-process sidecar that can be stopped and started again on the same port.
pub struct Sidecar {
    pub port: u16,
    pub consumed: Arc<AtomicU64>,
    max_message_bytes: usize,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    pub async fn start() -> Self {
        Self::start_with_limit(64 << 20).await
    }

    /// A sidecar that refuses batch messages over `max_message_bytes`.
    pub async fn start_with_limit(max_message_bytes: usize) -> Self {
        let mut s = Self { port: 0, consumed: Arc::default(), max_message_bytes, stop: None, task: None };
        s.listen(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        s
    }

    fn listen(&mut self, l: tokio::net::TcpListener) {
        self.port = l.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel();
        let rt = runtime(self.consumed.clone()).max_message_bytes(self.max_message_bytes);
        self.task = Some(tokio::spawn(async move {
            let _ = rt.serve_with_listener(l, async { let _ = rx.await; }).await;
        }));
        self.stop = Some(tx);
    }

    pub fn url(&self) -> String {
        format!("default=http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => return self.listen(l),
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "cannot rebind the sidecar port: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The test sidecar as a process of its own (`millrace-test-sidecar`), restarted whenever it dies, as a
/// supervisor would; stopped when dropped.
pub struct SidecarProcess {
    pub port: u16,
    pub restarts: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SidecarProcess {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (stop, restarts) = (Arc::new(std::sync::atomic::AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (st, rs) = (stop.clone(), restarts.clone());
        let thread = std::thread::spawn(move || {
            let bin = binary("millrace-test-sidecar");
            while !st.load(Ordering::SeqCst) {
                let mut child = Command::new(&bin)
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the test sidecar");
                loop {
                    if st.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    if child.try_wait().expect("wait for the sidecar").is_some() {
                        rs.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Self { port, restarts, stop, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("default=http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A worker process (the real binary), killed when dropped.
pub struct Worker {
    pub child: Child,
    pub name: String,
}

/// `MILLRACE_TEST_WORKER_BIN` runs another build of the worker (an older one, to see a test fail on it).
fn worker_binary() -> PathBuf {
    std::env::var_os("MILLRACE_TEST_WORKER_BIN").map(PathBuf::from).unwrap_or_else(|| binary("millrace-worker"))
}

/// A binary of the workspace, beside the running test or bench executable.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // Tests run from target/<profile>/deps, the bench binaries from target/<profile>.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)", bin.display());
    bin
}

impl Worker {
    pub fn start(name: &str, control_plane: &str, sidecar: &str) -> Self {
        Self::start_with(name, control_plane, sidecar, &[])
    }

    /// A worker with extra flags.
    pub fn start_with(name: &str, control_plane: &str, sidecar: &str, extra: &[&str]) -> Self {
        Self::start_on(&kafka_brokers(), name, control_plane, sidecar, extra)
    }

    /// A worker with extra flags (which replace the tests' defaults of the same name), on another broker.
    pub fn start_on(brokers: &str, name: &str, control_plane: &str, sidecar: &str, extra: &[&str]) -> Self {
        Self::start_env(brokers, name, control_plane, sidecar, extra, &[])
    }

    /// The same, with environment variables set for it.
    pub fn start_env(brokers: &str, name: &str, control_plane: &str, sidecar: &str, extra: &[&str], vars: &[(&str, &str)]) -> Self {
        let defaults = [("--batch-linger-ms", "10"), ("--progress-interval-ms", "100")];
        let defaults = defaults.iter().filter(|(flag, _)| !extra.contains(flag)).flat_map(|(f, v)| [*f, *v]);
        let log_dir = std::env::temp_dir().join("millrace-test-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(worker_binary())
            .args(["--control-plane", control_plane, "--kafka-brokers", brokers, "--sidecar", sidecar])
            .args(["--http-listen", "127.0.0.1:0", "--name", name])
            .args(defaults)
            .args(extra)
            // MILLRACE_TEST_WORKER_LOG=debug shows more when a test fails.
            .env("RUST_LOG", std::env::var("MILLRACE_TEST_WORKER_LOG").unwrap_or_else(|_| "info".into()))
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the worker");
        Self { child, name: name.into() }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal the worker");
    }

    /// Whether the process has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two worker processes sharing `units` evenly; `moving` is worker A's set (unit id and epoch), the one a test
/// stops, pauses or kills.
pub struct Pair {
    pub a: Worker,
    pub b: Worker,
    pub placed: Vec<WorkerInfo>,
    pub moving: HashMap<String, u64>,
}

impl Pair {
    pub async fn start(env: &crate::TestEnv, cp: &ControlPlane, sidecar: &str, units: usize) -> Self {
        let a = Worker::start(&format!("{}-a", env.id), &cp.addr, sidecar);
        let b = Worker::start(&format!("{}-b", env.id), &cp.addr, sidecar);
        let placed = wait_for_placement(cp, 2, units).await;
        let moving = units_of(&placed, &a.name);
        Self { a, b, placed, moving }
    }
}

pub async fn workers(cp: &ControlPlane) -> Vec<WorkerInfo> {
    cp.client().await.list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers
}


/// Waits until `n` live workers hold all `units` between them, evenly; returns them.
pub async fn wait_for_placement(cp: &ControlPlane, n: usize, units: usize) -> Vec<WorkerInfo> {
    let deadline = Instant::now() + WAIT;
    loop {
        let live: Vec<WorkerInfo> = workers(cp).await.into_iter().filter(|w| w.live).collect();
        let held: Vec<usize> = live.iter().map(|w| w.assignments.len()).collect();
        if live.len() == n && held.iter().sum::<usize>() == units && held.iter().all(|h| h.abs_diff(units / n) <= 1) {
            return live;
        }
        assert!(Instant::now() < deadline, "placement not reached: {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}


/// Units of one worker, by id, with their epochs.
pub fn units_of(ws: &[WorkerInfo], name: &str) -> HashMap<String, u64> {
    ws.iter().filter(|w| w.name == name && w.live).flat_map(|w| w.assignments.iter().map(|a| (a.unit_id.clone(), a.epoch))).collect()
}


/// One source stream of `partitions`, one transform running `function` into `out`, and a dead letter queue.
pub fn single_plan(partitions: u32, function: &str) -> Plan {
    let mut src = stream("src", raw_fields(), partitions);
    src.dead_letter_queue = Some(rref("src_dlq"));
    Plan {
        streams: vec![src, stream("out", raw_fields(), partitions)],
        transforms: vec![transform("src_to_out", "src", "out", function)],
        dead_letter_queues: vec![DeadLetterQueue { name: "src_dlq".into(), ..Default::default() }],
        ..Default::default()
    }
}

/// The value of the first sample of a metric in Prometheus text, 0 when absent.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the worker");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut buf)).await.expect("HTTP answer in time").unwrap();
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}


/// The lease the data-plane tests run with: short, so failovers happen within a test.
pub const TEST_LEASE_MS: &str = "3000";

/// A control plane with the tests' lease, `plan` applied.
pub async fn control_plane_with(env: &crate::TestEnv, plan: &Plan) -> ControlPlane {
    let cp = ControlPlane::start(env.config_with(&["--lease-ms", TEST_LEASE_MS])).await.expect("control plane starts");
    crate::apply(&mut cp.client().await, plan, false).await.expect("plan applied");
    cp
}

/// The /metrics text of the live worker named `name`.
pub async fn metrics_of(cp: &ControlPlane, name: &str) -> String {
    let ws = workers(cp).await;
    let w = ws.iter().find(|w| w.name == name && w.live).unwrap_or_else(|| panic!("no live worker {name}"));
    http_get(&w.http_address, "/metrics").await
}


/// A stream `name` of `fields` synced into table `name` (200 ms batches), with an ingest API and the dead letter
/// queue `<name>_dlq`.
pub fn synced_plan(name: &str, fields: Vec<Field>, partitions: u32) -> Plan {
    let dlq = format!("{name}_dlq");
    let mut s = stream(name, fields.clone(), partitions);
    s.destination = Some(rref(name));
    s.dead_letter_queue = Some(rref(&dlq));
    let mut t = table(name, fields);
    t.sync_max_delay_ms = Some(200);
    Plan {
        streams: vec![s],
        tables: vec![t],
        ingest_apis: vec![IngestApi { name: name.into(), destination: Some(rref(name)), ..Default::default() }],
        dead_letter_queues: vec![DeadLetterQueue { name: dlq, ..Default::default() }],
        ..Default::default()
    }
}

/// The HTTP address of the live worker `name`, once it registered.
pub async fn http_of(cp: &ControlPlane, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(w) = workers(cp).await.into_iter().find(|w| w.name == name && w.live) {
            return w.http_address;
        }
        assert!(Instant::now() < deadline, "worker {name} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An external topic `ext` of `partitions` partitions holding records 0..`records`, declared without `parallelism`
/// (its units exist because the broker says so), and a transform of it into `out`.
pub async fn external_topic_plan(env: &crate::TestEnv, partitions: i32, records: i64) -> Plan {
    let ext = env.topic("ext");
    env.create_topic(&ext, partitions).await;
    crate::records::produce(&crate::records::producer(), &ext, &crate::records::raws(0..records)).await;
    Plan {
        streams: vec![
            Stream { name: "ext".into(), fields: raw_fields(), life_cycle: LifeCycle::ExternallyManaged as i32, ..Default::default() },
            stream("out", raw_fields(), 1),
        ],
        transforms: vec![transform("ext_to_out", "ext", "out", "double_or_fail")],
        ..Default::default()
    }
}

/// Outputs made by the units of `held` at the epochs given there (their `millrace-origin` is `<unit>@<epoch>`,
/// then `;` and the output's position): what a worker that lost those units produced under them.
pub fn made_at(records: &[Read], held: &HashMap<String, u64>) -> usize {
    records
        .iter()
        .filter(|r| {
            let origin = r.headers.get("millrace-origin").and_then(|o| o.split(';').next()?.rsplit_once('@'));
            origin.is_some_and(|(u, e)| held.get(u).is_some_and(|old| e == old.to_string()))
        })
        .count()
}

/// Waits (within WAIT) until every unit of `held` is on worker `to` at a newer epoch.
pub async fn wait_until_moved(cp: &ControlPlane, held: &HashMap<String, u64>, to: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let on = units_of(&workers(cp).await, to);
        if held.iter().all(|(u, e)| on.get(u).is_some_and(|e2| e2 > e)) {
            return;
        }
        assert!(Instant::now() < deadline, "units did not move to {to}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

