//! Serve plain Rust functions over serde types as Millrace transforms and consumers.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Raw { id: String, value: i64 }
//! #[derive(Serialize)]
//! struct Doubled { id: String, value: i64 }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     millrace_sdk::Runtime::new("example")
//!         .transform("double", |r: Raw| Doubled { id: r.id, value: r.value * 2 })
//!         .transform("only_even", |r: Raw| (r.value % 2 == 0).then_some(r.value))
//!         .serve("127.0.0.1:50061")
//!         .await
//! }
//! ```
//!
//! A transform returns its output record, an `Option` (`None` filters the record out) or a `Vec` (fan-out):
//! anything `Serialize`, judged by its JSON (null = nothing, array = many, anything else = one).
//! `try_transform` takes functions returning `Result`; an `Err`, a panic, or an input that does not
//! deserialize becomes a per-record error, which the worker sends to the dead letter queue.

use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::function_runtime_server::{FunctionRuntime, FunctionRuntimeServer};
use millrace_proto::v1::{
    process_request, record_result, BatchResult, DescribeRequest, DescribeResponse, FunctionInfo, ProcessRequest,
    ProcessResponse, RecordError, RecordOutputs, RecordResult,
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A hosted function: JSON in, per-record result out.
trait Function: Send + Sync {
    fn call(&self, input: &[u8]) -> RecordResult;
}

struct Typed<F>(F);

impl<F> Function for Typed<F>
where
    F: Fn(&[u8]) -> Result<Vec<Bytes>, RecordError> + Send + Sync,
{
    fn call(&self, input: &[u8]) -> RecordResult {
        let result = match catch_unwind(AssertUnwindSafe(|| (self.0)(input))) {
            Ok(Ok(values)) => record_result::Result::Ok(RecordOutputs { values, ..Default::default() }),
            Ok(Err(e)) => record_result::Result::Error(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the function panicked".into());
                record_result::Result::Error(RecordError { error_type: "panic".into(), message })
            }
        };
        RecordResult { result: Some(result) }
    }
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

fn decode<I: DeserializeOwned>(input: &[u8]) -> Result<I, RecordError> {
    serde_json::from_slice(input).map_err(|e| RecordError {
        error_type: "DeserializationError".into(),
        message: format!("the record does not match {}: {e}", std::any::type_name::<I>()),
    })
}

/// Serialises a return value into zero, one or many output records.
fn encode<O: Serialize>(out: &O) -> Result<Vec<Bytes>, RecordError> {
    let ser = |e: serde_json::Error| RecordError { error_type: "SerializationError".into(), message: e.to_string() };
    let bytes = serde_json::to_vec(out).map_err(ser)?;
    match bytes.first() {
        Some(b'n') => Ok(Vec::new()),
        Some(b'[') => {
            let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&bytes).map_err(ser)?;
            Ok(items.into_iter().filter(|v| v.get() != "null").map(|v| Bytes::copy_from_slice(v.get().as_bytes())).collect())
        }
        _ => Ok(vec![Bytes::from(bytes)]),
    }
}

fn user_error<E: Display>(e: E) -> RecordError {
    RecordError { error_type: short_type_name::<E>(), message: e.to_string() }
}

/// A set of functions served as one sidecar.
#[derive(Clone)]
pub struct Runtime {
    name: String,
    functions: BTreeMap<String, (bool, Arc<dyn Function>)>,
    max_message: usize,
    /// Calls need the sidecar token once `MILLRACE_SIDECAR_TOKEN` is set (or `tokens` says so).
    tokens: millrace_proto::auth::Tokens,
    /// TLS when `MILLRACE_TLS_CERT` and `MILLRACE_TLS_KEY` are set (or `tls` says so).
    tls: millrace_proto::tls::ServerTls,
}

impl Runtime {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            functions: BTreeMap::new(),
            max_message: 64 << 20,
            tokens: millrace_proto::auth::Tokens::from_env(),
            tls: millrace_proto::tls::ServerTls::from_env(),
        }
    }

    fn add(mut self, name: &str, consumer: bool, f: impl Fn(&[u8]) -> Result<Vec<Bytes>, RecordError> + Send + Sync + 'static) -> Self {
        self.functions.insert(name.to_string(), (consumer, Arc::new(Typed(f))));
        self
    }

    /// A transform returning its output, an `Option` or a `Vec`.
    pub fn transform<I, O, F>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.add(name, false, move |input| encode(&f(decode(input)?)))
    }

    /// A transform that may fail: `Err(e)` sends the record to the dead letter queue with `e` as the error.
    pub fn try_transform<I, O, E, F>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Display,
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    {
        self.add(name, false, move |input| encode(&f(decode(input)?).map_err(user_error)?))
    }

    /// A consumer: called for each record, produces nothing.
    pub fn consumer<I, F>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned,
        F: Fn(I) + Send + Sync + 'static,
    {
        self.add(name, true, move |input| {
            f(decode(input)?);
            Ok(Vec::new())
        })
    }

    /// A consumer that may fail.
    pub fn try_consumer<I, E, F>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned,
        E: Display,
        F: Fn(I) -> Result<(), E> + Send + Sync + 'static,
    {
        self.add(name, true, move |input| {
            f(decode(input)?).map_err(user_error)?;
            Ok(Vec::new())
        })
    }

    /// The largest batch message the sidecar takes (64 MiB unless set); a worker's `--batch-max-bytes` must stay
    /// below it.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The tokens calls are checked against (by default those of the environment: `MILLRACE_SIDECAR_TOKEN`, and
    /// the other roles' to tell a wrong role from an unknown token).
    pub fn tokens(mut self, tokens: millrace_proto::auth::Tokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// The TLS the sidecar serves (by default the environment's: `MILLRACE_TLS_CERT`, `MILLRACE_TLS_KEY`,
    /// `MILLRACE_TLS_CLIENT_CA`).
    pub fn tls(mut self, tls: millrace_proto::tls::ServerTls) -> Self {
        self.tls = tls;
        self
    }

    /// The bare service, without the token check or TLS of `serve` and `serve_with_listener`: only for a server
    /// that authenticates calls itself.
    pub fn into_service(self) -> FunctionRuntimeServer<Self> {
        let max = self.max_message;
        FunctionRuntimeServer::new(self).max_decoding_message_size(max).max_encoding_message_size(64 << 20)
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve_with_listener(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.tokens.check_form().map_err(|e| anyhow::anyhow!(e))?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls.tonic()? {
            builder = builder.tls_config(tls)?;
        }
        let auth = millrace_proto::auth::grpc_layer(self.tokens.clone(), millrace_proto::auth::sidecar_rules);
        builder
            .layer(auth)
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }

    /// Serves on `addr` until Ctrl-C.
    pub async fn serve(self, addr: &str) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!(addr, functions = ?self.functions.keys().collect::<Vec<_>>(), "sidecar serving");
        self.serve_with_listener(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    }
}

type ProcessStream = Pin<Box<dyn futures::Stream<Item = Result<ProcessResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FunctionRuntime for Runtime {
    async fn describe(&self, _: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            functions: self.functions.iter().map(|(name, (consumer, _))| FunctionInfo { name: name.clone(), consumer: *consumer }).collect(),
            runtime: format!("millrace-sdk-rust {} ({})", env!("CARGO_PKG_VERSION"), self.name),
            // One process, with threads: the address the worker called is the only one.
            endpoints: Vec::new(),
        }))
    }

    type ProcessStream = ProcessStream;

    async fn process(&self, req: Request<Streaming<ProcessRequest>>) -> Result<Response<ProcessStream>, Status> {
        let mut inbound = req.into_inner();
        let name = match inbound.message().await? {
            Some(ProcessRequest { message: Some(process_request::Message::Open(o)) }) => o.function,
            _ => return Err(Status::invalid_argument("the first message of a Process stream must be `open`")),
        };
        let Some((_, f)) = self.functions.get(&name).cloned() else {
            let known: Vec<&String> = self.functions.keys().collect();
            return Err(Status::not_found(format!("no function `{name}` here; this sidecar hosts {known:?}")));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut lapsed = false;
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(ProcessRequest { message: Some(process_request::Message::Batch(b)) })) => b,
                    Ok(None) => return,
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("only `batch` messages may follow `open`"))).await;
                        return;
                    }
                    Err(e) => {
                        // Tell the worker why (a batch over the message limit, say): it decides what to retry.
                        tracing::debug!(error = %e, "process stream ended");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                // A batch the worker no longer wants (its call timed out, its lease runs short) is not run, nor
                // any later one of the stream: it would run before the expired one is sent again.
                lapsed = lapsed || expired(batch.deadline_unix_ms);
                if lapsed {
                    let msg = ProcessResponse { result: Some(BatchResult { batch_id: batch.batch_id, expired: true, ..Default::default() }) };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let f = f.clone();
                // User code may be slow: keep it off the async threads.
                let results = tokio::task::spawn_blocking(move || {
                    let results: Vec<RecordResult> = batch.records.iter().map(|r| f.call(&r.value)).collect();
                    BatchResult { batch_id: batch.batch_id, results, ..Default::default() }
                })
                .await;
                let msg = results.map(|r| ProcessResponse { result: Some(r) }).map_err(|e| Status::internal(e.to_string()));
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether a batch's deadline (wall-clock milliseconds, 0 = none) has passed.
fn expired(deadline_unix_ms: i64) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    deadline_unix_ms > 0 && now > deadline_unix_ms as u128
}

pub use millrace_proto::endpoints::{AddressError, Addresses, Failover};

/// A client of the control plane, to apply plans or read what runs from Rust, over one address or several
/// separated by commas as `MILLRACE_CONTROL_PLANE` takes them (`10.0.0.1:50051,http://10.0.0.2:50051`): each call
/// goes to the address that last answered, and to the next one when it cannot connect, does not connect within
/// 2 s or answers UNAVAILABLE. Sends `MILLRACE_ADMIN_TOKEN` when set, and speaks TLS to `https://` addresses
/// (verified with `MILLRACE_TLS_CA`, else the system's roots). Connects on first use; call it within a tokio
/// runtime.
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// let list = std::env::var("MILLRACE_CONTROL_PLANE").unwrap_or_else(|_| "127.0.0.1:50051".into());
/// let mut cp = millrace_sdk::control_plane(&list)?;
/// let workers = cp.list_workers(millrace_proto::v1::ListWorkersRequest {}).await?.into_inner().workers;
/// # Ok(()) }
/// ```
pub fn control_plane(addresses: &str) -> anyhow::Result<ControlPlaneClient<Failover>> {
    let tls = millrace_proto::tls::ClientTls::from_env().load()?;
    let token = millrace_proto::auth::Tokens::from_env().admin_token;
    Ok(ControlPlaneClient::new(Failover::new(&Addresses::parse(addresses)?, &tls, |e| e).token(token.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct In {
        v: i64,
    }

    fn ok(r: RecordResult) -> Vec<String> {
        match r.result.unwrap() {
            record_result::Result::Ok(o) => o.values.into_iter().map(|v| String::from_utf8(v.to_vec()).unwrap()).collect(),
            record_result::Result::Error(e) => panic!("{e:?}"),
        }
    }

    fn err(r: RecordResult) -> RecordError {
        match r.result.unwrap() {
            record_result::Result::Error(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_control_plane_client_takes_a_list_and_names_a_bad_address() {
        let e = control_plane("127.0.0.1:50051,cp.example").unwrap_err().to_string();
        assert!(e.contains("\"cp.example\" has no port") && e.contains("write host:port"), "{e}");
        let dead = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (a, b) = (dead(), dead());
        let mut cp = control_plane(&format!("{a}, http://{b}")).unwrap();
        let s = cp.list_workers(millrace_proto::v1::ListWorkersRequest {}).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains(&a) && s.message().contains(&b), "{}", s.message());
    }

    #[test]
    fn a_batch_past_its_deadline_is_not_run() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!(expired(1) && expired(now - 1));
        assert!(!expired(0), "0 means no deadline");
        assert!(!expired(now + 10_000));
    }

    #[test]
    fn outputs_follow_the_shape_of_the_return_value() {
        let rt = Runtime::new("t")
            .transform("one", |i: In| serde_json::json!({ "v": i.v * 2 }))
            .transform("maybe", |i: In| (i.v > 0).then_some(i.v))
            .transform("many", |i: In| vec![i.v; i.v as usize]);
        let call = |f: &str, input: &str| rt.functions[f].1.call(input.as_bytes());
        assert_eq!(ok(call("one", r#"{"v": 2}"#)), vec![r#"{"v":4}"#]);
        assert_eq!(ok(call("maybe", r#"{"v": -1}"#)), Vec::<String>::new());
        assert_eq!(ok(call("maybe", r#"{"v": 3}"#)), vec!["3"]);
        assert_eq!(ok(call("many", r#"{"v": 3}"#)), vec!["3", "3", "3"]);
    }

    #[tokio::test]
    async fn describe_lists_every_function_and_its_kind() {
        let rt = Runtime::new("t").transform("double", |i: In| i.v * 2).consumer("sink", |_: In| {});
        let d = rt.describe(Request::new(DescribeRequest {})).await.unwrap().into_inner();
        let got: Vec<(String, bool)> = d.functions.into_iter().map(|f| (f.name, f.consumer)).collect();
        assert_eq!(got, vec![("double".to_string(), false), ("sink".to_string(), true)]);
        assert!(d.runtime.contains("millrace-sdk-rust"));
    }

    #[derive(Debug)]
    struct Negative;
    impl Display for Negative {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("negative value")
        }
    }

    #[test]
    fn errors_panics_and_bad_input_become_record_errors() {
        let rt = Runtime::new("t")
            .try_transform("checked", |i: In| if i.v < 0 { Err(Negative) } else { Ok(i.v) })
            .transform("panics", |_: In| -> i64 { panic!("boom") });
        let call = |f: &str, input: &str| rt.functions[f].1.call(input.as_bytes());
        let e = err(call("checked", r#"{"v": -1}"#));
        assert_eq!((e.error_type.as_str(), e.message.as_str()), ("Negative", "negative value"));
        assert_eq!(err(call("panics", r#"{"v": 1}"#)).error_type, "panic");
        let e = err(call("checked", "not json"));
        assert_eq!(e.error_type, "DeserializationError");
    }
}
