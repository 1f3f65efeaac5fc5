//! Control planes as real processes (`millrace-control-plane`), several against one test's database, for the
//! failover tests: each on its own port, killed outright when a test says so, and when dropped.

use crate::{clickhouse_url, kafka_brokers, TestEnv, WAIT};
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::{GetStatusRequest, GetStatusResponse};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A control plane process, killed when dropped.
pub struct Replica {
    pub child: Child,
    /// host:port it listens on (and advertises).
    pub listen: String,
    pub log: PathBuf,
    /// How a test reaches it when it serves TLS and wants tokens.
    secure: Option<Secure>,
}

/// The TLS and admin token a test's calls use.
#[derive(Clone)]
pub struct Secure {
    pub tls: millrace_proto::tls::Client,
    pub admin_token: millrace_proto::auth::Secret,
    /// Replaces the test's database URL (one with a password, say).
    pub database_url: String,
}

/// The control plane binary beside the running test (target/<profile>/).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let bin = dir.join("millrace-control-plane");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Replica {
    /// Starts one on a free port, with `env`'s database, topics and tables and `extra` flags; returns once it
    /// answers.
    pub async fn start(env: &TestEnv, name: &str, extra: &[&str]) -> Self {
        Self::start_with_brokers(env, name, &kafka_brokers(), extra).await
    }

    /// The same, against the broker at `brokers` (a test's own).
    pub async fn start_with_brokers(env: &TestEnv, name: &str, brokers: &str, extra: &[&str]) -> Self {
        Self::start_full(env, name, brokers, extra, None).await
    }

    /// One serving TLS with tokens: `extra` holds its TLS and token flags, `secure` how the test calls it.
    pub async fn start_secure(env: &TestEnv, name: &str, extra: &[&str], secure: Secure) -> Self {
        Self::start_full(env, name, &kafka_brokers(), extra, Some(secure)).await
    }

    async fn start_full(env: &TestEnv, name: &str, brokers: &str, extra: &[&str], secure: Option<Secure>) -> Self {
        let database_url = secure.as_ref().map_or(env.database_url.clone(), |s| s.database_url.clone());
        let listen = format!("127.0.0.1:{}", free_port());
        let log_dir = std::env::temp_dir().join("millrace-test-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = log_dir.join(format!("{}-{name}.log", env.id));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary())
            .args(["--listen", &listen, "--database-url", &database_url, "--kafka-brokers", brokers])
            .args(["--clickhouse-url", &clickhouse_url(), "--clickhouse-database", &env.clickhouse_database])
            .args(["--topic-namespace", &env.topic_namespace])
            .args(extra)
            .env("RUST_LOG", std::env::var("MILLRACE_TEST_CONTROL_PLANE_LOG").unwrap_or_else(|_| "info".into()))
            // Only what the test passes: a token in the test's own environment would change what it checks.
            .env_remove("MILLRACE_ADMIN_TOKEN")
            .env_remove("MILLRACE_WORKER_TOKEN")
            .env_remove("MILLRACE_INGEST_TOKEN")
            .env_remove("MILLRACE_SIDECAR_TOKEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start the control plane");
        let mut r = Self { child, listen, log, secure };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = r.child.try_wait().expect("wait for the control plane") {
                panic!("the control plane exited at start ({status}): see {}", r.log.display());
            }
            if r.status().await.is_some() {
                return r;
            }
            assert!(Instant::now() < deadline, "the control plane did not answer within {WAIT:?}: see {}", r.log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.secure.is_some() { "https" } else { "http" }, self.listen)
    }

    pub async fn client(&self) -> ControlPlaneClient<Channel> {
        ControlPlaneClient::connect(self.url()).await.expect("connect to the control plane")
    }

    /// Its GetStatus answer, None while it does not answer.
    pub async fn status(&self) -> Option<GetStatusResponse> {
        let tls = self.secure.as_ref().map(|s| s.tls.clone()).unwrap_or_default();
        let channel = tls.endpoint(&self.url()).ok()?.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(5)).connect().await.ok()?;
        let mut req = tonic::Request::new(GetStatusRequest {});
        if let Some(s) = &self.secure {
            req.metadata_mut().insert("authorization", format!("Bearer {}", s.admin_token.expose()).parse().ok()?);
        }
        ControlPlaneClient::new(channel).get_status(req).await.ok().map(|r| r.into_inner())
    }

    /// True once it says it leads.
    pub async fn leads(&self) -> bool {
        self.status().await.is_some_and(|s| s.is_leader)
    }

    /// Waits until it leads; how long that took.
    pub async fn wait_to_lead(&self, within: Duration) -> Duration {
        let start = Instant::now();
        while !self.leads().await {
            assert!(start.elapsed() < within, "{} did not lead within {within:?}: see {}", self.listen, self.log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}
