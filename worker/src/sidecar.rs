//! Calls to sidecars: one `Process` stream per running unit, over one HTTP/2 connection per sidecar. Failures are
//! told apart, because what a unit does next depends on whether a record may have caused them.

use crate::unit::recovery::Poison;
use millrace_proto::v1::function_runtime_client::FunctionRuntimeClient;
use millrace_proto::v1::{process_request, DescribeRequest, DescribeResponse, OpenFunction, ProcessRequest, ProcessResponse};
use std::collections::HashMap;
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
    timeout: Duration,
}

/// An open `Process` stream for one function.
pub struct Session {
    pub name: String,
    tx: mpsc::Sender<ProcessRequest>,
    rx: Streaming<ProcessResponse>,
    timeout: Duration,
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
            let ep = Endpoint::from_shared(url.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5));
            channels.insert(name.to_string(), (url.to_string(), ep.connect_lazy()));
        }
        Ok(Self { channels, timeout })
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

    pub async fn open(&self, runtime: &str, function: &str, depth: usize) -> Result<Session, SidecarError> {
        let (url, channel) = self.channel(runtime)?;
        let unreachable = |detail: String| SidecarError::Unreachable { name: runtime.into(), detail: format!("{url}: {detail}") };
        let (tx, rx) = mpsc::channel(depth + 1);
        let open = ProcessRequest { message: Some(process_request::Message::Open(OpenFunction { function: function.into() })) };
        tx.send(open).await.map_err(|e| unreachable(e.to_string()))?;
        let mut client = client(channel);
        let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unreachable("no answer to open".into()))?
            .map_err(|s| unreachable(format!("{}: {}", s.code(), s.message())))?;
        Ok(Session { name: runtime.into(), tx, rx: resp.into_inner(), timeout: self.timeout })
    }
}

impl Session {
    pub fn sender(&self) -> mpsc::Sender<ProcessRequest> {
        self.tx.clone()
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
}
