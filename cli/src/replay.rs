//! `millrace dlq replay QUEUE`: each chosen dead letter's original record goes back to the one function (or table
//! sync) that failed it: to its source stream with a `millrace-replay-for: <function>` header, which every other
//! unit reading the stream skips. Records the ingest API refused never reached the stream: they go through the
//! ingest API again, so the stream's schema checks them, and those still invalid are reported as skipped. Records
//! keep their bytes (numbers of any width stay exact). The report says what was replayed, skipped and failed, and
//! why.

use crate::admin::Ctx;
use crate::topics::{field, Read};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::{ResourceRef, StoredResource};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The header naming the function a replayed record is for (the worker's `unit::source::REPLAY_HEADER`).
const REPLAY_HEADER: &str = "millrace-replay-for";
/// Records per request to the ingest API, and bytes (its limit is 10 MiB by default).
const CHUNK_RECORDS: usize = 1000;
const CHUNK_BYTES: usize = 4 << 20;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// replay: the worker HTTP address whose ingest API checks again the records it refused.
    #[arg(long, env = "MILLRACE_INGEST_URL", default_value = "http://127.0.0.1:4000")]
    ingest_url: String,
    /// replay: the ingest token, if the worker wants one (`--ingest-api-key` is its former name).
    #[arg(long, alias = "ingest-api-key", env = "MILLRACE_INGEST_TOKEN", hide_env_values = true)]
    ingest_token: Option<millrace_proto::auth::Secret>,
    /// replay: seconds to read the queue to its end, and then to have every record acknowledged.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 120)]
    timeout_s: u64,
}

impl ReplayArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.max(1))
    }
}

/// A dead letter as the worker writes it; the original record as its text.
#[derive(Deserialize)]
struct Letter<'a> {
    // Written under moose's names; letters of earlier Millrace versions have these.
    #[serde(borrow, default, alias = "originalRecord")]
    original_record: Option<&'a RawValue>,
    #[serde(default, alias = "originalRecordTruncated")]
    original_record_truncated: bool,
    #[serde(default, alias = "originalBytes")]
    original_bytes: Option<u64>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    function: String,
    #[serde(default)]
    topic: String,
    #[serde(default = "no_partition")]
    partition: i64,
}

fn no_partition() -> i64 {
    -1
}

/// What became of one dead letter.
#[derive(serde::Serialize)]
struct Outcome {
    /// Where the dead letter is in its queue.
    partition: i32,
    offset: i64,
    function: String,
    #[serde(skip)]
    result: Result<(), Verdict>,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    /// Not replayed, for a reason of the record's (it would fail the same way again, or has nowhere to go).
    Skipped,
    /// Not known to be replayed: the broker or the ingest API did not take it in time.
    Failed,
}

/// A record to send to a stream, for one function.
struct ToStream {
    at: usize,
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    function: String,
}

/// A record to send through an ingest API (its path).
struct ToApi {
    at: usize,
    path: String,
    record: Vec<u8>,
    json: bool,
}

pub async fn replay(ctx: &Ctx, queue: &str, letters: &[&Read], args: &ReplayArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout();
    let resources = ctx.resources().await?;
    let mut outcomes = Vec::with_capacity(letters.len());
    let (mut streams, mut apis) = (Vec::new(), Vec::new());
    for (at, read) in letters.iter().enumerate() {
        let mut o = Outcome { partition: read.partition, offset: read.offset, function: String::new(), result: Ok(()), reason: String::new() };
        match plan(&resources, read) {
            Ok(Target::Stream(mut s)) => {
                s.at = at;
                o.function = s.function.clone();
                streams.push(s);
            }
            Ok(Target::Api(mut a, function)) => {
                a.at = at;
                o.function = function;
                apis.push(a);
            }
            Err((function, reason)) => {
                o.function = function;
                o.result = Err(Verdict::Skipped);
                o.reason = reason;
            }
        }
        outcomes.push(o);
    }
    // Streams first, acknowledged, then the ingest API: what the API writes comes after the replayed records.
    if !streams.is_empty() {
        for (at, r) in send_to_streams(ctx, &streams, deadline).await? {
            if let Err(reason) = r {
                outcomes[at].result = Err(Verdict::Failed);
                outcomes[at].reason = reason;
            }
        }
    }
    if !apis.is_empty() {
        let http = Http::new(&args.ingest_url, args.ingest_token.clone(), &ctx.tls);
        for (at, result) in send_to_apis(&http, &apis, deadline).await {
            if let Err((v, reason)) = result {
                outcomes[at].result = Err(v);
                outcomes[at].reason = reason;
            }
        }
    }
    report(ctx, queue, &outcomes)
}

