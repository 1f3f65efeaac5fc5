//! Harness for the integration tests: each test gets its own Postgres database, ClickHouse database and topic
//! namespace on the real local stack (`scripts/stack.sh start`), and runs the control plane in-process on a
//! free port, so tests run in parallel without seeing each other.

use millrace_control_plane::Config;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::*;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::util::Timeout;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Bound on every wait in the tests, so a hung dependency fails the test instead of stalling it.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn kafka_brokers() -> String {
    env_or("MILLRACE_KAFKA_BROKERS", "127.0.0.1:9092")
}

pub fn clickhouse_url() -> String {
    env_or("MILLRACE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
}

/// Postgres server URL without a database name.
pub fn postgres_server() -> String {
    env_or("MILLRACE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
}

/// A running in-process control plane.
pub struct ControlPlane {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), millrace_control_plane::error::Error>>,
}

impl ControlPlane {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_on(config, 0).await
    }

    /// Starts on a given port (0 = any), retrying while the port is still held by a stopped predecessor.
    pub async fn start_on(config: Config, port: u16) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => anyhow::bail!("cannot listen on port {port}: {e}"),
            }
        };
        let addr = format!("http://{}", listener.local_addr()?);
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(millrace_control_plane::serve(config, listener, async {
            let _ = rx.await;
        }));
        let cp = Self { addr, stop: Some(stop), task };
        // Ready when it answers health-free: a connect that succeeds and a status call.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if cp.task.is_finished() {
                let why = match cp.task.await? {
                    Ok(()) => "it stopped without an error".to_string(),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("the control plane exited at start: {why}");
            }
            if let Ok(mut c) = ControlPlaneClient::connect(cp.addr.clone()).await {
                if c.list_resources(ListResourcesRequest::default()).await.is_ok() {
                    return Ok(cp);
                }
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the control plane did not answer within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("addr has a port")
    }

    pub async fn client(&self) -> ControlPlaneClient<Channel> {
        ControlPlaneClient::connect(self.addr.clone()).await.expect("connect to the control plane")
    }

    /// Graceful stop; returns once the server is gone.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

/// One test's private slice of the stack.
pub struct TestEnv {
    pub id: String,
    pub database_url: String,
    pub clickhouse_database: String,
    pub topic_namespace: String,
    pub clickhouse: clickhouse::Client,
    admin: AdminClient<DefaultClientContext>,
}

