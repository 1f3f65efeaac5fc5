//! Commands that read topics: `peek`, and `dlq` (its `replay` is in `replay.rs`). Topic names come from the control plane (the
//! resource's physical name), so namespaces and versions are taken care of.

use crate::admin::Ctx;
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::StoredResource;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use serde_json::value::RawValue;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DlqArgs {
    /// `QUEUE` lists its dead letters; `replay QUEUE` sends the chosen ones' original records back to the function
    /// (or table sync) that failed them, and records the ingest API refused back through the ingest API.
    #[arg(num_args = 1..=2, value_names = ["replay", "QUEUE"], required = true)]
    words: Vec<String>,
    /// How many (the last ones) to list.
    #[arg(short = 'n', long, default_value_t = 10)]
    n: usize,
    /// Only dead letters whose field has this value, as FIELD=VALUE (dotted paths reach into the original record,
    /// e.g. originalRecord.id=42, or original_record.id=42); repeat to require several.
    #[arg(long)]
    filter: Vec<String>,
    #[command(flatten)]
    pub replay: crate::replay::ReplayArgs,
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

/// A record read, with its bytes as they are (numbers of any width stay exact).
pub struct Read {
    pub timestamp: i64,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Read {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Read {
            timestamp: m.timestamp().to_millis().unwrap_or(0),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
        }
    }
}

/// Records of `topic` from `back` before each partition's end (everything with `back` = None), read until each
/// partition's end (as the broker reports it: its high watermark from ListOffsets is not reliable on every broker);
/// an error when they are not all read within `limit`.
pub fn read(brokers: &str, topic: &str, back: Option<usize>, limit: Duration) -> anyhow::Result<(BaseConsumer, Vec<Read>)> {
    let c = consumer(brokers)?;
    let md = c.fetch_metadata(Some(topic), Timeout::After(WAIT)).map_err(|e| anyhow::anyhow!("the broker at {brokers} cannot be reached: {e}"))?;
    let partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic `{topic}` does not exist on the broker at {brokers}");
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let start = match back {
            Some(n) => {
                let (low, high) = c.fetch_watermarks(topic, p, Timeout::After(WAIT))?;
                Offset::Offset((high - n as i64).max(low))
            }
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, p, start)?;
    }
    c.assign(&tpl)?;
    let mut out = Vec::new();
    let mut unfinished: std::collections::HashSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + limit;
    while !unfinished.is_empty() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "reading `{topic}` did not reach its end within {}s ({} records read, {} partitions unfinished): nothing was done; \
                 try again (with a longer --timeout)",
                limit.as_secs(),
                out.len(),
                unfinished.len()
            );
        }
        match c.poll(Timeout::After(Duration::from_millis(500))) {
            Some(Ok(m)) => out.push(Read::of(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                unfinished.remove(&p);
            }
            Some(Err(e)) => anyhow::bail!("reading `{topic}`: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.timestamp, r.partition, r.offset));
    Ok((c, out))
}

/// A payload as JSON, its own text when it is JSON (exact), else a string.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum Shown<'a> {
    Json(&'a RawValue),
    Text(String),
}

pub fn shown(bytes: &[u8]) -> Shown<'_> {
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(raw) => Shown::Json(raw),
        Err(_) => Shown::Text(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn print_record(ctx: &Ctx, partition: i32, offset: i64, payload: &[u8]) {
    let v = shown(payload);
    if ctx.json {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            partition: i32,
            offset: i64,
            value: Shown<'a>,
        }
        println!("{}", serde_json::to_string(&Line { partition, offset, value: v }).expect("serialisable"));
    } else {
        let text = match v {
            Shown::Json(raw) => raw.get().to_string(),
            Shown::Text(t) => serde_json::to_string(&t).expect("serialisable"),
        };
        println!("{partition}/{offset}  {text}");
    }
}

pub async fn peek(ctx: &Ctx, name: &str, n: usize, follow: bool) -> anyhow::Result<()> {
    let (topic, _) = find(ctx, name).await?;
    let brokers = ctx.brokers.clone();
    let what = format!("reading {topic}");
    let (c, records) =
        crate::progress::quiet_step(&what, async move { tokio::task::spawn_blocking(move || read(&brokers, &topic, Some(n), WAIT * 3)).await? }).await?;
    for r in records.iter().skip(records.len().saturating_sub(n)) {
        print_record(ctx, r.partition, r.offset, &r.payload);
    }
    if follow {
        loop {
            match c.poll(Timeout::After(Duration::from_millis(200))) {
                Some(Ok(m)) => print_record(ctx, m.partition(), m.offset(), m.payload().unwrap_or_default()),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => anyhow::bail!("reading: {e}"),
            }
        }
    }
    Ok(())
}

/// A dotted path into JSON, as text (strings without quotes, the rest as written: numbers stay exact). Its first
/// part names a dead letter's field in either spelling (`error_type` or moose's `errorType`): letters written
/// before Millrace used moose's names have the other.
pub fn field(v: &RawValue, path: &str) -> Option<String> {
    let mut cur = v;
    for (i, part) in path.split('.').enumerate() {
        let map: std::collections::HashMap<String, &RawValue> = serde_json::from_str(cur.get()).ok()?;
        cur = match map.get(part) {
            Some(c) => c,
            None if i == 0 => map.get(&other_spelling(part))?,
            None => return None,
        };
    }
    Some(serde_json::from_str::<String>(cur.get()).unwrap_or_else(|_| cur.get().to_string()))
}

/// `error_type` <-> `errorType`.
fn other_spelling(name: &str) -> String {
    if name.contains('_') {
        let mut out = String::new();
        let mut upper = false;
        for c in name.chars() {
            match c {
                '_' => upper = true,
                c if upper => {
                    out.extend(c.to_uppercase());
                    upper = false;
                }
                c => out.push(c),
            }
        }
        out
    } else {
        name.chars().flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] }).collect()
    }
}