enum Target {
    Stream(ToStream),
    Api(ToApi, String),
}

fn spec(r: &StoredResource) -> Option<&Spec> {
    r.resource.as_ref()?.spec.as_ref()
}

/// The physical name of the stream or dead letter queue a transform or consumer reads.
fn physical_of(resources: &[StoredResource], r: &Option<ResourceRef>) -> Option<String> {
    let r = r.as_ref()?;
    resources.iter().find_map(|s| match spec(s)? {
        Spec::Stream(x) if x.name == r.name && x.version == r.version => Some(s.physical_name.clone()),
        Spec::DeadLetterQueue(x) if x.name == r.name && x.version == r.version => Some(s.physical_name.clone()),
        _ => None,
    })
}

/// Where a dead letter's record goes, or why it does not: (the letter's function, the reason).
fn plan(resources: &[StoredResource], read: &Read) -> Result<Target, (String, String)> {
    let letter: Letter = serde_json::from_slice(&read.payload).map_err(|e| (String::new(), format!("not a dead letter: {e}")))?;
    let function = letter.function.clone();
    let skip = |reason: String| Err((function.clone(), reason));
    if letter.original_record_truncated {
        let size = letter.original_bytes.map(|b| format!(" of {b} bytes")).unwrap_or_default();
        return skip(format!("its original record{size} was cut to fit the dead letter queue: it cannot be replayed as it was"));
    }
    let Some(original) = letter.original_record else { return skip("it has no original record".into()) };
    // A record that was not JSON is kept as a string: its text is the record.
    let (record, json) = match serde_json::from_str::<String>(original.get()) {
        Ok(text) => (text.into_bytes(), false),
        Err(_) => (original.get().as_bytes().to_vec(), true),
    };
    if letter.source == "api" || function.starts_with("ingest:") {
        let name = function.strip_prefix("ingest:").unwrap_or(&function);
        let api = resources.iter().find_map(|r| match spec(r)? {
            Spec::IngestApi(a) if a.name == name && physical_of(resources, &a.destination).as_deref() == Some(&letter.topic) => Some(a),
            _ => None,
        });
        let Some(api) = api else { return skip(format!("no ingest API `{name}` writes to `{}` any more", letter.topic)) };
        let path = if api.version.is_empty() { format!("/ingest/{}", api.name) } else { format!("/ingest/{}/{}", api.name, api.version) };
        return Ok(Target::Api(ToApi { at: 0, path, record, json }, function));
    }
    let Some(stream) = resources.iter().find(|r| r.physical_name == letter.topic && matches!(spec(r), Some(Spec::Stream(_) | Spec::DeadLetterQueue(_))))
    else {
        return skip(format!("its stream `{}` is no longer declared", letter.topic));
    };
    // The function must still read that stream, or nothing would take the record.
    let reads_it = match function.strip_prefix("table:") {
        Some(table) => {
            let table_ref = resources.iter().find_map(|r| match spec(r)? {
                Spec::Table(t) if r.physical_name == table => Some((t.name.clone(), t.version.clone())),
                _ => None,
            });
            matches!((spec(stream), table_ref), (Some(Spec::Stream(s)), Some((n, v))) if s.destination.as_ref().is_some_and(|d| d.name == n && d.version == v))
        }
        None => resources.iter().any(|r| match spec(r) {
            Some(Spec::Transform(t)) => t.name == function && physical_of(resources, &t.source).as_deref() == Some(&letter.topic),
            Some(Spec::Consumer(c)) => c.name == function && physical_of(resources, &c.source).as_deref() == Some(&letter.topic),
            _ => false,
        }),
    };
    if !reads_it {
        return skip(format!("no transform, consumer or table sync `{function}` reads `{}` any more", letter.topic));
    }
    // The key the record had (the dead letter keeps it), else the stream's key fields.
    let key = match read.key.as_deref() {
        Some(k) if !k.is_empty() => Some(k.to_vec()),
        _ => match spec(stream) {
            Some(Spec::Stream(s)) if json && s.fields.iter().any(|f| f.key) => {
                let parts: Vec<String> = s.fields.iter().filter(|f| f.key).map(|f| field(original, &f.name).unwrap_or_default()).collect();
                Some(parts.join("|").into_bytes())
            }
            _ => None,
        },
    };
    let partition = i32::try_from(letter.partition).ok().filter(|p| *p >= 0);
    Ok(Target::Stream(ToStream { at: 0, topic: letter.topic, partition, key, payload: record, function }))
}

