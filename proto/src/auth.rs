//! Tokens per role. Every Millrace listener takes `authorization: Bearer <token>` and knows which roles may make
//! each call: `admin` (apply, delete, replay; reads), `worker` (registration and the coordinator protocol; reads),
//! `ingest` (the ingest API; catalog reads) and `sidecar` (the worker's calls to a sidecar). A role whose token is
//! not set is open, so local development needs none. A missing or unknown token is refused as unauthenticated (gRPC
//! UNAUTHENTICATED, HTTP 401); one the listener knows as another role's (its variable is set there too) as not
//! permitted (PERMISSION_DENIED, 403). Tokens are compared in constant time (`subtle`) and never printed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::codegen::http;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Worker,
    Ingest,
    Sidecar,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Worker, Role::Ingest, Role::Sidecar];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Ingest => "ingest",
            Role::Sidecar => "sidecar",
        }
    }

    /// The environment variable (and, lower-cased with dashes, the flag) that holds the role's token.
    pub fn env(self) -> &'static str {
        match self {
            Role::Admin => "MILLRACE_ADMIN_TOKEN",
            Role::Worker => "MILLRACE_WORKER_TOKEN",
            Role::Ingest => "MILLRACE_INGEST_TOKEN",
            Role::Sidecar => "MILLRACE_SIDECAR_TOKEN",
        }
    }
}

/// A secret (token, password): its value is never formatted, so a `{:?}` of a config holding one shows nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Bearer <token>`, as a header value marked sensitive (HTTP/2 never indexes it, and it is not printed).
    pub fn bearer(&self) -> Option<http::HeaderValue> {
        let mut v = http::HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(unset)" } else { "Secret(***)" })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    /// Never fails: clap would print a refused value, and this one is a secret. Surrounding whitespace (a newline
    /// from a secret file) is dropped; what cannot be sent in a header is refused by `Tokens::check_form`, by name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_string()))
    }
}

/// The tokens a process knows, each optional: from `--admin-token` and the rest, or their environment variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Tokens {
    /// Token of the admin role (apply, delete, replay). Set: the control plane refuses those calls without it.
    #[arg(long, env = "MILLRACE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Token of the worker role (registration and the coordinator protocol).
    #[arg(long, env = "MILLRACE_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<Secret>,
    /// Token of the ingest role (POST /ingest/<name>; catalog reads). `--ingest-api-key` is its former name.
    #[arg(long, alias = "ingest-api-key", env = "MILLRACE_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<Secret>,
    /// Token of the sidecar role (a worker's calls to its sidecars).
    #[arg(long, env = "MILLRACE_SIDECAR_TOKEN", hide_env_values = true)]
    pub sidecar_token: Option<Secret>,
}

/// Why a call was refused. Its text says what to send, never what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this call needs a token: send `authorization: Bearer <token>` with the {}", needs_text(.0))]
    Missing(Vec<Role>),
    #[error("the token sent is not one this listener knows: send the {}", needs_text(.0))]
    Unknown(Vec<Role>),
    #[error("the {} token may not make this call: send the {}", .presented.name(), needs_text(.needs))]
    WrongRole { presented: Role, needs: Vec<Role> },
}

fn needs_text(roles: &[Role]) -> String {
    roles.iter().map(|r| format!("{} token ({})", r.name(), r.env())).collect::<Vec<_>>().join(" or the ")
}

impl Refusal {
    /// Missing or unknown (401, UNAUTHENTICATED) rather than a known token of another role (403, PERMISSION_DENIED).
    pub fn unauthenticated(&self) -> bool {
        !matches!(self, Refusal::WrongRole { .. })
    }

    pub fn to_status(&self) -> tonic::Status {
        if self.unauthenticated() {
            tonic::Status::unauthenticated(self.to_string())
        } else {
            tonic::Status::permission_denied(self.to_string())
        }
    }
}

impl Tokens {
    /// The tokens set in the environment (for a library that parses no flags, like the Rust SDK's sidecar).
    pub fn from_env() -> Self {
        let var = |r: Role| std::env::var(r.env()).ok().filter(|v| !v.is_empty()).map(Secret::new);
        Self { admin_token: var(Role::Admin), worker_token: var(Role::Worker), ingest_token: var(Role::Ingest), sidecar_token: var(Role::Sidecar) }
    }