fn chosen(filters: &[(String, String)], letter: &RawValue) -> bool {
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
    let limit = if replay { args.replay.timeout() } else { WAIT * 3 };
    let what = format!("reading {topic}");
    let (_, records) =
        crate::progress::quiet_step(&what, async move { tokio::task::spawn_blocking(move || read(&brokers, &topic, back, limit)).await? }).await?;
    // Dead letters that are not JSON cannot be chosen by a field; replay reports them.
    let letters: Vec<&Read> = records
        .iter()
        .filter(|r| filters.is_empty() || serde_json::from_slice::<&RawValue>(&r.payload).is_ok_and(|l| chosen(&filters, l)))
        .collect();
    if replay {
        return crate::replay::replay(ctx, &queue, &letters, &args.replay).await;
    }
    let shown_letters: Vec<Shown> = letters[letters.len().saturating_sub(args.n)..].iter().map(|r| shown(&r.payload)).collect();
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&shown_letters)?);
        return Ok(());
    }
    if shown_letters.is_empty() {
        println!("no dead letters{}", if filters.is_empty() { "" } else { " match the filter" });
    }
    for l in &shown_letters {
        let Shown::Json(l) = l else {
            println!("(not a dead letter) {}", serde_json::to_string(l)?);
            continue;
        };
        let s = |k: &str| field(l, k).unwrap_or_default();
        println!("{} {} from {} ({}) at {}/{}@{}", s("failed_at"), s("source"), s("function"), s("error_type"), s("topic"), s("partition"), s("offset"));
        println!("    {}", s("error_message"));
        let original = serde_json::from_str::<std::collections::HashMap<String, &RawValue>>(l.get()).ok().and_then(|m| m.get("originalRecord").or_else(|| m.get("original_record")).map(|r| r.get().to_string()));
        println!("    {}", original.unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_fields_are_found_in_either_spelling() {
        let camel: Box<RawValue> = serde_json::from_str(r#"{"errorType":"E","originalRecord":{"user_id":7}}"#).unwrap();
        let snake: Box<RawValue> = serde_json::from_str(r#"{"error_type":"E","original_record":{"user_id":7}}"#).unwrap();
        for l in [&camel, &snake] {
            assert_eq!(field(l, "error_type").as_deref(), Some("E"));
            assert_eq!(field(l, "errorType").as_deref(), Some("E"));
            assert_eq!(field(l, "original_record.user_id").as_deref(), Some("7"));
            assert_eq!(field(l, "originalRecord.userId"), None, "the record's own fields are as written");
        }
    }
}
