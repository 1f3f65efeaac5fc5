//! Several control plane addresses behind one gRPC channel. Every client of the control plane (worker, CLI, SDK)
//! takes a comma-separated list (`10.0.0.1:50051,10.0.0.2:50051`, with or without `http://`); `Failover` tries the
//! addresses in order, sticks to the one that answers, and moves to the next on a transport error (refused, reset,
//! no connection within the connect timeout, no answer within the attempt timeout) or an UNAVAILABLE answer (a
//! replica that cannot serve the call now). It is a `tower::Service` over one lazy tonic `Channel` per address, so
//! every generated client takes it: `ControlPlaneClient::new(failover)`.
//!
//! A call is retried on the next address within the same call, so one dead control plane costs a client nothing
//! but a refused connection. Calls that must not run twice (`NOT_REPEATABLE`: registering, applying, deleting)
//! are retried only where the address surely did not act on them: no connection could be made, or it answered
//! UNAVAILABLE (control planes answer UNAVAILABLE only for what they did not do). After silence or a broken
//! connection they fail (UNAVAILABLE, saying so), and the caller's next call goes to the next address. (A worker
//! also names each registration, so that its own retry of one made already is answered with the same worker.) The request's message is kept for that (control plane calls send one message: unary
//! or server streaming). A call whose own deadline (`tonic::Request::set_timeout`) passes is not retried (its
//! caller's time is spent), but the next call goes to the next address.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How to write a list of addresses, for error messages.
const HOW: &str = "write host:port, http://host:port or https://host:port (TLS), several separated by commas (for example 127.0.0.1:50051,10.0.0.2:50051)";

/// Calls retried on another address only when the first surely did not get them.
pub const NOT_REPEATABLE: &[&str] = &[
    "/millrace.v1.WorkerCoordinator/Register",
    "/millrace.v1.ControlPlane/ApplyPlan",
    "/millrace.v1.ControlPlane/DeleteResource",
];

/// Connect timeout of each address unless the caller sets another: a host that does not answer (rather than
/// refusing) costs this much once, then the next address is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no control plane address given: {HOW}")]
    Empty,
    #[error("control plane address {address:?} {why}: {HOW}")]
    Invalid { address: String, why: String },
}

/// A non-empty list of control plane addresses, each normalised to `http://host:port` (or `https://host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(Vec<String>);

impl Addresses {
    /// Parses `a,b,c`: each `host:port`, `http://host:port`, `grpc://host:port` or `https://host:port` (TLS); blanks
    /// around commas and empty items are ignored.
    pub fn parse(list: &str) -> Result<Self, AddressError> {
        let parsed = list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(one).collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(AddressError::Empty);
        }
        Ok(Self(parsed))
    }

    /// Every address, as `http://host:port` or `https://host:port`.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// The first address, for a process that runs one control plane itself (`millrace dev`).
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// Every address as `host:port` (the form Python's grpc takes), comma-separated.
    pub fn host_ports(&self) -> String {
        self.0.iter().map(|u| u.trim_start_matches("http://").trim_start_matches("https://")).collect::<Vec<_>>().join(",")
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl FromStr for Addresses {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn one(address: &str) -> Result<String, AddressError> {
    let bad = |why: &str| AddressError::Invalid { address: address.to_string(), why: why.to_string() };
    let (scheme, rest) = match address.split_once("://") {
        None => ("http", address),
        Some(("http" | "grpc", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((scheme, _)) => return Err(bad(&format!("has the scheme {scheme:?}"))),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(bad("has a path"));
    }
    match rest.rsplit_once(':') {
        None | Some((_, "")) => return Err(bad("has no port")),
        Some((_, port)) if !port.bytes().all(|b| b.is_ascii_digit()) => return Err(bad("is not a host and port")),
        _ => {}
    }
    let uri: http::Uri = format!("http://{rest}").parse().map_err(|e| bad(&format!("is not a host and port ({e})")))?;
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("has a user name"));
    }
    match authority.port_u16() {
        Some(0) | None => Err(bad("has no port")),
        Some(_) => Ok(format!("{scheme}://{authority}")),
    }
}

/// One lazy channel per address, tried in order from the one that last answered.
#[derive(Clone)]
pub struct Failover {
    inner: Arc<Inner>,
    /// `Bearer <token>` sent with every call, when the caller has a token.
    authorization: Option<http::HeaderValue>,
    /// Longest wait for one address's answer (its headers: a stream's opening) before the next is tried.
    attempt_timeout: Option<Duration>,
}

struct Inner {
    addresses: Addresses,
    channels: Vec<Channel>,
    /// The address calls go to first: the last one that answered.
    current: AtomicUsize,
}

impl Failover {
    /// Channels to every address, connected on first use, each with `CONNECT_TIMEOUT` and then `configure`
    /// (keepalive, message sizes: anything tonic's `Endpoint` sets); `https://` addresses speak TLS as `tls` says.
    /// Needs a tokio runtime.
    pub fn new(addresses: &Addresses, tls: &crate::tls::Client, configure: impl Fn(Endpoint) -> Endpoint) -> Self {
        let channels = addresses
            .urls()
            .iter()
            .map(|u| configure(tls.endpoint(u).expect("checked by Addresses::parse").connect_timeout(CONNECT_TIMEOUT)).connect_lazy())
            .collect();
        Self {
            inner: Arc::new(Inner { addresses: addresses.clone(), channels, current: AtomicUsize::new(0) }),
            attempt_timeout: None,
            authorization: None,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call (none when `token` is `None` or empty).
    pub fn token(mut self, token: Option<&crate::auth::Secret>) -> Self {
        self.authorization = token.filter(|t| !t.is_empty()).and_then(crate::auth::Secret::bearer);
        self
    }

    /// Gives each address at most `d` to answer a call (to send its response headers: for a server stream, to
    /// open it) before the call is tried on the next address. Without it an address that accepts connections but
    /// never answers holds a call until the call's own deadline. Set it only where every call answers quickly
    /// (an apply may take long).
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    pub fn addresses(&self) -> &Addresses {
        &self.inner.addresses
    }

    /// The address calls go to first now.
    pub fn current(&self) -> &str {
        &self.inner.addresses.urls()[self.inner.current.load(Ordering::SeqCst)]
    }
}

impl fmt::Debug for Failover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover").field("addresses", &self.inner.addresses.urls()).field("current", &self.current()).finish()
    }
}

impl tower::Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for its own channel to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(h) = &self.authorization {
            req.headers_mut().insert(http::header::AUTHORIZATION, h.clone());
        }
        let (inner, attempt_timeout) = (self.inner.clone(), self.attempt_timeout);
        Box::pin(async move { inner.call(req, attempt_timeout).await })
    }
}

