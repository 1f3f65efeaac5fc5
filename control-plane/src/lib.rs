//! The Millrace control plane: stores declared plans in Postgres, provisions Kafka topics and ClickHouse
//! tables, and hands workers their assignments.

pub mod api;
pub mod applying;
pub mod coordinator;
pub mod diff;
pub mod error;
pub mod forward;
pub mod ingest_paths;
pub mod intent;
pub mod leadership;
pub mod names;
pub mod plan;
pub mod provision;
pub mod resource;
pub mod scheduler;
pub mod store;
pub mod table;
pub mod types;

use crate::error::Error;
use millrace_proto::v1::control_plane_server::ControlPlaneServer;
use millrace_proto::v1::worker_coordinator_server::WorkerCoordinatorServer;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Control plane settings. Every flag has an environment variable and a localhost default.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "millrace-control-plane", version, about = "The Millrace control plane (gRPC)")]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "MILLRACE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Postgres connection string; the database is created if missing.
    #[arg(long, env = "MILLRACE_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/millrace")]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Replication factor of the topics it creates.
    #[arg(long, env = "MILLRACE_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// Prefix of every topic name, to keep several deployments apart on one broker.
    #[arg(long, env = "MILLRACE_TOPIC_NAMESPACE", default_value = "")]
    pub topic_namespace: String,
    /// ClickHouse HTTP endpoint.
    #[arg(long, env = "MILLRACE_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    #[arg(long, env = "MILLRACE_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    #[arg(long, env = "MILLRACE_CLICKHOUSE_PASSWORD", default_value = "", hide_env_values = true)]
    pub clickhouse_password: String,
    /// ClickHouse database that holds the tables (created if missing).
    #[arg(long, env = "MILLRACE_CLICKHOUSE_DATABASE", default_value = "millrace")]
    pub clickhouse_database: String,
    /// How long to wait for Postgres, the broker or ClickHouse before answering UNAVAILABLE.
    #[arg(long, env = "MILLRACE_DEPENDENCY_TIMEOUT_MS", default_value_t = 10_000)]
    pub dependency_timeout_ms: u64,
    /// How long a worker's lease lasts without a heartbeat.
    #[arg(long, env = "MILLRACE_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// After a worker joins, how long the next round waits for others to join too, so that they are placed
    /// together (bounded by a quarter lease and 2 s, unless this is longer).
    #[arg(long, env = "MILLRACE_JOIN_QUIET_MS", default_value_t = 500)]
    pub join_quiet_ms: u64,
    /// How long an apply (or delete) waits for one in progress before it answers ABORTED, "try again".
    #[arg(long, env = "MILLRACE_APPLY_WAIT_MS", default_value_t = 60_000)]
    pub apply_wait_ms: u64,
    /// host:port where the other control planes reach this one (they forward applies and deletes to the leader):
    /// set it when listening on 0.0.0.0 or behind NAT. Default: the address listened on.
    #[arg(long, env = "MILLRACE_ADVERTISE")]
    pub advertise: Option<String>,
    /// How long the leader's lease lasts without renewal (renewed every third of it; followers try every sixth):
    /// about the time from the leader's death to another control plane leading.
    #[arg(long, env = "MILLRACE_LEADER_LEASE_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub leader_lease_ms: u64,
    /// Tokens per role: applies and deletes need the admin token, workers the worker token, once set.
    #[command(flatten)]
    pub tokens: millrace_proto::auth::Tokens,
    /// TLS of the gRPC listener.
    #[command(flatten)]
    pub tls: millrace_proto::tls::ServerTls,
    /// TLS of the calls to the leader (forwarded writes), when it serves TLS.
    #[command(flatten)]
    pub client_tls: millrace_proto::tls::ClientTls,
}

/// Aborts its task when dropped, so the tasks `serve` (or a loop) starts end with it, even when it is aborted.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Config {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.dependency_timeout_ms)
    }
}

