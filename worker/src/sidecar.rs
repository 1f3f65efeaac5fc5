//! Calls to sidecars: one `Process` stream per running unit, over one HTTP/2 connection per sidecar.

use millrace_proto::v1::function_runtime_client::FunctionRuntimeClient;
use millrace_proto::v1::{process_request, OpenFunction, ProcessRequest, ProcessResponse};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("no sidecar named `{0}` is configured (--sidecar NAME=URL)")]
    Unknown(String),
    #[error("sidecar `{name}` failed: {detail}")]
    Failed { name: String, detail: String },
}

/// The configured sidecars by name.
#[derive(Clone)]
pub struct Sidecars {
    channels: HashMap<String, Channel>,
    timeout: Duration,
}

/// An open `Process` stream for one function.
pub struct Session {
    pub name: String,
    tx: mpsc::Sender<ProcessRequest>,
    rx: Streaming<ProcessResponse>,
    timeout: Duration,
}

impl Sidecars {
    /// Parses NAME=URL pairs; connections are made lazily, so a sidecar may start after the worker.
    pub fn new(specs: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for s in specs {
            let (name, url) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--sidecar {s:?} is not NAME=URL"))?;
            let ep = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true);
            channels.insert(name.to_string(), ep.connect_lazy());
        }
        Ok(Self { channels, timeout })
    }

    pub async fn open(&self, runtime: &str, function: &str, depth: usize) -> Result<Session, SidecarError> {
        let channel = self.channels.get(runtime).cloned().ok_or_else(|| SidecarError::Unknown(runtime.into()))?;
        let failed = |detail: String| SidecarError::Failed { name: runtime.into(), detail };
        let (tx, rx) = mpsc::channel(depth + 1);
        let open = ProcessRequest { message: Some(process_request::Message::Open(OpenFunction { function: function.into() })) };
        tx.send(open).await.map_err(|e| failed(e.to_string()))?;
        let mut client = FunctionRuntimeClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| failed("no answer to open".into()))?
            .map_err(|s| failed(format!("{}: {}", s.code(), s.message())))?;
        Ok(Session { name: runtime.into(), tx, rx: resp.into_inner(), timeout: self.timeout })
    }
}

impl Session {
    pub fn sender(&self) -> mpsc::Sender<ProcessRequest> {
        self.tx.clone()
    }

    /// The next batch result, in send order.
    pub async fn next(&mut self) -> Result<millrace_proto::v1::BatchResult, SidecarError> {
        let failed = |detail: String| SidecarError::Failed { name: self.name.clone(), detail };
        match tokio::time::timeout(self.timeout, self.rx.message()).await {
            Err(_) => Err(failed(format!("no result within {:?}", self.timeout))),
            Ok(Err(s)) => Err(failed(format!("{}: {}", s.code(), s.message()))),
            Ok(Ok(None)) => Err(failed("stream ended".into())),
            Ok(Ok(Some(ProcessResponse { result: Some(r) }))) => Ok(r),
            Ok(Ok(Some(_))) => Err(failed("a response without a result".into())),
        }
    }
}