/// Produces the records (waiting whenever the producer's queue is full); each one's acknowledgement or error.
async fn send_to_streams(ctx: &Ctx, records: &[ToStream], deadline: Instant) -> anyhow::Result<Vec<(usize, Result<(), String>)>> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &ctx.brokers)
        .set("enable.idempotence", "true")
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", left.as_millis().to_string())
        .create()?;
    let mut results = Vec::with_capacity(records.len());
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    for r in records {
        let headers = OwnedHeaders::new().insert(Header { key: REPLAY_HEADER, value: Some(r.function.as_bytes()) });
        let mut record = FutureRecord::to(&r.topic).payload(&r.payload).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k);
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back((r.at, f));
                    break;
                }
                // A full queue: wait for the oldest record in it, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match pending.pop_front() {
                        Some((at, f)) => results.push((at, delivered(f.await))),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                    if Instant::now() >= deadline {
                        results.push((r.at, Err("the producer's queue stayed full until the timeout".into())));
                        break;
                    }
                }
                Err((e, _)) => {
                    results.push((r.at, Err(format!("the producer refused it: {e}"))));
                    break;
                }
            }
        }
    }
    for (at, f) in pending {
        results.push((at, delivered(f.await)));
    }
    Ok(results)
}

fn delivered<E>(r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>) -> Result<(), String> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("the broker did not acknowledge it: {e}")),
        Err(_) => Err("the producer was dropped before the broker answered".into()),
    }
}

/// POSTs to the worker's ingest API.
struct Http {
    base: String,
    key: Option<millrace_proto::auth::Secret>,
    /// HTTP, or HTTPS verified as the gRPC calls are (`--tls-ca`).
    client: hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>,
}

/// An answer of the ingest API: status and body.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Http {
    fn new(base: &str, key: Option<millrace_proto::auth::Secret>, tls: &millrace_proto::tls::Client) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.rustls().as_ref().clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Self { base: base.trim_end_matches('/').to_string(), key, client }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Answer, String> {
        let mut req = hyper::Request::post(format!("{}{path}", self.base)).header("content-type", "application/json");
        if let Some(k) = self.key.as_ref().and_then(|k| k.bearer()) {
            req = req.header("authorization", k);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| format!("--ingest-url {:?} is not a URL: {e}", self.base))?;
        let answer = self.client.request(req).await.map_err(|e| format!("the ingest API at {} cannot be reached: {e}", self.base))?;
        let status = answer.status().as_u16();
        let bytes = answer.into_body().collect().await.map_err(|e| format!("reading the ingest API's answer: {e}"))?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Answer { status, body })
    }
}

type ApiResult = Result<(), (Verdict, String)>;

/// Sends the records through their ingest APIs in requests of many; each record's result.
async fn send_to_apis(http: &Http, records: &[ToApi], deadline: Instant) -> Vec<(usize, ApiResult)> {
    let mut by_path: BTreeMap<&str, Vec<&ToApi>> = BTreeMap::new();
    for r in records {
        by_path.entry(&r.path).or_default().push(r);
    }
    let mut results = Vec::with_capacity(records.len());
    for (path, rs) in by_path {
        // A record that is not JSON goes alone (the API refuses it, with its reason); the rest in JSON arrays.
        let mut chunk: Vec<&ToApi> = Vec::new();
        let mut bytes = 0;
        for r in rs {
            if !r.json {
                results.extend(send_chunk(http, path, vec![r], deadline).await);
                continue;
            }
            if chunk.len() == CHUNK_RECORDS || (bytes + r.record.len() > CHUNK_BYTES && !chunk.is_empty()) {
                results.extend(send_chunk(http, path, std::mem::take(&mut chunk), deadline).await);
                bytes = 0;
            }
            bytes += r.record.len() + 1;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            results.extend(send_chunk(http, path, chunk, deadline).await);
        }
    }
    results
}

