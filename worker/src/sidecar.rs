//! Calls to sidecars: one `Process` stream per running unit, over one HTTP/2 connection per sidecar process. A
//! sidecar that runs several processes lists them in `Describe`; each unit (one partition) keeps to one of them,
//! so a partition's batches run in order in one process, and the partitions spread over the processes. Failures
//! are told apart, because what a unit does next depends on whether a record may have caused them.

use crate::unit::recovery::Poison;
use millrace_proto::v1::function_runtime_client::FunctionRuntimeClient;
use millrace_proto::v1::{process_request, DescribeRequest, DescribeResponse, OpenFunction, ProcessRequest, ProcessResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use millrace_proto::auth::{Secret, WithToken};
use millrace_proto::tls;
use tonic::transport::Endpoint;

/// A connection to one sidecar process, sending the sidecar token with every call.
type Channel = WithToken<tonic::transport::Channel>;
use tonic::{Code, Streaming};

/// The largest gRPC message a worker sends or takes; batches are kept below it by `--batch-max-bytes`.
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("no sidecar named `{0}` is configured on this worker: add it with --sidecar {0}=URL")]
    Unknown(String),
    #[error("sidecar `{name}` cannot be reached: {detail}")]
    Unreachable { name: String, detail: String },
    #[error("sidecar `{name}` refused the batch as too large: {detail}")]
    TooLarge { name: String, detail: String },
    #[error("sidecar `{name}` broke off the stream (crashed or was stopped): {detail}")]
    Broke { name: String, detail: String },
    #[error("sidecar `{name}` gave no result within {after:?}")]
    Timeout { name: String, after: Duration },
}

impl SidecarError {
    /// Whether a record of the batch in hand may be the cause.
    pub fn poison(&self) -> Option<Poison> {
        match self {
            SidecarError::TooLarge { .. } => Some(Poison::RecordTooLarge),
            SidecarError::Broke { .. } => Some(Poison::SidecarCrashed),
            SidecarError::Timeout { .. } => Some(Poison::SidecarTimeout),
            SidecarError::Unknown(_) | SidecarError::Unreachable { .. } => None,
        }
    }
}

/// The configured sidecars by name.
#[derive(Clone)]
pub struct Sidecars {
    channels: HashMap<String, (String, Channel)>,
    /// Connections to the further processes sidecars list in `Describe`, by address.
    extra: Arc<Mutex<HashMap<String, Channel>>>,
    /// The processes each sidecar listed in its last `Describe`.
    known: Arc<Mutex<HashMap<String, Vec<String>>>>,
    timeout: Duration,
    /// TLS to `https://` sidecars, and the sidecar token.
    tls: tls::Client,
    token: Option<Secret>,
}

/// A function's open `Process` stream to one sidecar process. A unit keeps all its batches on one process while
/// that process lives: the process runs them one after another, so one key's records run in offset order and the
/// state a function keeps in its module sees each partition whole.
pub struct Session {
    pub name: String,
    /// The process's address.
    pub url: String,
    /// Opened on another process than the partition's own, which could not be reached.
    pub fallback: bool,
    rx: Streaming<ProcessResponse>,
    sender: BatchSender,
    timeout: Duration,
}

/// Sends the batches of one session.
pub type BatchSender = mpsc::Sender<ProcessRequest>;

/// Which of `n` processes serves a function's partition: consecutive partitions on consecutive processes, each
/// function starting elsewhere, so that a sidecar's processes share the partitions of every function.
fn process_for(function: &str, partition: i32, n: usize) -> usize {
    // FNV-1a: stable across workers and restarts, unlike a seeded hash.
    let h = function.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (h.wrapping_add(partition.unsigned_abs() as u64) % n.max(1) as u64) as usize
}