    pub fn get(&self, role: Role) -> Option<&Secret> {
        match role {
            Role::Admin => self.admin_token.as_ref(),
            Role::Worker => self.worker_token.as_ref(),
            Role::Ingest => self.ingest_token.as_ref(),
            Role::Sidecar => self.sidecar_token.as_ref(),
        }
        .filter(|s| !s.is_empty())
    }

    /// Whether a call open to `allowed` needs a token: as soon as any of those roles has one (fail closed: with
    /// only the admin token set, reads need it too, not no token at all).
    pub fn required(&self, allowed: &[Role]) -> bool {
        allowed.iter().any(|r| self.get(*r).is_some())
    }

    /// Refuses, naming the variable and never the value, a token that cannot travel in a header.
    pub fn check_form(&self) -> Result<(), String> {
        for role in Role::ALL {
            if self.get(role).is_some_and(|t| t.bearer().is_none() || t.expose().bytes().any(|b| !(0x21..0x7f).contains(&b))) {
                return Err(format!("{} holds a space or a control character: a token is printable ASCII without spaces", role.env()));
            }
        }
        Ok(())
    }

    /// The roles with a token here, for a log line at start ("admin, worker"; "none").
    pub fn summary(&self) -> String {
        let set: Vec<&str> = Role::ALL.iter().filter(|r| self.get(**r).is_some()).map(|r| r.name()).collect();
        if set.is_empty() { "none".into() } else { set.join(", ") }
    }

    /// Checks an `authorization` header against the roles a call is open to.
    pub fn check(&self, authorization: Option<&[u8]>, allowed: &[Role]) -> Result<(), Refusal> {
        if !self.required(allowed) {
            return Ok(());
        }
        let presented = authorization.and_then(bearer).ok_or_else(|| Refusal::Missing(allowed.to_vec()))?;
        // Every known token is compared, whatever matched first, so the time taken says nothing of which did.
        let mut matched: Vec<Role> = Vec::new();
        for role in Role::ALL {
            if let Some(t) = self.get(role) {
                if bool::from(t.expose().as_bytes().ct_eq(presented)) {
                    matched.push(role);
                }
            }
        }
        if matched.iter().any(|r| allowed.contains(r)) {
            return Ok(());
        }
        match matched.first() {
            Some(r) => Err(Refusal::WrongRole { presented: *r, needs: allowed.to_vec() }),
            None => Err(Refusal::Unknown(allowed.to_vec())),
        }
    }
}

/// The token of `Bearer <token>` (the scheme in any case).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Which roles may call a gRPC method (by its path, `/package.Service/Method`); `None`: open to all (health,
/// reflection).
pub type Rules = fn(&str) -> Option<&'static [Role]>;

/// A tower layer (tower-http's request validation) that checks each gRPC call's token against `rules`, answering
/// refusals as gRPC errors.
pub fn grpc_layer(tokens: Tokens, rules: Rules) -> tower_http::validate_request::ValidateRequestHeaderLayer<GrpcAuth> {
    tower_http::validate_request::ValidateRequestHeaderLayer::custom(GrpcAuth { tokens: Arc::new(tokens), rules })
}

#[derive(Clone)]
pub struct GrpcAuth {
    tokens: Arc<Tokens>,
    rules: Rules,
}

impl<B> tower_http::validate_request::ValidateRequest<B> for GrpcAuth {
    type ResponseBody = tonic::body::Body;

    fn validate(&mut self, request: &mut http::Request<B>) -> Result<(), http::Response<tonic::body::Body>> {
        let Some(allowed) = (self.rules)(request.uri().path()) else {
            return Ok(());
        };
        let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        self.tokens.check(header, allowed).map_err(|refusal| {
            // Debug: a caller without a token could otherwise fill the logs.
            tracing::debug!(path = request.uri().path(), refusal = %refusal, "call refused");
            refusal.to_status().into_http()
        })
    }
}

