//! Records for the data-plane tests: producing them (once, or as a steady load) and reading them back.

use crate::dataplane::Raw;
use crate::{kafka_brokers, WAIT};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn producer() -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("linger.ms", "5").create().expect("producer")
}

/// Produces records keyed by id and waits for every acknowledgement.
pub async fn produce(p: &FutureProducer, topic: &str, records: &[Raw]) {
    produce_keyed(p, topic, records.iter().map(|r| (r.id.clone(), serde_json::to_vec(r).unwrap())).collect()).await
}

/// Produces JSON values keyed by their `id`, waiting for every acknowledgement.
pub async fn produce_values(p: &FutureProducer, topic: &str, values: &[serde_json::Value]) {
    let payloads = values.iter().map(|v| (v["id"].as_str().unwrap_or_default().to_string(), serde_json::to_vec(v).unwrap())).collect();
    produce_keyed(p, topic, payloads).await
}

pub async fn produce_keyed(p: &FutureProducer, topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let futures: Vec<_> = payloads
        .iter()
        .map(|(k, v)| p.send_result(FutureRecord::to(topic).key(k).payload(v)).map_err(|(e, _)| e).expect("enqueue"))
        .collect();
    for f in futures {
        f.await.expect("delivery").expect("acknowledged");
    }
}

pub fn raws(range: std::ops::Range<i64>) -> Vec<Raw> {
    range.map(|i| Raw { id: format!("id-{i}"), value: i }).collect()
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub value: serde_json::Value,
    pub key: Option<String>,
    pub partition: i32,
    pub timestamp_ms: i64,
    pub headers: HashMap<String, String>,
}

/// Reads every partition of `topic` from the beginning until `done` holds for what was read, for at most
/// `limit`. Panics with a count when it does not.
pub fn read_until(topic: &str, partitions: i32, limit: Duration, done: impl Fn(&[Read]) -> bool) -> Vec<Read> {
    read_until_at(&kafka_brokers(), topic, partitions, limit, done)
}

/// `read_until` on another broker.
pub fn read_until_at(brokers: &str, topic: &str, partitions: i32, limit: Duration, done: impl Fn(&[Read]) -> bool) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "millrace-tests-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        if done(&out) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "reading {topic}: condition not met within {limit:?} ({} records read)", out.len());
        // Drain what is there (up to a chunk) before checking again: `done` may look at every record.
        let mut wait = Duration::from_millis(200);
        for _ in 0..10_000 {
            let Some(m) = c.poll(Timeout::After(wait)) else { break };
            wait = Duration::ZERO;
            let m = m.expect("consume");
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hd = h.get(i);
                    headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned());
                }
            }
            out.push(Read {
                value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                partition: m.partition(),
                timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                headers,
            });
        }
    }
}

/// Distinct ids among records, and how many records repeated one.
pub fn distinct_ids(records: &[Read]) -> (std::collections::HashSet<String>, usize) {
    let mut ids = std::collections::HashSet::new();
    let mut dups = 0;
    for r in records {
        if !ids.insert(r.value["id"].as_str().unwrap_or_default().to_string()) {
            dups += 1;
        }
    }
    (ids, dups)
}

/// A steady load of `raws` records on a topic, in chunks of `Load::CHUNK`, until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Ids below this were all acknowledged by the broker.
    pub acked: Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<i64>,
}

impl Load {
    pub const CHUNK: i64 = 100;

    pub fn start(topic: String) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let p = producer();
            let mut next = 0;
            while !s.load(Ordering::SeqCst) {
                produce(&p, &topic, &raws(next..next + Self::CHUNK)).await;
                next += Self::CHUNK;
                a.store(next, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            next
        });
        Self { stop, acked, task }
    }

    /// The first id of a chunk sent after this call: everything from it on was produced after now.
    pub fn next_fresh(&self) -> i64 {
        self.acked.load(Ordering::SeqCst) + Self::CHUNK
    }

    /// Waits until ids up to `id` are acknowledged.
    pub async fn wait_past(&self, id: i64) {
        let deadline = Instant::now() + WAIT;
        while self.acked.load(Ordering::SeqCst) <= id {
            assert!(Instant::now() < deadline, "the load never got past id {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops; returns how many records were produced (ids 0..n).
    pub async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

/// Reads a topic in a blocking task until `done`.
pub async fn read_topic(topic: String, partitions: i32, done: impl Fn(&[Read]) -> bool + Send + 'static) -> Vec<Read> {
    tokio::task::spawn_blocking(move || read_until(&topic, partitions, Duration::from_secs(60), done)).await.expect("reader")
}

/// Ids of records, as numbers (`id-<n>`).
pub fn numbers(records: &[Read]) -> std::collections::BTreeSet<i64> {
    records.iter().filter_map(|r| r.value["id"].as_str()?.strip_prefix("id-")?.parse().ok()).collect()
}

/// Reads a whole topic: everything until nothing new arrived for `quiet` (bounded by WAIT).
pub async fn read_quiet(topic: String, partitions: i32, quiet: Duration) -> Vec<Read> {
    let last = std::sync::Mutex::new((0usize, Instant::now()));
    read_topic(topic, partitions, move |r| {
        let mut l = last.lock().unwrap();
        if r.len() != l.0 {
            *l = (r.len(), Instant::now());
        }
        l.1.elapsed() >= quiet
    })
    .await
}