/// Connects to Postgres (migrating it) and serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    if !config.topic_namespace.is_empty() && !names::is_valid_name(&config.topic_namespace) {
        return Err(Error::InvalidArgument(format!(
            "--topic-namespace {:?} must match [A-Za-z_][A-Za-z0-9_]{{0,127}}",
            config.topic_namespace
        )));
    }
    let store = store::Store::connect(&config.database_url, config.timeout(), Duration::from_millis(config.apply_wait_ms)).await?;
    let kafka = provision::kafka::Kafka::new(&config.kafka_brokers, config.timeout(), config.replication_factor)?;
    let clickhouse = provision::clickhouse::ClickHouse::new(
        &config.clickhouse_url,
        &config.clickhouse_user,
        &config.clickhouse_password,
        &config.clickhouse_database,
        config.timeout(),
    );
    let provisioner = provision::Provisioner { kafka, clickhouse, topic_namespace: config.topic_namespace.clone() };
    let coordinator_store = store::Store::connect_coordinator(&config.database_url, config.timeout()).await?;
    config.tokens.check_form().map_err(Error::InvalidArgument)?;
    // Checked before anything starts: a bad certificate or key stops the process with its name.
    let server_tls = config.tls.tonic().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let client_tls = config.client_tls.load().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let listening = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| config.listen.clone());
    let advertise = config.advertise.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| listening.clone());
    // Followers reach the leader at its advertised address, over TLS when it serves TLS.
    let advertise = if config.tls.enabled() && !advertise.contains("://") { format!("https://{advertise}") } else { advertise };
    let host = advertise.split_once("://").map_or(advertise.as_str(), |(_, h)| h);
    if host.starts_with("0.0.0.0") || host.starts_with("[::]") {
        tracing::warn!(advertise, "advertising an unspecified address: other hosts' control planes cannot forward writes here; set --advertise");
    }
    let leadership = leadership::Leadership::new(
        store::Store::connect_leadership(&config.database_url, config.timeout()).await?,
        advertise,
        Duration::from_millis(config.leader_lease_ms),
        Duration::from_millis(config.lease_ms),
    );
    // Ends with this function, even when it is dropped (an in-process control plane stopped by a test).
    let leading = AbortOnDrop(tokio::spawn(leadership.clone().run()));
    let coordinator = coordinator::Coordinator::new(
        coordinator_store,
        provisioner.kafka.clone(),
        Duration::from_millis(config.lease_ms),
        Duration::from_millis(config.join_quiet_ms),
        scheduler::Names { topic_namespace: config.topic_namespace.clone(), clickhouse_database: config.clickhouse_database.clone() },
        leadership.clone(),
    );
    let scheduler = AbortOnDrop(tokio::spawn(coordinator.clone().run(std::future::pending::<()>())));
    let api = api::Api {
        store,
        provisioner,
        coordinator: coordinator.clone(),
        started: Instant::now(),
        // An apply forwarded to the leader may wait for another apply, then provision.
        forward_timeout: Duration::from_millis(config.apply_wait_ms) + config.timeout() * 4,
        // A write arriving while no control plane leads (at start, during a failover) waits this long for one.
        leader_wait: Duration::from_millis(config.leader_lease_ms) * 3 / 2,
        via: forward::Via { tls: client_tls, authorization: None, serving_tls: config.tls.enabled() },
    };
    let _finishing = AbortOnDrop(tokio::spawn(api.clone().finish_on_taking_office()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ControlPlaneServer<api::Api>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(millrace_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // grpcurl 1.8 asks the v1alpha service.
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = config.tls.enabled(),
        mutual_tls = config.tls.tls_client_ca.is_some(),
        tokens = config.tokens.summary(),
        "control plane serving"
    );
    let closing = coordinator.clone();
    let resigning = leadership.clone();
    let applying = api.store.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close_streams();
        // An apply in progress ends first (bounded by --apply-wait-ms): a leader that resigned mid-provisioning
        // would provision beside the next one.
        let held = applying.apply_gate().await;
        // Another control plane takes office at once rather than after the lease.
        leading.0.abort();
        resigning.resign().await;
        drop(held);
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = server_tls {
        builder = builder.tls_config(tls).map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?;
    }
    let server = builder
        // Health and reflection stay open; every Millrace call needs its role's token once that is set.
        .layer(millrace_proto::auth::grpc_layer(config.tokens.clone(), millrace_proto::auth::control_plane_rules))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ControlPlaneServer::new(api))
        .add_service(WorkerCoordinatorServer::new(coordinator))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown);
    let mut scheduler = scheduler;
    // A control plane whose scheduling loop died would answer calls and place nothing: it stops instead, so that
    // whatever supervises it (millrace dev, systemd, Kubernetes) starts a whole one again.
    tokio::select! {
        // The scheduling loop ends with `scheduler`, dropped on return.
        served = server => served.map_err(|e| Error::Internal(format!("gRPC server: {e}"))),
        ended = &mut scheduler.0 => Err(Error::Internal(format!(
            "the scheduling loop stopped ({}): the control plane exits; start it again",
            match ended { Err(e) if e.is_panic() => "it panicked", _ => "it returned" }
        ))),
    }
}