impl TestEnv {
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let admin = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("kafka admin client");
        Self {
            database_url: format!("{}/millrace_t_{id}", postgres_server()),
            clickhouse_database: format!("t_{id}"),
            topic_namespace: format!("t{id}_"),
            clickhouse: clickhouse::Client::default().with_url(clickhouse_url()).with_validation(false),
            admin,
            id,
        }
    }

    /// The control plane configuration of this test (flags parsed the way the binary parses them).
    pub fn config(&self) -> Config {
        self.config_with(&[])
    }

    /// The same, with extra flags.
    pub fn config_with(&self, extra: &[&str]) -> Config {
        let base = [
            "millrace-control-plane",
            "--database-url",
            &self.database_url,
            "--kafka-brokers",
            &kafka_brokers(),
            "--clickhouse-url",
            &clickhouse_url(),
            "--clickhouse-database",
            &self.clickhouse_database,
            "--topic-namespace",
            &self.topic_namespace,
        ];
        <Config as clap::Parser>::parse_from(base.iter().chain(extra))
    }

    pub async fn start(&self) -> ControlPlane {
        ControlPlane::start(self.config()).await.expect("control plane starts")
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_namespace)
    }

    /// Partition count of a topic, None if the broker does not have it.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let md = self.admin.inner().fetch_metadata(None, Timeout::After(WAIT)).expect("broker metadata");
        md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len())
    }

    /// Every topic of this test's namespace.
    pub fn topics(&self) -> Vec<String> {
        let md = self.admin.inner().fetch_metadata(None, Timeout::After(WAIT)).expect("broker metadata");
        md.topics().iter().map(|t| t.name().to_string()).filter(|n| n.starts_with(&self.topic_namespace)).collect()
    }

    /// A topic config value as the broker describes it.
    pub async fn topic_config(&self, topic: &str, key: &str) -> Option<String> {
        let opts = AdminOptions::new().request_timeout(Some(Timeout::After(WAIT)));
        let res = self.admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts).await.expect("describe configs");
        res.into_iter().flatten().flat_map(|r| r.entries).find(|e| e.name == key).and_then(|e| e.value)
    }

    /// Columns (name, type) of a table in this test's ClickHouse database.
    pub async fn columns(&self, table: &str) -> Vec<(String, String)> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct C {
            name: String,
            r#type: String,
        }
        self.clickhouse
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&self.clickhouse_database)
            .bind(table)
            .fetch_all::<C>()
            .await
            .expect("system.columns")
            .into_iter()
            .map(|c| (c.name, c.r#type))
            .collect()
    }

    pub async fn sorting_key(&self, table: &str) -> String {
        self.clickhouse
            .query("SELECT sorting_key FROM system.tables WHERE database = ? AND name = ?")
            .bind(&self.clickhouse_database)
            .bind(table)
            .fetch_one::<String>()
            .await
            .expect("system.tables")
    }

    pub async fn tables(&self) -> Vec<String> {
        self.clickhouse
            .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
            .bind(&self.clickhouse_database)
            .fetch_all::<String>()
            .await
            .expect("system.tables")
    }

    /// Creates a topic behind Millrace's back (for externally managed resources).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let t = rdkafka::admin::NewTopic::new(topic, partitions, rdkafka::admin::TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(WAIT)));
        for r in self.admin.create_topics([&t], &opts).await.expect("create topic") {
            r.expect("topic created");
        }
        self.wait_for(|| self.partitions(topic) == Some(partitions as usize)).await;
    }

    /// Deletes a topic behind Millrace's back.
    pub async fn delete_topic(&self, topic: &str) {
        let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(WAIT)));
        for r in self.admin.delete_topics(&[topic], &opts).await.expect("delete topic") {
            r.expect("topic deleted");
        }
        self.wait_for(|| self.partitions(topic).is_none()).await;
    }

    /// Polls a condition until it holds, failing the test after WAIT.
    pub async fn wait_for(&self, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !ok() {
            assert!(tokio::time::Instant::now() < deadline, "condition not met within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops what the test created. Topics are left to the broker's namespace; the databases go.
    pub async fn cleanup(self) {
        let _ = self.clickhouse.query(&format!("DROP DATABASE IF EXISTS `{}`", self.clickhouse_database)).execute().await;
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server())).await {
            let sql = format!("DROP DATABASE IF EXISTS millrace_t_{} WITH (FORCE)", self.id);
            let _ = sqlx::Executor::execute(&mut c, sql.as_str()).await;
        }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

// ---- grpcurl ----------------------------------------------------------------------------------------------

pub fn grpcurl_bin() -> String {
    std::env::var("MILLRACE_GRPCURL").unwrap_or_else(|_| {
        let home = std::env::var("MILLRACE_HOME").unwrap_or_else(|_| format!("{}/.millrace", env_or("HOME", "/root")));
        format!("{home}/venv/bin/grpcurl")
    })
}

/// Runs `grpcurl -plaintext [-d DATA] ADDR ARGS...`; returns (success, stdout, stderr).
pub fn grpcurl(addr: &str, data: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(grpcurl_bin());
    cmd.args(["-plaintext", "-max-time", "30"]);
    if let Some(d) = data {
        cmd.args(["-d", d]);
    }
    cmd.arg(addr.trim_start_matches("http://")).args(args);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e} (run scripts/stack.sh start)", grpcurl_bin()));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

// ---- plan builders -----------------------------------------------------------------------------------------

pub fn scalar(s: ScalarType) -> FieldType {
    FieldType { kind: Some(Kind::Scalar(s as i32)) }
}

pub fn field(name: &str, s: ScalarType) -> Field {
    Field { name: name.into(), r#type: Some(scalar(s)), nullable: false, key: false, ..Default::default() }
}

pub fn key(name: &str, s: ScalarType) -> Field {
    Field { key: true, ..field(name, s) }
}

pub fn rref(name: &str) -> ResourceRef {
    ResourceRef { name: name.into(), version: String::new() }
}

/// The reference page's RawData: id (key), value.
pub fn raw_fields() -> Vec<Field> {
    vec![key("id", ScalarType::String), field("value", ScalarType::Int64)]
}

pub fn stream(name: &str, fields: Vec<Field>, parallelism: u32) -> Stream {
    Stream { name: name.into(), fields, parallelism: Some(parallelism), ..Default::default() }
}

pub fn table(name: &str, fields: Vec<Field>) -> Table {
    Table { name: name.into(), fields, ..Default::default() }
}

pub fn transform(name: &str, source: &str, destination: &str, function: &str) -> Transform {
    Transform {
        name: name.into(),
        source: Some(rref(source)),
        destination: Some(rref(destination)),
        function: Some(FunctionRef { name: function.into(), runtime: String::new() }),
        ..Default::default()
    }
}

pub async fn apply(c: &mut ControlPlaneClient<Channel>, plan: &Plan, dry_run: bool) -> Result<ApplyPlanResponse, tonic::Status> {
    c.apply_plan(ApplyPlanRequest { plan: Some(plan.clone()), dry_run, client: "tests".into() }).await.map(|r| r.into_inner())
}

/// (kind, name, action) of every change, for compact assertions.
pub fn actions(r: &ApplyPlanResponse) -> Vec<(ResourceKind, String, ChangeAction)> {
    r.changes
        .iter()
        .map(|c| (ResourceKind::try_from(c.kind).unwrap(), c.name.clone(), ChangeAction::try_from(c.action).unwrap()))
        .collect()
}

// ---- data plane ------------------------------------------------------------------------------------------

pub mod broker;
pub mod certs;
pub mod dataplane;
pub mod http;
pub mod proxy;
pub mod records;
pub mod replicas;
pub mod stall;
