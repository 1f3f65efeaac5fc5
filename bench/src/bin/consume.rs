//! The raw consume bound for table sync: one rdkafka consumer per partition (a thread each) reading a topic from
//! its beginning until N records are read, doing nothing with them. Prints `records= seconds= rate=`.
//!
//!   consume --brokers 127.0.0.1:9092 --topic T --partitions 4 --records 1000000

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long)]
    records: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    limit_s: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.limit_s);
    let threads: Vec<_> = (0..a.partitions)
        .map(|p| {
            let (read, brokers, topic, want) = (read.clone(), a.brokers.clone(), a.topic.clone(), a.records);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", "millrace-bench-consume")
                    .set("enable.auto.commit", "false")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
                c.assign(&tpl)?;
                while read.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                    if let Some(m) = c.poll(Timeout::After(Duration::from_millis(100))) {
                        m?;
                        read.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("consumer thread")?;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = read.load(Ordering::Relaxed);
    println!("records={n} seconds={secs:.3} rate={:.0}", n as f64 / secs);
    anyhow::ensure!(n >= a.records, "read {n} of {} records", a.records);
    Ok(())
}
