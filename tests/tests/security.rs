//! Tokens per role and TLS on every listener, with real processes: two control planes, a worker and a sidecar, all
//! serving TLS that asks for client certificates, all with the four tokens. Every listener refuses a missing or
//! unknown token as unauthenticated and another role's as not permitted; a worker id read from ListWorkers moves
//! nothing; records still flow end to end; and no token, password or connection string reaches a log line or an
//! answer.

use millrace_proto::auth::Secret;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::function_runtime_client::FunctionRuntimeClient;
use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::*;
use millrace_tests::certs::Certs;
use millrace_tests::dataplane::*;
use millrace_tests::replicas::{Replica, Secure};
use millrace_tests::*;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const ADMIN: &str = "adm1n-t0ken-7f3a9c";
const WORKER: &str = "w0rker-t0ken-51be22";
const INGEST: &str = "1ngest-t0ken-c0ffee";
const SIDECAR: &str = "s1decar-t0ken-9d8e7f";
const PASSWORD: &str = "pg-pa55word-e4d1";

/// The flags of the tokens a process is given: only those it checks or sends (docs/deploy.md).
fn token_flags(roles: &[(&str, &str)]) -> Vec<String> {
    roles.iter().flat_map(|(f, v)| [f.to_string(), v.to_string()]).collect()
}

/// The control plane checks admin, worker and ingest (catalog reads).
const CONTROL_PLANE_TOKENS: &[(&str, &str)] = &[("--admin-token", ADMIN), ("--worker-token", WORKER), ("--ingest-token", INGEST)];
/// The worker checks ingest and sends worker and sidecar.
const WORKER_TOKENS: &[(&str, &str)] = &[("--worker-token", WORKER), ("--ingest-token", INGEST), ("--sidecar-token", SIDECAR)];

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn channel(tls: &millrace_proto::tls::Client, url: &str) -> Result<tonic::transport::Channel, String> {
    let endpoint = tls.endpoint(url).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// The code of a ListResources call made with `token`, or the transport failure.
async fn list_code(tls: &millrace_proto::tls::Client, url: &str, token: Option<&str>) -> Result<Code, String> {
    let mut c = ControlPlaneClient::new(channel(tls, url).await?);
    Ok(match c.list_resources(with_token(ListResourcesRequest::default(), token)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    })
}

/// An HTTPS POST with the test's client certificate (or none); status, `www-authenticate` and body.
async fn https_post(certs: &Certs, with_certificate: bool, addr: &str, path: &str, token: Option<&str>, body: &str) -> Result<(u16, Option<String>, String), String> {
    use http_body_util::BodyExt;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(certs.client(with_certificate).rustls().as_ref().clone())
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let mut req = hyper::Request::post(format!("https://{addr}{path}")).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(http_body_util::Full::new(bytes_of(body))).unwrap();
    let answer = tokio::time::timeout(WAIT, client.request(req)).await.map_err(|_| "no answer in time".to_string())?.map_err(|e| format!("{e:?}"))?;
    let status = answer.status().as_u16();
    let challenge = answer.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let body = answer.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, challenge, String::from_utf8_lossy(&body).into_owned()))
}