/// One request (and its retries): a 400 names the invalid records, which are skipped; the rest is sent again, as
/// nothing of a refused request is written. A 503 is retried until the timeout.
async fn send_chunk(http: &Http, path: &str, mut chunk: Vec<&ToApi>, deadline: Instant) -> Vec<(usize, ApiResult)> {
    let mut results = Vec::new();
    let mut backoff = Duration::from_millis(200);
    while !chunk.is_empty() {
        let body = if chunk.len() == 1 && !chunk[0].json {
            chunk[0].record.clone()
        } else {
            let mut b = vec![b'['];
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(&r.record);
            }
            b.push(b']');
            b
        };
        let answer = match http.post(path, body).await {
            Ok(a) => a,
            // The worker may be restarting: try again until the timeout.
            Err(_) if Instant::now() + backoff < deadline => {
                pause(&mut backoff).await;
                continue;
            }
            Err(e) => return fail_all(results, &chunk, Verdict::Failed, e),
        };
        let message = answer.body.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or_else(|| answer.body.to_string());
        match answer.status {
            200 => {
                results.extend(chunk.iter().map(|r| (r.at, Ok(()))));
                return results;
            }
            400 => {
                let Some(errors) = answer.body.get("errors").and_then(|e| e.as_array()).filter(|e| !e.is_empty()) else {
                    return fail_all(results, &chunk, Verdict::Skipped, format!("the ingest API refused it: {message}"));
                };
                let mut reasons: BTreeMap<usize, Vec<String>> = BTreeMap::new();
                for e in errors {
                    let i = e.get("record").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
                    let f = e.get("field").and_then(|f| f.as_str()).unwrap_or_default();
                    let reason = e.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
                    reasons.entry(i).or_default().push(if f.is_empty() { reason.to_string() } else { format!("{f}: {reason}") });
                }
                let before = chunk.len();
                let mut kept = Vec::new();
                for (i, r) in chunk.into_iter().enumerate() {
                    match reasons.remove(&i) {
                        Some(why) => results.push((r.at, Err((Verdict::Skipped, format!("still invalid: {}", why.join("; ")))))),
                        None => kept.push(r),
                    }
                }
                chunk = kept;
                // The errors listed stop at 1,000: what they did not name is sent again and named next time.
                if chunk.len() == before {
                    return fail_all(results, &chunk, Verdict::Skipped, format!("the ingest API refused it: {message}"));
                }
            }
            413 if chunk.len() > 1 => {
                let second = chunk.split_off(chunk.len() / 2);
                results.extend(Box::pin(send_chunk(http, path, second, deadline)).await);
            }
            404 | 413 => return fail_all(results, &chunk, Verdict::Skipped, format!("the ingest API refused it: {message}")),
            503 if Instant::now() + backoff < deadline => pause(&mut backoff).await,
            401 | 403 => {
                let why = format!("the ingest API wants its token: pass --ingest-token (or MILLRACE_INGEST_TOKEN) ({message})");
                return fail_all(results, &chunk, Verdict::Failed, why);
            }
            code => return fail_all(results, &chunk, Verdict::Failed, format!("the ingest API answered {code}: {message}")),
        }
    }
    results
}

async fn pause(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}

fn fail_all(mut results: Vec<(usize, ApiResult)>, chunk: &[&ToApi], v: Verdict, why: String) -> Vec<(usize, ApiResult)> {
    results.extend(chunk.iter().map(|r| (r.at, Err((v, why.clone())))));
    results
}

fn report(ctx: &Ctx, queue: &str, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let of = |v: Verdict| -> Vec<&Outcome> { outcomes.iter().filter(|o| o.result.as_ref().err() == Some(&v)).collect() };
    let (skipped, failed) = (of(Verdict::Skipped), of(Verdict::Failed));
    let replayed = outcomes.len() - skipped.len() - failed.len();
    if ctx.json {
        let out = serde_json::json!({"chosen": outcomes.len(), "replayed": replayed, "skipped": skipped, "failed": failed});
        println!("{out}");
    } else {
        println!(
            "replayed {replayed} of {} dead letters ({} skipped, {} failed); they stay in the queue",
            outcomes.len(),
            skipped.len(),
            failed.len()
        );
        for (what, list) in [("skipped", &skipped), ("failed ", &failed)] {
            for o in list.iter() {
                let function = if o.function.is_empty() { String::new() } else { format!(" ({})", o.function) };
                println!("  {what} {queue} {}/{}{function}: {}", o.partition, o.offset, o.reason);
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "{} records may not have been replayed: replay them again (--filter chooses them; duplicates are possible)", failed.len());
    Ok(())
}
