//! Prometheus metrics of the worker, served as text on /metrics.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub records_filtered: IntCounterVec,
    pub records_failed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub batch_latency: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub commit_lag: IntGaugeVec,
    pub units: IntGaugeVec,
    pub unit_errors: IntGaugeVec,
    pub records_lost_to_retention: IntCounterVec,
    pub records_lost_to_recreation: IntCounterVec,
    pub source_recreated: IntCounterVec,
    pub replays_skipped: IntCounterVec,
    pub duplicates_dropped: IntCounterVec,
    pub unit_restarts: IntCounterVec,
    pub commits_refused: IntCounterVec,
    pub ingest_requests: IntCounterVec,
    pub ingest_records: IntCounterVec,
    pub ingest_latency: HistogramVec,
    pub catalog_refreshes: prometheus::IntCounter,
    pub table_rows_inserted: IntCounterVec,
    pub table_rows_dead_lettered: IntCounterVec,
    pub table_insert_retries: IntCounterVec,
    pub table_insert_latency: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let f = &["function"];
        let batch_latency = HistogramVec::new(
            HistogramOpts::new("millrace_batch_latency_seconds", "Time from sending a batch to a sidecar to its result")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            f,
        )
        .expect("valid metric");
        r.register(Box::new(batch_latency.clone())).expect("unique metric");
        let ingest_latency = HistogramVec::new(
            HistogramOpts::new("millrace_ingest_latency_seconds", "Time to answer an ingest request (records acknowledged by the broker)")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["api"],
        )
        .expect("valid metric");
        r.register(Box::new(ingest_latency.clone())).expect("unique metric");
        let table_insert_latency = HistogramVec::new(
            HistogramOpts::new("millrace_table_insert_latency_seconds", "Time ClickHouse took to confirm one insert of a table sync")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["table"],
        )
        .expect("valid metric");
        r.register(Box::new(table_insert_latency.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let consumer_lag = gauge(
            "millrace_consumer_lag",
            "Records between the next one to process and the high watermark of the last fetch response",
            &["function", "topic", "partition"],
        );
        let commit_lag = gauge(
            "millrace_commit_lag",
            "Records between the committed offset and the high watermark of the last fetch response",
            &["function", "topic", "partition"],
        );
        let units = gauge("millrace_units", "Units of work this worker runs", &["function"]);
        let unit_errors = gauge(
            "millrace_unit_errors",
            "Units that cannot run, by reason (missing_function, wrong_kind, sidecar_unreachable, no_dead_letter_topic)",
            &["function", "reason"],
        );
        Self {
            records_in: counter(&r, "millrace_records_in_total", "Records read from source partitions", f),
            records_out: counter(&r, "millrace_records_out_total", "Output records acknowledged by the broker", f),
            records_filtered: counter(&r, "millrace_records_filtered_total", "Input records with no output", f),
            records_failed: counter(&r, "millrace_records_failed_total", "Input records the function failed on", f),
            dead_letters: counter(&r, "millrace_dead_letters_total", "Dead letters acknowledged by the broker", f),
            replays_skipped: counter(&r, "millrace_replays_skipped_total", "Replayed dead letters skipped: replayed for another function of the stream", f),
            duplicates_dropped: counter(
                &r,
                "millrace_duplicates_dropped_total",
                "Records skipped as re-emits of records the unit had already read (by their provenance header)",
                f,
            ),
            unit_restarts: counter(&r, "millrace_unit_restarts_total", "Unit pipelines restarted after an error", f),
            commits_refused: counter(&r, "millrace_commits_refused_total", "Offset commits the control plane refused (fenced)", f),
            records_lost_to_retention: counter(
                &r,
                "millrace_records_lost_to_retention_total",
                "Records the broker deleted (retention) before the unit read them",
                f,
            ),
            records_lost_to_recreation: counter(
                &r,
                "millrace_records_lost_to_recreation_total",
                "Records of a source topic not yet read when it was deleted and created again outside Millrace (as far as its last high watermark tells)",
                f,
            ),
            source_recreated: counter(
                &r,
                "millrace_source_recreated_total",
                "Times a unit found its source topic deleted and created again (or truncated) outside Millrace, and read it from its beginning",
                f,
            ),
            ingest_requests: counter(&r, "millrace_ingest_requests_total", "Ingest requests answered, by API and HTTP status", &["api", "code"]),
            ingest_records: counter(
                &r,
                "millrace_ingest_records_total",
                "Ingested records: written (acknowledged by the broker) or invalid (refused)",
                &["api", "outcome"],
            ),
            ingest_latency,
            catalog_refreshes: {
                let c = prometheus::IntCounter::new("millrace_catalog_refreshes_total", "Reads of the ingest APIs from the control plane")
                    .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            table_rows_inserted: counter(&r, "millrace_table_rows_inserted_total", "Rows ClickHouse confirmed, by table", &["table"]),
            table_rows_dead_lettered: counter(
                &r,
                "millrace_table_rows_dead_lettered_total",
                "Records of a synced stream sent to the dead letter queue (ClickHouse refused them, or they do not fit the table)",
                &["table"],
            ),
            table_insert_retries: counter(&r, "millrace_table_insert_retries_total", "Inserts retried because ClickHouse did not take them", &["table"]),
            table_insert_latency,
            batch_latency,
            consumer_lag,
            commit_lag,
            units,
            unit_errors,
            registry: r,
        }
    }

    /// Forgets the per-partition gauges of a unit that stopped here, so a moved unit is not shown twice.
    pub fn forget_partition(&self, function: &str, topic: &str, partition: i32) {
        let p = partition.to_string();
        let _ = self.consumer_lag.remove_label_values(&[function, topic, &p]);
        let _ = self.commit_lag.remove_label_values(&[function, topic, &p]);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves /metrics and /healthz, beside `routes` (the ingest API), on a runtime of its own with `threads` threads
/// (one: a current-thread runtime), until the process ends. Apart from the units' runtime, a request's parsing, its
/// hand-over to the producer and its wake-up on acknowledgement stay on one core: on two cores that alone made ingest
/// 15-20% cheaper per record than sharing a work-stealing runtime (BENCHMARKS.md).
/// With `tls`, it serves HTTPS only (rustls).
pub fn serve(
    listener: std::net::TcpListener,
    threads: usize,
    metrics: Metrics,
    routes: axum::Router,
    limits: HttpLimits,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = routes
        .route("/metrics", get(move || {
            let m = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()) }
        }))
        .route("/healthz", get(|| async { "ok" }));
    let app = limits.apply(app);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder.enable_all().thread_name("millrace-http").build()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("millrace-http".into()).spawn(move || {
        let served = runtime.block_on(async move {
            match tls {
                None => axum::serve(tokio::net::TcpListener::from_std(listener)?, app).await,
                Some(config) => {
                    let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
                    axum_server::from_tcp_rustls(listener, config)?.serve(app.into_make_service()).await
                }
            }
        });
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP listener failed: the ingest API and /metrics are down");
        }
    })?;
    Ok(())
}

/// Bounds on the HTTP listener, so that slow or numerous clients cannot hold the worker's memory: requests past
/// `max_concurrency` are answered 503 at once (not queued), a body that does not arrive within `body_timeout` is
/// answered 408, and no request runs longer than `request_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_concurrency: usize,
    pub body_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

impl HttpLimits {
    fn apply(self, app: axum::Router) -> axum::Router {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        let max = self.max_concurrency.max(1);
        app.layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(move |_: tower::BoxError| async move {
                    let body = serde_json::json!({ "error": format!("the worker is serving its limit of {max} requests: retry shortly (or raise --http-max-concurrency)") });
                    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response()
                }))
            .load_shed()
            // Global: `Router::layer` wraps each route apart, and a per-route limit would multiply the bound.
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, self.request_timeout))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(self.body_timeout)),
        )
    }
}
