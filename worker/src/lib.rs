//! The Millrace worker: takes assignments from the control plane, runs each assigned partition of a transform
//! or consumer through its sidecar, and serves /metrics.

pub mod assignments;
pub mod config;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod sidecar;
pub mod unit;

use anyhow::Context;
pub use config::Config;
use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use rdkafka::config::ClientConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = metrics::Metrics::new();
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", config.http_listen))?;
    let http_address = listener.local_addr()?.to_string();
    tokio::spawn(metrics::serve(listener, metrics.clone()));
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the Kafka producer")?;
    let ctx = Arc::new(unit::WorkerCtx {
        kafka_brokers: config.kafka_brokers.clone(),
        sidecars: sidecar::Sidecars::new(&config.sidecars, Config::ms(config.sidecar_timeout_ms))?,
        producer,
        metrics,
        batch_size: config.batch_size.max(1),
        batch_linger: Config::ms(config.batch_linger_ms),
        max_in_flight: config.max_in_flight.max(1),
    });
    let endpoint = tonic::transport::Endpoint::from_shared(config.control_plane.clone())
        .with_context(|| format!("--control-plane {:?} is not a URL", config.control_plane))?
        .connect_timeout(std::time::Duration::from_secs(2));
    let client = WorkerCoordinatorClient::new(endpoint.connect_lazy());
    tracing::info!(http = http_address, control_plane = config.control_plane, "worker starting");
    assignments::run(ctx, client, config.worker_name(), http_address, Config::ms(config.progress_interval_ms), shutdown).await;
    Ok(())
}
