//! Worker settings: every flag has an environment variable and a localhost default.

use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "millrace-worker", version, about = "The Millrace worker: runs transforms and consumers")]
pub struct Config {
    /// The control plane's gRPC address, or several separated by commas (`host:port` or `http://host:port`): the
    /// worker talks to the first that answers and moves to the next when it stops answering.
    #[arg(long, env = "MILLRACE_CONTROL_PLANE", default_value = "http://127.0.0.1:50051")]
    pub control_plane: millrace_proto::endpoints::Addresses,
    /// Kafka bootstrap servers.
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Sidecars hosting the functions, as NAME=URL; repeat or separate with commas. A transform's
    /// `function.runtime` picks one by name.
    #[arg(long = "sidecar", env = "MILLRACE_SIDECARS", value_delimiter = ',', default_value = "default=http://127.0.0.1:50061")]
    pub sidecars: Vec<String>,
    /// HTTP listener for the ingest API (POST /ingest/<name>), /metrics and /healthz.
    #[arg(long, env = "MILLRACE_HTTP_LISTEN", default_value = "127.0.0.1:4000")]
    pub http_listen: String,
    /// Threads serving the HTTP listener, apart from the units' threads. One keeps each ingest request on one core,
    /// which is cheapest on small machines; raise it when ingest needs more than a core.
    #[arg(long, env = "MILLRACE_HTTP_THREADS", default_value_t = 1)]
    pub http_threads: usize,
    /// Requests the HTTP listener serves at once; more are answered 503 with Retry-After at once, so that memory
    /// stays bounded (each ingest request holds its body, up to --ingest-max-body-bytes).
    #[arg(long, env = "MILLRACE_HTTP_MAX_CONCURRENCY", default_value_t = 64)]
    pub http_max_concurrency: usize,
    /// A request body that has not fully arrived within this long is answered 408.
    #[arg(long, env = "MILLRACE_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,
    /// No HTTP request runs longer than this (408).
    #[arg(long, env = "MILLRACE_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_request_timeout_ms: u64,
    /// ClickHouse's HTTP interface, for table syncs.
    #[arg(long, env = "MILLRACE_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    #[arg(long, env = "MILLRACE_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    #[arg(long, env = "MILLRACE_CLICKHOUSE_PASSWORD", default_value = "", hide_env_values = true)]
    pub clickhouse_password: String,
    /// An insert ClickHouse has not confirmed in this long is retried.
    #[arg(long, env = "MILLRACE_CLICKHOUSE_TIMEOUT_MS", default_value_t = 30_000)]
    pub clickhouse_timeout_ms: u64,
    /// Largest ingest request body, in bytes (413 above it).
    #[arg(long, env = "MILLRACE_INGEST_MAX_BODY_BYTES", default_value_t = 10 << 20)]
    pub ingest_max_body_bytes: usize,
    /// How long an ingest request waits for the broker to acknowledge its records before it is answered 503.
    #[arg(long, env = "MILLRACE_INGEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub ingest_timeout_ms: u64,
    /// How long the ingest producer waits to fill a batch to the broker (linger.ms). Every request waits for its
    /// acknowledgement, so this adds to each request's time.
    #[arg(long, env = "MILLRACE_INGEST_LINGER_MS", default_value_t = 1)]
    pub ingest_linger_ms: u64,
    /// How often the worker reads the declared ingest APIs from the control plane (and at once on an unknown one).
    #[arg(long, env = "MILLRACE_CATALOG_REFRESH_MS", default_value_t = 2_000)]
    pub catalog_refresh_ms: u64,
    /// The name this worker registers under; defaults to the host name and process id.
    #[arg(long, env = "MILLRACE_WORKER_NAME")]
    pub name: Option<String>,
    /// Most records in one batch sent to a sidecar.
    #[arg(long, env = "MILLRACE_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Most bytes of records in one batch (a single larger record goes alone). Keep it below the sidecars'
    /// gRPC message limit (64 MiB for the Rust and Python SDKs).
    #[arg(long, env = "MILLRACE_BATCH_MAX_BYTES", default_value_t = 4 << 20)]
    pub batch_max_bytes: usize,
    /// Longest wait to fill a batch once its first record is in.
    #[arg(long, env = "MILLRACE_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
    /// Batches of one unit between the source read and the broker's acknowledgement of their outputs.
    #[arg(long, env = "MILLRACE_MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,
    /// Bytes of input records in flight (at sidecars or awaiting acknowledgement) across all units of the worker.
    #[arg(long, env = "MILLRACE_MAX_IN_FLIGHT_BYTES", default_value_t = 64 << 20)]
    pub max_in_flight_bytes: usize,
    /// Records each unit's consumer may prefetch, in KiB (librdkafka's queued.max.messages.kbytes).
    #[arg(long, env = "MILLRACE_FETCH_BUFFER_KB", default_value_t = 1024)]
    pub fetch_buffer_kb: usize,
    /// Bytes the producer may queue before units wait, in KiB (queue.buffering.max.kbytes).
    #[arg(long, env = "MILLRACE_PRODUCER_BUFFER_KB", default_value_t = 64 << 10)]
    pub producer_buffer_kb: usize,
    /// Largest record the broker takes (message.max.bytes). A larger output sends its input to the dead letter
    /// queue; a larger dead letter is truncated.
    #[arg(long, env = "MILLRACE_MAX_MESSAGE_BYTES", default_value_t = 1_000_000)]
    pub max_message_bytes: usize,
    /// Tries of a batch that fails the same way before it is split to find the record that makes it fail.
    #[arg(long, env = "MILLRACE_POISON_TRIES", default_value_t = 3)]
    pub poison_tries: u32,
    /// On SIGTERM, how long units may take to finish their in-flight batches before they are abandoned.
    #[arg(long, env = "MILLRACE_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// A sidecar that takes longer for one batch is treated as down (the batch is retried).
    #[arg(long, env = "MILLRACE_SIDECAR_TIMEOUT_MS", default_value_t = 30_000)]
    pub sidecar_timeout_ms: u64,
    /// How often committed offsets are reported to the control plane.
    #[arg(long, env = "MILLRACE_PROGRESS_INTERVAL_MS", default_value_t = 200)]
    pub progress_interval_ms: u64,
    /// How long the producer retries one record before the unit rewinds and tries again. Capped at 30% of the
    /// lease, so that nothing a unit queued is delivered after its lease could have passed to another worker.
    #[arg(long, env = "MILLRACE_PRODUCE_TIMEOUT_MS", default_value_t = 30_000)]
    pub produce_timeout_ms: u64,
    /// Tokens: the ingest token is required of ingest requests once set; the worker token is sent to the control
    /// plane and the sidecar token to the sidecars. The others, when set here too, only tell a wrong role (403)
    /// from an unknown token (401).
    #[command(flatten)]
    pub tokens: millrace_proto::auth::Tokens,
    /// TLS of the HTTP listener (ingest API, /metrics).
    #[command(flatten)]
    pub tls: millrace_proto::tls::ServerTls,
    /// TLS of the calls to `https://` control planes and sidecars.
    #[command(flatten)]
    pub client_tls: millrace_proto::tls::ClientTls,
}

impl Config {
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
