//! Worker settings: every flag has an environment variable and a localhost default.

use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "millrace-worker", version, about = "The Millrace worker: runs transforms and consumers")]
pub struct Config {
    /// The control plane's gRPC endpoint.
    #[arg(long, env = "MILLRACE_CONTROL_PLANE", default_value = "http://127.0.0.1:50051")]
    pub control_plane: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Sidecars hosting the functions, as NAME=URL; repeat or separate with commas. A transform's
    /// `function.runtime` picks one by name.
    #[arg(long = "sidecar", env = "MILLRACE_SIDECARS", value_delimiter = ',', default_value = "default=http://127.0.0.1:50061")]
    pub sidecars: Vec<String>,
    /// HTTP listener for /metrics (and, later, ingest).
    #[arg(long, env = "MILLRACE_HTTP_LISTEN", default_value = "127.0.0.1:4000")]
    pub http_listen: String,
    /// The name this worker registers under; defaults to the host name and process id.
    #[arg(long, env = "MILLRACE_WORKER_NAME")]
    pub name: Option<String>,
    /// Most records in one batch sent to a sidecar.
    #[arg(long, env = "MILLRACE_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first record is in.
    #[arg(long, env = "MILLRACE_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
    /// Batches of one unit between the source read and the broker's acknowledgement of their outputs.
    #[arg(long, env = "MILLRACE_MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,
    /// A sidecar that takes longer for one batch is treated as down (the batch is retried).
    #[arg(long, env = "MILLRACE_SIDECAR_TIMEOUT_MS", default_value_t = 30_000)]
    pub sidecar_timeout_ms: u64,
    /// How often committed offsets are reported to the control plane.
    #[arg(long, env = "MILLRACE_PROGRESS_INTERVAL_MS", default_value_t = 200)]
    pub progress_interval_ms: u64,
    /// How long the producer retries one record before the unit rewinds and tries again.
    #[arg(long, env = "MILLRACE_PRODUCE_TIMEOUT_MS", default_value_t = 30_000)]
    pub produce_timeout_ms: u64,
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
