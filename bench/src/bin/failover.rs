//! Time from stopping a worker to its partitions producing again elsewhere, during a flow of records, with nothing
//! lost: kill -9 (the units wait for the lease to run out) or SIGTERM (the worker drains, commits and hands over).
//! Two real worker processes, an in-process control plane and sidecar, on the broker given.
//!
//!   failover --brokers 127.0.0.1:9092 --records 200000 [--lease-ms 10000] [--signal kill|term]

use clap::Parser;
use millrace_tests::dataplane::*;
use millrace_tests::{apply, TestEnv};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value_t = 200_000)]
    records: i64,
    /// The control plane's lease (its default is 10 s).
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// How the worker is stopped: `kill` (SIGKILL) or `term` (SIGTERM, a clean shutdown).
    #[arg(long, default_value = "kill")]
    signal: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The harness reads the broker from the environment; set it before any thread starts.
    std::env::set_var("MILLRACE_KAFKA_BROKERS", &args.brokers);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let env = TestEnv::new();
    let lease = args.lease_ms.to_string();
    let cp = millrace_tests::ControlPlane::start(env.config_with(&["--lease-ms", &lease])).await?;
    apply(&mut cp.client().await, &single_plan(4, "double_or_fail"), false).await?;
    let sidecar = Sidecar::start().await;
    let Pair { a: mut wa, b: wb, moving: moved, .. } = Pair::start(&env, &cp, &sidecar.url(), 4).await;
    let b = wb.name.clone();

    // A paced flow (N records over about 20 s), so the kill lands while records are still coming.
    let n = args.records;
    let src = env.topic("src");
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let count = produced.clone();
    let chunk = (n / 80).max(1);
    let feeder = tokio::spawn(async move {
        let p = producer();
        for start in (0..n).step_by(chunk as usize) {
            let tick = tokio::time::sleep(Duration::from_millis(250));
            produce(&p, &src, &raws(start..(start + chunk).min(n))).await;
            count.store((start + chunk).min(n), std::sync::atomic::Ordering::SeqCst);
            tick.await;
        }
    });
    while produced.load(std::sync::atomic::Ordering::SeqCst) < n / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = env.topic("out");

    let offsets_at_kill: std::collections::HashMap<String, i64> =
        workers(&cp).await.iter().flat_map(|w| w.assignments.iter().map(|u| (u.unit_id.clone(), u.committed_offset))).collect();
    match args.signal.as_str() {
        "kill" => wa.signal(nix::sys::signal::Signal::SIGKILL),
        "term" => wa.signal(nix::sys::signal::Signal::SIGTERM),
        other => anyhow::bail!("--signal {other}: use kill or term"),
    }
    let killed = Instant::now();
    let resumed = loop {
        let ws = workers(&cp).await;
        let on_b = units_of(&ws, &b);
        let progressed = moved.iter().all(|(u, e)| {
            on_b.get(u).is_some_and(|e2| e2 > e)
                && ws.iter().flat_map(|w| &w.assignments).any(|x| &x.unit_id == u && x.committed_offset > offsets_at_kill[u])
        });
        if progressed {
            break killed.elapsed();
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(120), "the stopped worker's units never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = tokio::task::spawn_blocking(move || wa.child.wait()).await;
    feeder.await?;
    let got = tokio::task::spawn_blocking(move || read_until(&out, 4, Duration::from_secs(600), |r| distinct_ids(r).0.len() == n as usize)).await?;
    let (ids, dups) = distinct_ids(&got);
    println!(
        "RUNNER=failover-{} lease_ms={} resumed_after_s={:.2} records={} duplicates={dups} lost={} ok",
        args.signal,
        args.lease_ms,
        resumed.as_secs_f64(),
        ids.len(),
        n as usize - ids.len()
    );
    cp.stop().await;
    env.cleanup().await;
    Ok(())
}