/// A tower layer that checks each HTTP request's token against `allowed`, answering refusals 401 (with
/// `WWW-Authenticate: Bearer`) or 403 and a JSON body `{"error": "..."}` saying what to send.
pub fn http_layer<ResBody>(tokens: Tokens, allowed: &'static [Role]) -> tower_http::validate_request::ValidateRequestHeaderLayer<HttpAuth<ResBody>> {
    tower_http::validate_request::ValidateRequestHeaderLayer::custom(HttpAuth { tokens: Arc::new(tokens), allowed, body: std::marker::PhantomData })
}

pub struct HttpAuth<ResBody> {
    tokens: Arc<Tokens>,
    allowed: &'static [Role],
    body: std::marker::PhantomData<fn() -> ResBody>,
}

impl<ResBody> Clone for HttpAuth<ResBody> {
    fn clone(&self) -> Self {
        Self { tokens: self.tokens.clone(), allowed: self.allowed, body: std::marker::PhantomData }
    }
}

impl<B, ResBody: From<String>> tower_http::validate_request::ValidateRequest<B> for HttpAuth<ResBody> {
    type ResponseBody = ResBody;

    fn validate(&mut self, request: &mut http::Request<B>) -> Result<(), http::Response<ResBody>> {
        let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        self.tokens.check(header, self.allowed).map_err(|refusal| {
            tracing::debug!(path = request.uri().path(), refusal = %refusal, "request refused");
            let (status, body) = http_refusal(&refusal);
            let mut resp = http::Response::new(ResBody::from(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            if refusal.unauthenticated() {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            resp
        })
    }
}

/// A refusal's HTTP status and JSON body: the one mapping of refusals to HTTP.
pub fn http_refusal(refusal: &Refusal) -> (http::StatusCode, String) {
    let status = if refusal.unauthenticated() { http::StatusCode::UNAUTHORIZED } else { http::StatusCode::FORBIDDEN };
    // The message holds only role and variable names: no escaping beyond quotes is needed, but do it properly.
    let text = refusal.to_string().replace('\\', "\\\\").replace('"', "\\\"");
    (status, format!("{{\"error\":\"{text}\"}}"))
}

/// Adds `authorization: Bearer <token>` to every request of a client (a tower layer over its channel).
#[derive(Clone)]
pub struct WithToken<S> {
    inner: S,
    header: Option<http::HeaderValue>,
}

impl<S> WithToken<S> {
    pub fn new(inner: S, token: Option<&Secret>) -> Self {
        Self { inner, header: token.filter(|t| !t.is_empty()).and_then(Secret::bearer) }
    }
}

impl<S, B> tower::Service<http::Request<B>> for WithToken<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(h) = &self.header {
            req.headers_mut().insert(http::header::AUTHORIZATION, h.clone());
        }
        self.inner.call(req)
    }
}

/// The roles that may make each call of the control plane's services. Health checks and reflection are open;
/// anything else not listed needs the admin token, so a service added later is not open by default.
pub fn control_plane_rules(path: &str) -> Option<&'static [Role]> {
    const ADMIN: &[Role] = &[Role::Admin];
    const WORKER: &[Role] = &[Role::Worker];
    const READ: &[Role] = &[Role::Admin, Role::Worker];
    const CATALOG: &[Role] = &[Role::Admin, Role::Worker, Role::Ingest];
    let (service, method) = path.strip_prefix('/').and_then(|p| p.split_once('/')).unwrap_or(("", ""));
    match service {
        "grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => None,
        "millrace.v1.WorkerCoordinator" => Some(WORKER),
        "millrace.v1.ControlPlane" => Some(match method {
            "ApplyPlan" | "DeleteResource" => ADMIN,
            "GetResource" | "ListResources" => CATALOG,
            "ListWorkers" | "GetStatus" | "ListApplies" => READ,
            _ => ADMIN,
        }),
        _ => Some(ADMIN),
    }
}

