//! Commands that read topics: `peek`, `dlq` and `dlq replay`. Topic names come from the control plane (the
//! resource's physical name), so namespaces and versions are taken care of.

use crate::admin::Ctx;
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::StoredResource;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DlqArgs {
    /// `QUEUE` lists its dead letters; `replay QUEUE` sends the chosen ones' original records back into the streams
    /// they came from.
    #[arg(num_args = 1..=2, value_names = ["replay", "QUEUE"], required = true)]
    words: Vec<String>,
    /// How many (the last ones) to list.
    #[arg(short = 'n', long, default_value_t = 10)]
    n: usize,
    /// Only dead letters whose field has this value, as FIELD=VALUE (dotted paths reach into the original record,
    /// e.g. original_record.id=42); repeat to require several.
    #[arg(long)]
    filter: Vec<String>,
}

const WAIT: Duration = Duration::from_secs(10);

/// The topic behind a stream or dead letter queue, and the key fields of the stream.
async fn find(ctx: &Ctx, name: &str) -> anyhow::Result<(String, Vec<String>)> {
    let resources = ctx.resources().await?;
    let hit = |r: &&StoredResource| match r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
        Some(Spec::Stream(s)) => s.name == name,
        Some(Spec::DeadLetterQueue(d)) => d.name == name,
        _ => false,
    };
    // The newest version of the name, if it has several.
    match resources.iter().rfind(hit) {
        Some(r) => {
            let keys = match r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
                Some(Spec::Stream(s)) => s.fields.iter().filter(|f| f.key).map(|f| f.name.clone()).collect(),
                _ => Vec::new(),
            };
            Ok((r.physical_name.clone(), keys))
        }
        None => {
            let known: Vec<&str> = resources
                .iter()
                .filter(|r| matches!(r.resource.as_ref().and_then(|r| r.spec.as_ref()), Some(Spec::Stream(_) | Spec::DeadLetterQueue(_))))
                .map(|r| r.physical_name.as_str())
                .collect();
            anyhow::bail!("no stream or dead letter queue named `{name}` (declared: {}): see `millrace ls`", known.join(", "))
        }
    }
}

fn consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "millrace-cli")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?)
}

/// A record read: timestamp, partition, offset, value.
type Read = (i64, i32, i64, serde_json::Value);