fn client(channel: Channel) -> FunctionRuntimeClient<Channel> {
    FunctionRuntimeClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

impl Sidecars {
    /// Parses NAME=URL pairs; connections are made lazily, so a sidecar may start after the worker.
    pub fn new(specs: &[String], timeout: Duration, tls: tls::Client, token: Option<Secret>) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for s in specs {
            let (name, url) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--sidecar {s:?} is not NAME=URL"))?;
            let channel = WithToken::new(endpoint(&tls, url)?.connect_lazy(), token.as_ref());
            channels.insert(name.to_string(), (url.to_string(), channel));
        }
        Ok(Self { channels, extra: Default::default(), known: Default::default(), timeout, tls, token })
    }

    /// The connection to one further process of a sidecar.
    fn extra(&self, url: &str) -> Result<Channel, String> {
        let mut extra = self.extra.lock().expect("sidecar channels lock");
        if let Some(c) = extra.get(url) {
            return Ok(c.clone());
        }
        let c = WithToken::new(endpoint(&self.tls, url).map_err(|e| format!("{url}: {e}"))?.connect_lazy(), self.token.as_ref());
        extra.insert(url.to_string(), c.clone());
        Ok(c)
    }

    fn channel(&self, runtime: &str) -> Result<(&str, Channel), SidecarError> {
        self.channels.get(runtime).map(|(u, c)| (u.as_str(), c.clone())).ok_or_else(|| SidecarError::Unknown(runtime.into()))
    }

    /// The functions a sidecar hosts: asked of the configured address, else of the other processes it listed
    /// last (the configured one may be the process that is restarting).
    pub async fn describe(&self, runtime: &str) -> Result<DescribeResponse, SidecarError> {
        let (url, channel) = self.channel(runtime)?;
        let first = Self::describe_at(url, channel, self.timeout).await;
        let result = match first {
            Ok(r) => Ok(r),
            Err(e) => {
                let others: Vec<String> = self.known.lock().expect("sidecar endpoints lock").get(runtime).cloned().unwrap_or_default();
                let mut found = Err(e);
                for other in others.iter().filter(|o| o.as_str() != url) {
                    let Ok(c) = self.extra(other) else { continue };
                    if let Ok(r) = Self::describe_at(other, c, self.timeout).await {
                        found = Ok(r);
                        break;
                    }
                }
                found
            }
        };
        match result {
            Ok(r) => {
                if !r.endpoints.is_empty() {
                    self.known.lock().expect("sidecar endpoints lock").insert(runtime.to_string(), r.endpoints.clone());
                }
                Ok(r)
            }
            Err(detail) => Err(SidecarError::Unreachable { name: runtime.into(), detail }),
        }
    }

    async fn describe_at(url: &str, channel: Channel, timeout: Duration) -> Result<DescribeResponse, String> {
        match tokio::time::timeout(timeout, client(channel).describe(DescribeRequest {})).await {
            Err(_) => Err(format!("{url}: no answer to Describe within {timeout:?}")),
            Ok(Err(s)) => Err(format!("{url}: {}: {}", s.code(), s.message())),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Opens a function's stream for one partition: to the process `process_for` picks among those the sidecar
    /// lists (or the configured address alone). A process that cannot be reached gives way to the next one while
    /// a supervisor restarts it; the partition comes back to it when its unit next opens a session.
    pub async fn open(&self, runtime: &str, function: &str, partition: i32, depth: usize) -> Result<Session, SidecarError> {
        let (url, channel) = self.channel(runtime)?;
        let mut targets = vec![url.to_string()];
        if let Ok(described) = self.describe(runtime).await {
            if !described.endpoints.is_empty() {
                targets = described.endpoints;
                targets.sort();
                targets.dedup();
            }
        }
        let first = process_for(function, partition, targets.len());
        let mut failures = Vec::new();
        for i in 0..targets.len() {
            let target = &targets[(first + i) % targets.len()];
            let c = if target == url { Ok(channel.clone()) } else { self.extra(target) };
            let opened = match c {
                Ok(c) => self.open_lane(target.clone(), c, function, depth).await,
                Err(e) => Err(e),
            };
            match opened {
                Ok((sender, rx)) => {
                    if !failures.is_empty() {
                        tracing::warn!(sidecar = runtime, function, partition, failed = %failures.join("; "), using = target, "a sidecar process cannot be reached; using another");
                    }
                    return Ok(Session { name: format!("{runtime} ({target})"), url: target.clone(), fallback: i > 0, rx, sender, timeout: self.timeout });
                }
                Err(e) => failures.push(e),
            }
        }
        Err(SidecarError::Unreachable { name: runtime.into(), detail: failures.join("; ") })
    }

    async fn open_lane(&self, url: String, channel: Channel, function: &str, depth: usize) -> Result<(BatchSender, Streaming<ProcessResponse>), String> {
        let (tx, rx) = mpsc::channel(depth + 1);
        let open = ProcessRequest { message: Some(process_request::Message::Open(OpenFunction { function: function.into(), packed_results: true })) };
        tx.send(open).await.map_err(|e| format!("{url}: {e}"))?;
        let mut client = client(channel);
        let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("{url}: no answer to open"))?
            .map_err(|s| format!("{url}: {}: {}", s.code(), s.message()))?;
        Ok((tx, resp.into_inner()))
    }
}

fn endpoint(tls: &tls::Client, url: &str) -> anyhow::Result<Endpoint> {
    Ok(tls.endpoint(url)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl Session {
    pub fn sender(&self) -> BatchSender {
        self.sender.clone()
    }

    /// The next batch result, in send order.
    pub async fn next(&mut self) -> Result<millrace_proto::v1::BatchResult, SidecarError> {
        let name = self.name.clone();
        let broke = |detail: String| SidecarError::Broke { name: name.clone(), detail };
        match tokio::time::timeout(self.timeout, self.rx.message()).await {
            Err(_) => Err(SidecarError::Timeout { name, after: self.timeout }),
            Ok(Err(s)) if matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange) => {
                Err(SidecarError::TooLarge { name, detail: s.message().to_string() })
            }
            Ok(Err(s)) => Err(broke(format!("{}: {}", s.code(), s.message()))),
            Ok(Ok(None)) => Err(broke("stream ended".into())),
            Ok(Ok(Some(ProcessResponse { result: Some(r) }))) => Ok(r),
            Ok(Ok(Some(_))) => Err(broke("a response without a result".into())),
        }
    }

    /// How long the worker waits for one batch's result.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::process_for;

    #[test]
    fn partitions_of_a_function_spread_over_every_process_and_stay_put() {
        for n in 1..=4 {
            let mut seen: Vec<usize> = (0..n as i32).map(|p| process_for("src__dst", p, n)).collect();
            assert_eq!(process_for("src__dst", 1, n), process_for("src__dst", 1, n));
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