fn bytes_of(s: &str) -> hyper::body::Bytes {
    hyper::body::Bytes::from(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_listener_wants_its_roles_token_over_tls_and_no_secret_is_logged() {
    let env = TestEnv::new();
    let certs = Certs::new();
    let tls = certs.client(true);
    // Postgres trusts local connections, so the password is never checked, but it is in the URL each process has.
    let database_url = env.database_url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    assert_ne!(database_url, env.database_url, "the test's Postgres URL has no user to give a password: {}", env.database_url);
    let secure = Secure { tls: tls.clone(), admin_token: Secret::new(ADMIN), database_url: database_url.clone() };
    let mut flags: Vec<String> = ["--lease-ms", TEST_LEASE_MS].iter().map(|s| s.to_string()).collect();
    flags.extend(token_flags(CONTROL_PLANE_TOKENS));
    flags.extend(certs.server_flags());
    flags.extend(certs.client_flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Replica::start_secure(&env, "secure-a", &flags, secure.clone()).await;
    a.wait_to_lead(Duration::from_secs(20)).await;
    let b = Replica::start_secure(&env, "secure-b", &flags, secure.clone()).await;
    let mut answers: Vec<String> = Vec::new();

    // TLS: no plaintext, no unknown server, no client without a certificate.
    assert!(list_code(&Default::default(), &format!("http://{}", a.listen), Some(ADMIN)).await.map_or(true, |c| c != Code::Ok), "plaintext was served");
    let other = millrace_proto::tls::ClientTls { tls_ca: Some(certs.other_ca.clone()), ..Default::default() }.load().unwrap();
    assert!(list_code(&other, &a.url(), Some(ADMIN)).await.map_or(true, |c| c != Code::Ok), "a client trusting another CA accepted the server");
    assert!(list_code(&certs.client(false), &a.url(), Some(ADMIN)).await.map_or(true, |c| c != Code::Ok), "a client without a certificate was served");

    // Tokens on the control plane: reads, writes and the coordinator each want their roles.
    for (token, want) in [(None, Code::Unauthenticated), (Some("wrong"), Code::Unauthenticated), (Some(SIDECAR), Code::Unauthenticated), (Some(ADMIN), Code::Ok), (Some(WORKER), Code::Ok), (Some(INGEST), Code::Ok)] {
        assert_eq!(list_code(&tls, &a.url(), token).await, Ok(want), "ListResources with {token:?}");
    }
    let mut plan = single_plan(1, "double_value");
    plan.ingest_apis.push(IngestApi { name: "src".into(), destination: Some(rref("src")), ..Default::default() });
    let mut cp = ControlPlaneClient::new(channel(&tls, &a.url()).await.unwrap());
    for (token, want) in [(None, Code::Unauthenticated), (Some("wrong"), Code::Unauthenticated), (Some(WORKER), Code::PermissionDenied), (Some(INGEST), Code::PermissionDenied)] {
        let s = cp.apply_plan(with_token(ApplyPlanRequest { plan: Some(plan.clone()), ..Default::default() }, token)).await.unwrap_err();
        assert_eq!(s.code(), want, "ApplyPlan with {token:?}: {s:?}");
        answers.push(s.message().to_string());
    }
    let mut coord = WorkerCoordinatorClient::new(channel(&tls, &a.url()).await.unwrap());
    let s = coord.register(with_token(RegisterRequest { name: "intruder".into(), ..Default::default() }, Some(ADMIN))).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("MILLRACE_WORKER_TOKEN"), "the refusal does not say what to send: {}", s.message());
    answers.push(s.message().to_string());

    // Applied through the follower: forwarded to the leader over TLS, with the caller's token checked again there.
    assert!(!b.leads().await, "the second control plane leads");
    let mut follower = ControlPlaneClient::new(channel(&tls, &b.url()).await.unwrap());
    follower.apply_plan(with_token(ApplyPlanRequest { plan: Some(plan.clone()), ..Default::default() }, Some(ADMIN))).await.expect("an apply forwarded over TLS");

    // The CLI: https addresses, the CA and a client certificate, the admin token from its variable.
    let cli = |token: Option<&str>| {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new(exe.parent().unwrap().parent().unwrap().join("millrace"));
        cmd.args(["ls", "--control-plane", &format!("{},{}", b.url(), a.url())]).args(certs.client_flags()).env_remove("MILLRACE_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("MILLRACE_ADMIN_TOKEN", t);
        }
        let out = cmd.output().expect("run millrace");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, listed, _) = cli(Some(ADMIN));
    assert!(ok && listed.contains("src_to_out"), "millrace ls over TLS with the admin token: {listed}");
    let (ok, _, refused) = cli(None);
    assert!(!ok && refused.contains("MILLRACE_ADMIN_TOKEN"), "millrace ls without a token: {refused}");
    answers.push(refused);

    // A sidecar (the Rust SDK's) with TLS and the tokens, and a worker calling everything over TLS.
    let sidecar_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar_url = format!("https://{}", sidecar_listener.local_addr().unwrap());
    let sidecar_tls = millrace_proto::tls::ServerTls {
        tls_cert: Some(certs.server_cert.clone()),
        tls_key: Some(certs.server_key.clone()),
        tls_client_ca: Some(certs.ca.clone()),
    };
    // Like the Python sidecar, it keeps the ingest token (a function may send()): another role's token here.
    let sidecar_tokens = millrace_proto::auth::Tokens { sidecar_token: Some(Secret::new(SIDECAR)), ingest_token: Some(Secret::new(INGEST)), ..Default::default() };
    let rt = runtime(Arc::new(AtomicU64::new(0))).tls(sidecar_tls).tokens(sidecar_tokens);
    let sidecar = tokio::spawn(rt.serve_with_listener(sidecar_listener, std::future::pending()));
    let name = format!("{}-secure", env.id);
    let mut worker_flags = token_flags(WORKER_TOKENS);
    worker_flags.extend(certs.server_flags());
    worker_flags.extend(certs.client_flags());
    let worker_flags: Vec<&str> = worker_flags.iter().map(String::as_str).collect();
    let mut worker = Worker::start_with(&name, &format!("{},{}", a.url(), b.url()), &format!("default={sidecar_url}"), &worker_flags);
    let deadline = Instant::now() + WAIT;
    let (worker_id, generation, http) = loop {
        let ws = cp.list_workers(with_token(ListWorkersRequest {}, Some(ADMIN))).await.unwrap().into_inner().workers;
        if let Some(w) = ws.into_iter().find(|w| w.name == name && w.live && !w.assignments.is_empty()) {
            break (w.worker_id, w.generation, w.http_address);
        }
        assert!(Instant::now() < deadline, "the worker never registered over TLS with its token: see /tmp/millrace-test-logs/{name}.log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The sidecar: the sidecar token only.
    let mut side = FunctionRuntimeClient::new(channel(&tls, &sidecar_url).await.unwrap());
    for (token, want) in [(None, Code::Unauthenticated), (Some("wrong"), Code::Unauthenticated), (Some(WORKER), Code::Unauthenticated), (Some(INGEST), Code::PermissionDenied)] {
        let s = side.describe(with_token(DescribeRequest {}, token)).await.unwrap_err();
        assert_eq!(s.code(), want, "Describe with {token:?}: {s:?}");
        answers.push(s.message().to_string());
    }
    side.describe(with_token(DescribeRequest {}, Some(SIDECAR))).await.expect("the sidecar token is taken");

    // The ingest API: HTTPS, a client certificate, the ingest token.
    let record = r#"[{"id":"a","value":1},{"id":"b","value":2}]"#;
    // The worker knows its worker and sidecar tokens (another role's: 403), not the admin token (unknown: 401).
    for (token, want) in [(None, 401), (Some("wrong"), 401), (Some(ADMIN), 401), (Some(WORKER), 403), (Some(SIDECAR), 403)] {
        let (status, challenge, body) = https_post(&certs, true, &http, "/ingest/src", token, record).await.unwrap();
        assert_eq!(status, want, "ingest with {token:?}: {body}");
        assert_eq!(challenge.is_some(), want == 401, "WWW-Authenticate on {want}");
        assert!(body.contains("MILLRACE_INGEST_TOKEN"), "the refusal does not say what to send: {body}");
        answers.push(body);
    }
    assert!(https_post(&certs, false, &http, "/ingest/src", Some(INGEST), record).await.is_err(), "an ingest client without a certificate was served");
    let plain = millrace_tests::http::post(&http, "/ingest/src", &[millrace_tests::http::JSON, &format!("Authorization: Bearer {INGEST}")], record.as_bytes()).await;
    assert_ne!(plain.status, 200, "plaintext ingest was served");
    let (status, _, body) = https_post(&certs, true, &http, "/ingest/src", Some(INGEST), record).await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Through the transform (sidecar over TLS, with its token) into `out`.
    let out = read_topic(env.topic("out"), 1, |r| r.len() >= 2).await;
    assert_eq!(out.len(), 2, "{out:?}");

    // A worker id and generation read from ListWorkers are no credential, even with the worker token.
    let unit = "transform/src_to_out/0".to_string();
    let held = |ws: &[WorkerInfo]| ws.iter().find(|w| w.worker_id == worker_id).and_then(|w| w.assignments.iter().find(|u| u.unit_id == unit).cloned());
    let ws = cp.list_workers(with_token(ListWorkersRequest {}, Some(ADMIN))).await.unwrap().into_inner().workers;
    let before = held(&ws).expect("the worker holds the transform's unit");
    // No session: "register again" (what an older worker binary is told); a wrong one: not permitted.
    for (session, want) in [("", Code::FailedPrecondition), ("0000000000000000000000000000000000000000000000000000000000000000", Code::PermissionDenied)] {
        let forged = ReportProgressRequest {
            worker_id: worker_id.clone(),
            generation,
            units: vec![UnitProgress { unit_id: unit.clone(), epoch: before.epoch, committed_offset: i64::MAX, ..Default::default() }],
            session: session.into(),
        };
        let s = coord.report_progress(with_token(forged, Some(WORKER))).await.unwrap_err();
        assert_eq!(s.code(), want, "a forged ReportProgress: {s:?}");
        let s = coord.heartbeat(with_token(HeartbeatRequest { worker_id: worker_id.clone(), generation, session: session.into() }, Some(WORKER))).await.unwrap_err();
        assert_eq!(s.code(), want, "a forged Heartbeat: {s:?}");
        let s = coord.deregister(with_token(DeregisterRequest { worker_id: worker_id.clone(), generation, session: session.into() }, Some(WORKER))).await.unwrap_err();
        assert_eq!(s.code(), want, "a forged Deregister: {s:?}");
        // A forged watch would take the worker's assignment stream over.
        let s = coord.watch_assignments(with_token(WatchAssignmentsRequest { worker_id: worker_id.clone(), generation, session: session.into() }, Some(WORKER))).await.unwrap_err();
        assert_eq!(s.code(), want, "a forged WatchAssignments: {s:?}");
        answers.push(s.message().to_string());
    }
    let ws = cp.list_workers(with_token(ListWorkersRequest {}, Some(ADMIN))).await.unwrap().into_inner().workers;
    let after = held(&ws).expect("the worker still holds its unit");
    assert!(after.committed_offset < 1000, "a forged report moved the offset to {}", after.committed_offset);
    assert_eq!(after.epoch, before.epoch);
    assert!(ws.iter().any(|w| w.worker_id == worker_id && w.live), "a forged deregister ended the worker");

    // No secret in any log line, nor in any answer.
    let _ = worker.kill9();
    sidecar.abort();
    let logs = [a.log.clone(), b.log.clone(), std::env::temp_dir().join("millrace-test-logs").join(format!("{name}.log"))];
    let mut text = String::new();
    for l in &logs {
        text.push_str(&std::fs::read_to_string(l).unwrap_or_else(|e| panic!("{}: {e}", l.display())));
    }
    assert!(text.lines().count() > 10, "the logs hold almost nothing: {text}");
    for secret in [ADMIN, WORKER, INGEST, SIDECAR, PASSWORD, database_url.as_str()] {
        for (what, t) in [("a log", &text), ("an answer", &answers.join("\n"))] {
            if let Some(line) = t.lines().find(|l| l.contains(secret)) {
                panic!("{what} holds a secret: {line}");
            }
        }
    }
    drop((a, b));
    env.cleanup().await;
}
