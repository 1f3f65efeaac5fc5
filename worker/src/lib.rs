//! The Millrace worker: takes assignments from the control plane, runs each assigned partition of a transform
//! or consumer through its sidecar, and serves /metrics.

pub mod assignments;
pub mod clickhouse;
pub mod config;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod rows;
pub mod schema;
pub mod sidecar;
pub mod types;
pub mod unit;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;

use anyhow::Context;
pub use config::Config;
use millrace_proto::endpoints::Failover;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the worker until `shutdown` is cancelled and its units have finished, committed and been handed over.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = metrics::Metrics::new();
    // Bound by tokio (SO_REUSEADDR: a restarted worker gets its port back at once), then served on its own runtime.
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", config.http_listen))?;
    let http_address = listener.local_addr()?.to_string();
    anyhow::ensure!(
        config.batch_max_bytes < sidecar::MAX_MESSAGE,
        "--batch-max-bytes must stay below the gRPC message limit of {} bytes",
        sidecar::MAX_MESSAGE
    );
    // A request cut off by the listener's timeout after its records were handed over would be answered 408
    // although something was written: the timeout must outlast a whole ingest request.
    anyhow::ensure!(
        config.http_request_timeout_ms > config.http_body_timeout_ms + config.ingest_timeout_ms * 2 + 5_000,
        "--http-request-timeout-ms must exceed --http-body-timeout-ms plus twice --ingest-timeout-ms plus 5 s (the catalog lookup), so that no request is cut off after its records were written"
    );
    let max_in_flight_kib = (config.max_in_flight_bytes / 1024).clamp(1, u32::MAX as usize / 2) as u32;
    let mut config = config;
    // The ingest token's former variable still counts: an upgrade must not open an API that was closed.
    if config.tokens.ingest_token.is_none() {
        if let Some(key) = std::env::var("MILLRACE_INGEST_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
            tracing::warn!("MILLRACE_INGEST_API_KEY is now MILLRACE_INGEST_TOKEN: using it as the ingest token; rename it");
            config.tokens.ingest_token = Some(millrace_proto::auth::Secret::new(key.trim()));
        }
    }
    config.tokens.check_form().map_err(|e| anyhow::anyhow!(e))?;
    // Certificates are read now: a bad file stops the worker at start, naming it.
    let client_tls = config.client_tls.load()?;
    let server_tls = config.tls.rustls(vec![b"http/1.1".to_vec()])?;
    let ctx = Arc::new(unit::WorkerCtx {
        kafka_brokers: config.kafka_brokers.clone(),
        sidecars: sidecar::Sidecars::new(&config.sidecars, Config::ms(config.sidecar_timeout_ms), client_tls.clone(), config.tokens.sidecar_token.clone())?,
        clickhouse: clickhouse::ClickHouse::new(
            &config.clickhouse_url,
            &config.clickhouse_user,
            &config.clickhouse_password,
            Config::ms(config.clickhouse_timeout_ms),
        ),
        metrics,
        batch_size: config.batch_size.max(1),
        batch_max_bytes: config.batch_max_bytes.max(1),
        batch_linger: Config::ms(config.batch_linger_ms),
        max_in_flight: config.max_in_flight.max(1),
        in_flight_kib: Arc::new(tokio::sync::Semaphore::new(max_in_flight_kib as usize)),
        sync_in_flight_kib: Arc::new(tokio::sync::Semaphore::new(max_in_flight_kib as usize)),
        max_in_flight_kib,
        fetch_buffer_kb: config.fetch_buffer_kb,
        max_message_bytes: config.max_message_bytes,
        poison_tries: config.poison_tries,
        probations: Default::default(),
    });
    // Every address gets its own channel; calls go to the one that last answered and move on when it fails.
    // Keepalive pings notice a control plane host that vanished without closing its connections.
    let channel = Failover::new(&config.control_plane, &client_tls, |e| {
        e.http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(Duration::from_secs(10)))
    })
    // Every call the worker makes answers within a second or two (a stream: its opening), so one control plane
    // that accepts connections but does not answer costs a call this much, not the lease.
    .attempt_timeout(assignments::ATTEMPT_TIMEOUT)
    .token(config.tokens.worker_token.as_ref());
    let client = WorkerCoordinatorClient::new(channel.clone());
    let catalog = ingest::catalog::Catalog::new(ControlPlaneClient::new(channel), ctx.metrics.catalog_refreshes.clone());
    tokio::spawn(catalog.clone().follow(Config::ms(config.catalog_refresh_ms)));
    let ingest_settings = ingest::Settings {
        max_body_bytes: config.ingest_max_body_bytes,
        timeout: Config::ms(config.ingest_timeout_ms),
        max_message_bytes: config.max_message_bytes,
        linger_ms: config.ingest_linger_ms,
    };
    let ingest = ingest::Ingest::new(catalog, &config.kafka_brokers, ingest_settings, ctx.metrics.clone())?;
    let limits = metrics::HttpLimits {
        max_concurrency: config.http_max_concurrency,
        body_timeout: Config::ms(config.http_body_timeout_ms),
        request_timeout: Config::ms(config.http_request_timeout_ms),
    };
    // The ingest routes need the ingest token once it is set (a tower layer; /metrics and /healthz stay open).
    let routes = ingest.routes().route_layer(millrace_proto::auth::http_layer(config.tokens.clone(), &[millrace_proto::auth::Role::Ingest]));
    metrics::serve(listener.into_std()?, config.http_threads, ctx.metrics.clone(), routes, limits, server_tls).context("starting the HTTP listener")?;
    tracing::info!(http = http_address, tls = config.tls.enabled(), tokens = config.tokens.summary(), control_plane = %config.control_plane, "worker starting");
    let settings = assignments::Settings {
        name: config.worker_name(),
        http_address,
        progress_every: Config::ms(config.progress_interval_ms),
        shutdown_timeout: Config::ms(config.shutdown_timeout_ms),
        produce_timeout: Config::ms(config.produce_timeout_ms),
        producer_buffer_kb: config.producer_buffer_kb,
    };
    assignments::run(ctx, client, settings, shutdown).await
}
