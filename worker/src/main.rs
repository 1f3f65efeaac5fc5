use clap::Parser;
use millrace_worker::{run, Config};
use tokio_util::sync::CancellationToken;

// Every record is allocated on one thread and freed on another (librdkafka's delivery thread): mimalloc, which also
// replaces librdkafka's malloc (the `override` feature), handles that pattern at a fraction of glibc's cost.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = Config::parse();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        tracing::info!("shutting down: stopping units and committing what is done");
        stop.cancel();
    });
    run(config, shutdown).await
}
