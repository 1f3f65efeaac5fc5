//! The reference page's transforms as a Rust sidecar, plus the benchmark's functions.
//!
//!   cargo run --release -p millrace-sdk --example reference -- --listen 127.0.0.1:50061

use chrono::{DateTime, Utc};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RawData {
    id: String,
    value: i64,
}

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct IntermediateData {
    id: String,
    transformedValue: i64,
    transformedAt: DateTime<Utc>,
}

#[derive(Serialize)]
#[allow(non_snake_case)]
struct FinalData {
    id: String,
    transformedValue: i64,
    anotherTransformedValue: i64,
    transformedAt: DateTime<Utc>,
}

/// The peer benchmark's record: `{"id": "<i>", "value": i}`.
#[derive(Deserialize)]
struct BenchIn {
    id: String,
    value: i64,
}

/// Its output, with the time formatted as `../shared/peer-bench`'s own Rust transform formats it (RFC 3339 with
/// microseconds), so that the comparison is of the pipelines, not of two ways to print a time.
#[derive(Serialize)]
#[allow(non_snake_case)]
struct BenchOut {
    id: String,
    transformedValue: i64,
    transformedAt: String,
}

#[derive(Parser)]
struct Args {
    #[arg(long, env = "MILLRACE_SIDECAR_LISTEN", default_value = "127.0.0.1:50061")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let args = Args::parse();
    millrace_sdk::Runtime::new("reference")
        // Step one of the chain: value x 2.
        .transform("double_value", |r: RawData| IntermediateData { id: r.id, transformedValue: r.value * 2, transformedAt: Utc::now() })
        // Step two: x 2 and x 3 of the intermediate value.
        .transform("triple_value", |r: IntermediateData| FinalData {
            id: r.id,
            transformedValue: r.transformedValue * 2,
            anotherTransformedValue: r.transformedValue * 3,
            transformedAt: Utc::now(),
        })
        // Records as they are, unparsed.
        .transform("identity", |v: Box<serde_json::value::RawValue>| v)
        .transform("bench_value_x2", |r: BenchIn| BenchOut {
            id: r.id,
            transformedValue: r.value * 2,
            transformedAt: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
        .serve(&args.listen)
        .await
}