/// Records of `topic` from `back` before each partition's end (everything with `back` = None), read to the end.
fn read(brokers: &str, topic: &str, back: Option<usize>) -> anyhow::Result<(BaseConsumer, Vec<Read>)> {
    let c = consumer(brokers)?;
    let md = c.fetch_metadata(Some(topic), Timeout::After(WAIT)).map_err(|e| anyhow::anyhow!("the broker at {brokers} cannot be reached: {e}"))?;
    let partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic `{topic}` does not exist on the broker at {brokers}");
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = c.fetch_watermarks(topic, p, Timeout::After(WAIT))?;
        let start = match back {
            Some(n) => (high - n as i64).max(low),
            None => low,
        };
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
    }
    c.assign(&tpl)?;
    let mut out = Vec::new();
    let mut ended = 0;
    let deadline = Instant::now() + WAIT * 3;
    while ended < partitions.len() && Instant::now() < deadline {
        match c.poll(Timeout::After(Duration::from_millis(500))) {
            Some(Ok(m)) => out.push((m.timestamp().to_millis().unwrap_or(0), m.partition(), m.offset(), value(m.payload()))),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => anyhow::bail!("reading `{topic}`: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|(ts, p, o, _)| (*ts, *p, *o));
    Ok((c, out))
}

fn value(payload: Option<&[u8]>) -> serde_json::Value {
    let bytes = payload.unwrap_or_default();
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn print_record(ctx: &Ctx, partition: i32, offset: i64, v: &serde_json::Value) {
    if ctx.json {
        println!("{}", serde_json::json!({"partition": partition, "offset": offset, "value": v}));
    } else {
        println!("{partition}/{offset}  {v}");
    }
}

pub async fn peek(ctx: &Ctx, name: &str, n: usize, follow: bool) -> anyhow::Result<()> {
    let (topic, _) = find(ctx, name).await?;
    let brokers = ctx.brokers.clone();
    let what = format!("reading {topic}");
    let (c, records) = crate::progress::quiet_step(&what, async move { tokio::task::spawn_blocking(move || read(&brokers, &topic, Some(n))).await? }).await?;
    for (_, p, o, v) in records.iter().skip(records.len().saturating_sub(n)) {
        print_record(ctx, *p, *o, v);
    }
    if follow {
        loop {
            match c.poll(Timeout::After(Duration::from_millis(200))) {
                Some(Ok(m)) => print_record(ctx, m.partition(), m.offset(), &value(m.payload())),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => anyhow::bail!("reading: {e}"),
            }
        }
    }
    Ok(())
}

/// A dotted path into a dead letter, as text (strings without quotes).
fn field(v: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur.as_str().map(str::to_string).unwrap_or_else(|| cur.to_string()))
}

fn chosen(filters: &[(String, String)], letter: &serde_json::Value) -> bool {
    filters.iter().all(|(k, v)| field(letter, k).as_deref() == Some(v.as_str()))
}

pub async fn dlq(ctx: &Ctx, args: DlqArgs) -> anyhow::Result<()> {
    let filters: Vec<(String, String)> = args
        .filter
        .iter()
        .map(|f| f.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| anyhow::anyhow!("--filter {f:?} is not FIELD=VALUE")))
        .collect::<anyhow::Result<_>>()?;
    let (replay, queue) = match args.words.as_slice() {
        [q] => (false, q.clone()),
        [r, q] if r == "replay" => (true, q.clone()),
        _ => anyhow::bail!("usage: millrace dlq QUEUE, or millrace dlq replay QUEUE"),
    };
    let (topic, _) = find(ctx, &queue).await?;
    let brokers = ctx.brokers.clone();
    let back = if replay || !filters.is_empty() { None } else { Some(args.n) };
    let what = format!("reading {topic}");
    let (_, records) = crate::progress::quiet_step(&what, async move { tokio::task::spawn_blocking(move || read(&brokers, &topic, back)).await? }).await?;
    let letters: Vec<&serde_json::Value> = records.iter().map(|(.., v)| v).filter(|v| chosen(&filters, v)).collect();
    if replay {
        return replay_letters(ctx, &letters).await;
    }
    let shown = &letters[letters.len().saturating_sub(args.n)..];
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    if shown.is_empty() {
        println!("no dead letters{}", if filters.is_empty() { "" } else { " match the filter" });
    }
    for l in shown {
        let s = |k: &str| field(l, k).unwrap_or_default();
        println!("{} {} from {} ({}) at {}/{}@{}", s("failed_at"), s("source"), s("function"), s("error_type"), s("topic"), s("partition"), s("offset"));
        println!("    {}", s("error_message"));
        println!("    {}", l.get("original_record").map(|v| v.to_string()).unwrap_or_default());
    }
    Ok(())
}

/// Sends each letter's original record back to the topic it was read from, keyed as the stream keys it.
async fn replay_letters(ctx: &Ctx, letters: &[&serde_json::Value]) -> anyhow::Result<()> {
    let resources = ctx.resources().await?;
    let keys_of = |topic: &str| -> Option<Vec<String>> {
        resources.iter().find(|r| r.physical_name == topic).and_then(|r| match r.resource.as_ref()?.spec.as_ref()? {
            Spec::Stream(s) => Some(s.fields.iter().filter(|f| f.key).map(|f| f.name.clone()).collect()),
            _ => None,
        })
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &ctx.brokers)
        .set("enable.idempotence", "true")
        .set("allow.auto.create.topics", "false")
        .create()?;
    let (mut sent, mut skipped) = (0usize, Vec::new());
    let mut pending = Vec::new();
    for l in letters {
        let topic = field(l, "topic").unwrap_or_default();
        let Some(keys) = keys_of(&topic) else {
            skipped.push(format!("its stream `{topic}` is no longer declared"));
            continue;
        };
        if l.get("original_record_truncated").and_then(|v| v.as_bool()) == Some(true) {
            skipped.push("its original record was truncated".into());
            continue;
        }
        let Some(original) = l.get("original_record") else {
            skipped.push("it has no original record".into());
            continue;
        };
        // A record that was not JSON is kept as a string: send its text.
        let payload = match original {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            v => serde_json::to_vec(v)?,
        };
        let key: Vec<String> = keys.iter().map(|k| field(original, k).unwrap_or_default()).collect();
        let key = key.join("|");
        let record = FutureRecord::to(&topic).payload(&payload).key(&key);
        pending.push(producer.send_result(record).map_err(|(e, _)| anyhow::anyhow!("the producer refused a record: {e}"))?);
        sent += 1;
    }
    let mut failed = 0;
    for p in pending {
        if !matches!(p.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let acked = sent - failed;
    if ctx.json {
        println!("{}", serde_json::json!({"replayed": acked, "chosen": letters.len(), "failed": failed, "skipped": skipped}));
    } else {
        println!("replayed {acked} of {} dead letters into their streams (at-least-once: they stay in the queue)", letters.len());
        for s in &skipped {
            println!("  skipped one: {s}");
        }
    }
    anyhow::ensure!(failed == 0, "{failed} records were not acknowledged by the broker: replay again (duplicates are possible)");
    Ok(())
}