/// The roles that may call a sidecar.
pub fn sidecar_rules(path: &str) -> Option<&'static [Role]> {
    path.starts_with("/millrace.v1.FunctionRuntime/").then_some(&[Role::Sidecar][..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            admin_token: Some(Secret::new("adm")),
            worker_token: Some(Secret::new("wrk")),
            ingest_token: None,
            sidecar_token: Some(Secret::new("")),
        }
    }

    #[test]
    fn a_role_without_a_token_is_open_unless_another_role_of_the_call_has_one() {
        let t = tokens();
        assert_eq!(t.check(None, &[Role::Ingest]), Ok(()));
        assert_eq!(t.check(None, &[Role::Sidecar]), Ok(()), "an empty token is none");
        // Fail closed: with the admin token set, a call open to admin or ingest needs a token.
        assert_eq!(t.check(None, &[Role::Admin, Role::Ingest]), Err(Refusal::Missing(vec![Role::Admin, Role::Ingest])));
        assert_eq!(t.check(Some(b"Bearer adm"), &[Role::Admin, Role::Ingest]), Ok(()));
    }

    #[test]
    fn a_token_from_a_file_loses_its_newline_and_a_bad_one_is_named_not_shown() {
        assert_eq!("tok\n".parse::<Secret>().unwrap().expose(), "tok");
        let t = Tokens { worker_token: Some("a b".parse().unwrap()), ..Default::default() };
        let e = t.check_form().unwrap_err();
        assert!(e.contains("MILLRACE_WORKER_TOKEN") && !e.contains("a b"), "{e}");
        assert_eq!(tokens().check_form(), Ok(()));
        assert_eq!(tokens().summary(), "admin, worker");
    }

    #[test]
    fn refuses_missing_unknown_and_other_roles_tokens() {
        let t = tokens();
        assert_eq!(t.check(None, &[Role::Admin]), Err(Refusal::Missing(vec![Role::Admin])));
        assert_eq!(t.check(Some(b"Basic adm"), &[Role::Admin]), Err(Refusal::Missing(vec![Role::Admin])));
        assert_eq!(t.check(Some(b"Bearer nope"), &[Role::Admin]), Err(Refusal::Unknown(vec![Role::Admin])));
        assert_eq!(t.check(Some(b"Bearer ad"), &[Role::Admin]), Err(Refusal::Unknown(vec![Role::Admin])));
        assert_eq!(
            t.check(Some(b"Bearer wrk"), &[Role::Admin]),
            Err(Refusal::WrongRole { presented: Role::Worker, needs: vec![Role::Admin] })
        );
        assert_eq!(t.check(Some(b"bearer adm"), &[Role::Admin]), Ok(()));
        assert_eq!(t.check(Some(b"Bearer wrk"), &[Role::Admin, Role::Worker]), Ok(()));
    }

    #[test]
    fn refusals_never_repeat_the_token_sent() {
        let t = tokens();
        for sent in [&b"Bearer wrk"[..], b"Bearer s3cr3t-guess"] {
            let e = t.check(Some(sent), &[Role::Admin]).unwrap_err();
            let text = format!("{e} {e:?} {:?}", e.to_status());
            assert!(!text.contains("s3cr3t") && !text.contains("wrk"), "{text}");
            assert!(text.contains("MILLRACE_ADMIN_TOKEN"), "{text}");
        }
        assert_eq!(format!("{t:?}").matches("***").count(), 2);
        assert!(!format!("{t:?}").contains("adm\""));
    }

    #[test]
    fn every_control_plane_write_needs_the_admin_role() {
        assert_eq!(control_plane_rules("/millrace.v1.ControlPlane/ApplyPlan"), Some(&[Role::Admin][..]));
        assert_eq!(control_plane_rules("/millrace.v1.ControlPlane/DeleteResource"), Some(&[Role::Admin][..]));
        assert_eq!(control_plane_rules("/millrace.v1.WorkerCoordinator/ReportProgress"), Some(&[Role::Worker][..]));
        assert_eq!(control_plane_rules("/grpc.health.v1.Health/Check"), None);
        assert_eq!(control_plane_rules("/millrace.v1.ControlPlane/SomethingNew"), Some(&[Role::Admin][..]));
        assert_eq!(control_plane_rules("/another.Service/Call"), Some(&[Role::Admin][..]));
        assert_eq!(control_plane_rules("nonsense"), Some(&[Role::Admin][..]));
        assert_eq!(sidecar_rules("/millrace.v1.FunctionRuntime/Process"), Some(&[Role::Sidecar][..]));
    }
}