/// Why one address did not serve a call.
enum Miss {
    /// It answered UNAVAILABLE (or a proxy's 502/503/504): kept, as its message may say where to go.
    Unavailable(http::Response<Body>),
    Failed(String),
}

impl Inner {
    async fn call(&self, req: http::Request<Body>, attempt_timeout: Option<Duration>) -> Result<http::Response<Body>, BoxError> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        // Control plane calls send one message; kept whole so that the next address can be sent the same.
        let message = body.collect().await.map_err(|e| Box::new(e) as BoxError)?.to_bytes();
        let n = self.channels.len();
        let start = self.current.load(Ordering::SeqCst);
        let repeatable = !NOT_REPEATABLE.contains(&parts.uri.path());
        let mut misses: Vec<(usize, Miss)> = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let attempt = http::Request::from_parts(parts.clone(), Body::new(http_body_util::Full::new(message.clone())));
            let sent = async { self.channels[i].clone().oneshot(attempt).await.map_err(BoxError::from) };
            let result = match attempt_timeout {
                Some(d) => tokio::time::timeout(d, sent).await.unwrap_or_else(|_| Err(format!("no answer within {d:?}").into())),
                None => sent.await,
            };
            match result {
                Ok(resp) if !unavailable(&resp) => {
                    self.answered(i);
                    return Ok(resp);
                }
                // Moved on at once, not when another address answers: a caller that gives up meanwhile (its own
                // timeout) sends its next call to the next address.
                Ok(resp) => {
                    self.missed(i, "answered UNAVAILABLE");
                    misses.push((i, Miss::Unavailable(resp)));
                }
                // The call's own deadline passed: its caller has no time for another address.
                Err(e) if caused_by::<tonic::TimeoutExpired>(&*e) => {
                    self.missed(i, "no answer within the call's deadline");
                    return Err(e);
                }
                // It may have acted on the call: not repeated elsewhere.
                Err(e) if !repeatable && !caused_by::<tonic::ConnectError>(&*e) => {
                    let why = chain(&*e);
                    self.missed(i, &why);
                    return Err(Box::new(tonic::Status::unavailable(format!(
                        "{} did not answer ({why}) and may have made the call, so it was not repeated on another address: \
                         check whether it took effect, then try again",
                        self.addresses.urls()[i]
                    ))));
                }
                Err(e) => {
                    let why = chain(&*e);
                    self.missed(i, &why);
                    misses.push((i, Miss::Failed(why)));
                }
            }
        }
        let mut summary = Vec::new();
        let mut answered = None;
        for (i, miss) in misses {
            match miss {
                Miss::Unavailable(resp) => {
                    summary.push(format!("{} answered UNAVAILABLE", self.addresses.urls()[i]));
                    answered = Some(resp);
                }
                Miss::Failed(why) => summary.push(format!("{}: {why}", self.addresses.urls()[i])),
            }
        }
        tracing::debug!(tried = summary.join("; "), "no control plane address served the call");
        // A replica's own UNAVAILABLE (it may name the leader) says more than a summary would.
        match answered {
            Some(resp) => Ok(resp),
            None => Err(Box::new(tonic::Status::unavailable(format!("no control plane answered ({})", summary.join("; "))))),
        }
    }

    /// Address `i` answered: calls go there from now on.
    fn answered(&self, i: usize) {
        self.current.store(i, Ordering::SeqCst);
    }

    /// Address `i` did not answer: calls go to the next one (unless another call already moved on).
    fn missed(&self, i: usize, why: &str) {
        let next = (i + 1) % self.channels.len();
        if next != i && self.current.compare_exchange(i, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            let urls = self.addresses.urls();
            tracing::info!(from = urls[i], to = urls[next], error = why, "control plane address did not serve a call: moving to the next");
        }
    }
}

/// An answer that says "not here, not now": gRPC UNAVAILABLE in the headers (a trailers-only answer, as errors
/// are sent), or a proxy's 502, 503 or 504.
fn unavailable(resp: &http::Response<Body>) -> bool {
    let status = resp.status().as_u16();
    matches!(status, 502..=504) || resp.headers().get("grpc-status").is_some_and(|s| s.as_bytes() == b"14")
}

fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// An error with its causes, each once ("transport error: tcp connect error: Connection refused (os error 111)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
