//! A worker's memory with many units on a backlog: each unit has its own consumer, so what bounds the worker is
//! each consumer's prefetch, the shared in-flight byte budget and the producer's queue, not the backlog. Seeds
//! `--backlog-mb` per partition of 1 KB records into a `--units`-partition topic, starts one worker (with any extra
//! worker flags after `--`) on a sidecar that takes a millisecond per record, and samples the worker's resident
//! memory while every unit works through its backlog.
//!
//!   memory --brokers 127.0.0.1:9092 [--units 64] [--backlog-mb 4] [--seconds 20] [-- --fetch-buffer-kb 65536 ...]

use clap::Parser;
use millrace_tests::dataplane::*;
use millrace_tests::{apply, TestEnv};
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value_t = 64)]
    units: u32,
    #[arg(long, default_value_t = 4)]
    backlog_mb: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// A label for the output line.
    #[arg(long, default_value = "defaults")]
    label: String,
    /// Extra worker flags.
    #[arg(last = true)]
    worker_flags: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::set_var("MILLRACE_KAFKA_BROKERS", &args.brokers);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let env = TestEnv::new();
    let cp = millrace_tests::ControlPlane::start(env.config()).await?;
    apply(&mut cp.client().await, &single_plan(args.units, "pause_1ms"), false).await?;
    // The backlog first, so every unit starts with more than any prefetch holds.
    let src = env.topic("src");
    let per_partition = args.backlog_mb * 1024;
    let pad = "x".repeat(950);
    let p = producer();
    for part in 0..args.units as i32 {
        let mut futures = Vec::with_capacity(per_partition);
        for i in 0..per_partition {
            let id = format!("id-{part}-{i}");
            let value = format!(r#"{{"id":"{id}","value":{i},"pad":"{pad}"}}"#);
            let rec = FutureRecord::to(&src).partition(part).key(&id).payload(&value);
            futures.push(p.send_result(rec).map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?);
        }
        for f in futures {
            f.await?.map_err(|(e, _)| anyhow::anyhow!("seeding: {e}"))?;
        }
    }
    let sidecar = Sidecar::start().await;
    let flags: Vec<&str> = args.worker_flags.iter().map(String::as_str).collect();
    let w = Worker::start_with(&format!("{}-mem", env.id), &cp.addr, &sidecar.url(), &flags);
    wait_for_placement(&cp, 1, args.units as usize).await;
    let pid = w.child.id();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        peak = peak.max(rss_kb(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm = rss_kb(pid, "VmHWM:");
    let done: i64 = workers(&cp).await.iter().flat_map(|w| &w.assignments).map(|a| a.committed_offset.max(0)).sum();
    println!(
        "RUNNER=memory-{} units={} backlog_mb_per_unit={} rss_peak_mb={:.0} rss_hwm_mb={:.0} records_done={done} flags={:?}",
        args.label,
        args.units,
        args.backlog_mb,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0,
        args.worker_flags
    );
    drop(w);
    cp.stop().await;
    env.cleanup().await;
    Ok(())
}
