//! Calls to sidecars: one `Process` stream per running unit and sidecar process, over one HTTP/2 connection per
//! process. A sidecar that runs several processes lists them in `Describe`; a unit opens a stream to each and sends
//! each batch to the one with the fewest batches outstanding, reading results back in send order. Failures are told
//! apart, because what a unit does next depends on whether a record may have caused them.

use crate::unit::recovery::Poison;
use millrace_proto::v1::function_runtime_client::FunctionRuntimeClient;
use millrace_proto::v1::{process_request, DescribeRequest, DescribeResponse, OpenFunction, ProcessRequest, ProcessResponse};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
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
    timeout: Duration,
}

/// One `Process` stream to one sidecar process.
struct Lane {
    url: String,
    rx: Streaming<ProcessResponse>,
}

/// How many batches each lane has outstanding.
struct Order {
    outstanding: Vec<AtomicUsize>,
}

/// A function's open `Process` streams, one per sidecar process.
pub struct Session {
    pub name: String,
    lanes: Vec<Lane>,
    order: Arc<Order>,
    /// The lane of each batch sent, oldest first.
    sent: mpsc::UnboundedReceiver<usize>,
    sender: BatchSender,
    timeout: Duration,
}

/// Sends batches of one session, each to the lane with the fewest outstanding.
#[derive(Clone)]
pub struct BatchSender {
    txs: Arc<[mpsc::Sender<ProcessRequest>]>,
    order: Arc<Order>,
    sent: mpsc::UnboundedSender<usize>,
    next: Arc<AtomicUsize>,
}

impl BatchSender {
    pub async fn send(&self, msg: ProcessRequest) -> Result<(), mpsc::error::SendError<ProcessRequest>> {
        let n = self.txs.len();
        // Rotating the starting lane breaks ties, so idle lanes share the work.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let lane = (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.order.outstanding[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.order.outstanding[lane].fetch_add(1, Ordering::Relaxed);
        let _ = self.sent.send(lane);
        self.txs[lane].send(msg).await
    }
}

fn client(channel: Channel) -> FunctionRuntimeClient<Channel> {
    FunctionRuntimeClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

impl Sidecars {
    /// Parses NAME=URL pairs; connections are made lazily, so a sidecar may start after the worker.
    pub fn new(specs: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for s in specs {
            let (name, url) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--sidecar {s:?} is not NAME=URL"))?;
            channels.insert(name.to_string(), (url.to_string(), endpoint(url)?.connect_lazy()));
        }
        Ok(Self { channels, extra: Default::default(), timeout })
    }

    /// The connection to one further process of a sidecar.
    fn extra(&self, url: &str) -> Result<Channel, String> {
        let mut extra = self.extra.lock().expect("sidecar channels lock");
        if let Some(c) = extra.get(url) {
            return Ok(c.clone());
        }
        let c = endpoint(url).map_err(|e| format!("{url}: {e}"))?.connect_lazy();
        extra.insert(url.to_string(), c.clone());
        Ok(c)
    }

    fn channel(&self, runtime: &str) -> Result<(&str, Channel), SidecarError> {
        self.channels.get(runtime).map(|(u, c)| (u.as_str(), c.clone())).ok_or_else(|| SidecarError::Unknown(runtime.into()))
    }

    /// The functions a sidecar hosts.
    pub async fn describe(&self, runtime: &str) -> Result<DescribeResponse, SidecarError> {
        let (url, channel) = self.channel(runtime)?;
        let unreachable = |detail: String| SidecarError::Unreachable { name: runtime.into(), detail: format!("{url}: {detail}") };
        match tokio::time::timeout(self.timeout, client(channel).describe(DescribeRequest {})).await {
            Err(_) => Err(unreachable(format!("no answer to Describe within {:?}", self.timeout))),
            Ok(Err(s)) => Err(unreachable(format!("{}: {}", s.code(), s.message()))),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Opens a function's streams: to every process the sidecar lists, or to the configured address alone. A
    /// process that cannot be reached is left out while another can (a supervisor is restarting it).
    pub async fn open(&self, runtime: &str, function: &str, depth: usize) -> Result<Session, SidecarError> {
        let (url, channel) = self.channel(runtime)?;
        let unreachable = |detail: String| SidecarError::Unreachable { name: runtime.into(), detail };
        let mut targets = vec![(url.to_string(), channel.clone())];
        if let Ok(described) = self.describe(runtime).await {
            if !described.endpoints.is_empty() {
                targets = described.endpoints.iter().filter_map(|u| self.extra(u).ok().map(|c| (u.clone(), c))).collect();
            }
        }
        let opened = futures::future::join_all(targets.into_iter().map(|(u, c)| self.open_lane(u, c, function, depth))).await;
        let (mut txs, mut lanes, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        for r in opened {
            match r {
                Ok((tx, lane)) => {
                    txs.push(tx);
                    lanes.push(lane);
                }
                Err(e) => failures.push(e),
            }
        }
        if lanes.is_empty() {
            return Err(unreachable(failures.join("; ")));
        }
        if !failures.is_empty() {
            tracing::warn!(sidecar = runtime, function, failed = %failures.join("; "), "some sidecar processes cannot be reached; using the others");
        }
        let order = Arc::new(Order { outstanding: lanes.iter().map(|_| AtomicUsize::new(0)).collect() });
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let sender = BatchSender { txs: txs.into(), order: order.clone(), sent: sent_tx, next: Default::default() };
        Ok(Session { name: runtime.into(), lanes, order, sent, sender, timeout: self.timeout })
    }

    async fn open_lane(&self, url: String, channel: Channel, function: &str, depth: usize) -> Result<(mpsc::Sender<ProcessRequest>, Lane), String> {
        let (tx, rx) = mpsc::channel(depth + 1);
        let open = ProcessRequest { message: Some(process_request::Message::Open(OpenFunction { function: function.into() })) };
        tx.send(open).await.map_err(|e| format!("{url}: {e}"))?;
        let mut client = client(channel);
        let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("{url}: no answer to open"))?
            .map_err(|s| format!("{url}: {}: {}", s.code(), s.message()))?;
        Ok((tx, Lane { url, rx: resp.into_inner() }))
    }
}

fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())?
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
        // The batch may be on its way to the sender still: its lane is known once it is sent.
        let lane = match tokio::time::timeout(self.timeout, self.sent.recv()).await {
            Ok(Some(lane)) => lane,
            _ => return Err(SidecarError::Broke { name: self.name.clone(), detail: "the batch was never sent".into() }),
        };
        self.order.outstanding[lane].fetch_sub(1, Ordering::Relaxed);
        let Lane { url, rx } = &mut self.lanes[lane];
        let name = format!("{} ({url})", self.name);
        let broke = |detail: String| SidecarError::Broke { name: name.clone(), detail };
        match tokio::time::timeout(self.timeout, rx.message()).await {
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
}
