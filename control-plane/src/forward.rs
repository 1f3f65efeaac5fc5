//! Admin writes (applies, deletes) are made by the leader, which alone runs the rounds they end with. Any other
//! control plane forwards them to the leader's advertised address, within a bounded time, and passes its answer
//! back; when no control plane leads (at start-up, during a failover) it waits a little for one, then answers
//! UNAVAILABLE naming the last leader and saying to try again.

use crate::error::Error;
use crate::leadership::Leadership;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::*;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Set on a forwarded request: its receiver makes the write or refuses it, and never forwards it again.
pub const FORWARDED: &str = "x-millrace-forwarded";

/// How long connecting to the leader may take: a leader that does not accept a connection in this time is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a write is made.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// This control plane leads.
    Here,
    /// The leader, at this address.
    Leader(String),
}

/// Where a write goes: here while this control plane leads, else to the live leader (unless the write was already
/// forwarded once). While none leads, waits up to `wait` for one.
pub async fn route(leadership: &Leadership, pool: &sqlx::PgPool, forwarded: bool, wait: Duration) -> Result<Route, Error> {
    let deadline = Instant::now() + wait;
    loop {
        if leadership.leading() {
            return Ok(Route::Here);
        }
        let leader = leadership.leader(pool).await?;
        // A lease that is still this process's own in Postgres (its own view lapsed first) comes back at once.
        if leader.live && leader.holder != leadership.holder() && !leader.address.is_empty() {
            if forwarded {
                return Err(Error::NotLeader(format!(
                    "this control plane ({}) was sent a write as the leader, but the leader is now {} (term {})",
                    leadership.address(),
                    leader.address,
                    leader.term
                )));
            }
            return Ok(Route::Leader(leader.address));
        }
        if Instant::now() >= deadline {
            let last = match leader.address.as_str() {
                "" => "none has led yet".to_string(),
                a => format!("the last leader was {a}, term {}", leader.term),
            };
            return Err(Error::NotLeader(format!("no control plane leads now ({last})")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn url(address: &str) -> String {
    if address.contains("://") { address.to_string() } else { format!("http://{address}") }
}

/// How a write is passed on: over TLS when the leader's address is `https://`, with the caller's own token (the
/// leader checks it again).
#[derive(Clone, Debug, Default)]
pub struct Via {
    pub tls: millrace_proto::tls::Client,
    pub authorization: Option<MetadataValue<Ascii>>,
    /// This control plane serves TLS: a token it was sent over TLS never goes on over plaintext.
    pub serving_tls: bool,
}

impl Via {
    /// `self` carrying the token of `req`.
    pub fn with_caller<T>(&self, req: &Request<T>) -> Via {
        let authorization = req.metadata().get("authorization").cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Via { tls: self.tls.clone(), authorization, serving_tls: self.serving_tls }
    }
}

async fn client(address: &str, timeout: Duration, via: &Via) -> Result<ControlPlaneClient<Channel>, Status> {
    if via.serving_tls && !url(address).starts_with("https://") {
        return Err(Status::failed_precondition(format!(
            "this control plane serves TLS but the leader advertises the plaintext address {address}: give every control plane the same --tls-cert and --tls-key"
        )));
    }
    let endpoint = via
        .tls
        .endpoint(&url(address))
        .map_err(|e| Status::unavailable(format!("the leader advertises {address:?}, which is not an address ({e}): set its --advertise")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!("the leader at {address} does not answer ({e}): try again in a few seconds (another control plane takes office if it is gone)"))
    })?;
    Ok(ControlPlaneClient::new(channel))
}

fn forwarded<T>(message: T, via: &Via) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(FORWARDED, MetadataValue::from_static("1"));
    if let Some(a) = &via.authorization {
        r.metadata_mut().insert("authorization", a.clone());
    }
    r
}

/// The leader's answer as this control plane gives it: the leader's own refusals as they are; a leader that went
/// away mid-call (its answer a transport error) named, with what to do.
fn answered(address: &str, s: Status) -> Status {
    match s.code() {
        // UNKNOWN, not UNAVAILABLE: a client with several addresses repeats an UNAVAILABLE write elsewhere, and
        // this one may have been made.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown if !s.message().contains("try again") => Status::new(
            Code::Unknown,
            format!("forwarded to the leader at {address}, which did not answer ({}): the write may or may not have been made; try again in a few seconds", s.message()),
        ),
        _ => s,
    }
}

pub async fn apply(address: &str, req: ApplyPlanRequest, timeout: Duration, via: &Via) -> Result<ApplyPlanResponse, Status> {
    tracing::info!(leader = address, client = req.client, "forwarding an apply to the leader");
    let mut c = client(address, timeout, via).await?;
    c.apply_plan(forwarded(req, via)).await.map(|r| r.into_inner()).map_err(|s| answered(address, s))
}

pub async fn delete(address: &str, req: DeleteResourceRequest, timeout: Duration, via: &Via) -> Result<DeleteResourceResponse, Status> {
    tracing::info!(leader = address, client = req.client, "forwarding a delete to the leader");
    let mut c = client(address, timeout, via).await?;
    c.delete_resource(forwarded(req, via)).await.map(|r| r.into_inner()).map_err(|s| answered(address, s))
}
