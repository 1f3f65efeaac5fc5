//! Admin commands over the control plane's gRPC API: `ls`, `status`, and `plan`/`apply` of a Python app (the
//! Python SDK builds the plan).

use anyhow::Context;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::resource::Spec;
use millrace_proto::v1::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use millrace_proto::endpoints::{Addresses, Failover};

#[derive(Clone)]
pub struct Ctx {
    /// Every control plane address given; calls go to the first that answers.
    pub control_plane: Addresses,
    pub brokers: String,
    pub json: bool,
    /// Sent with every control plane call (the admin token, when the control plane wants one).
    pub token: Option<millrace_proto::auth::Secret>,
    /// TLS to `https://` addresses.
    pub tls: millrace_proto::tls::Client,
}

impl Ctx {
    /// A client over every address: a call goes to the first that answers (one that refuses the connection, does
    /// not connect within 3 s, does not answer within 30 s or answers UNAVAILABLE gives way to the next).
    pub async fn client(&self) -> anyhow::Result<ControlPlaneClient<Failover>> {
        let channel = Failover::new(&self.control_plane, &self.tls, |e| e.connect_timeout(Duration::from_secs(3)))
            .attempt_timeout(Duration::from_secs(30))
            .token(self.token.as_ref());
        Ok(ControlPlaneClient::new(channel))
    }

    pub async fn resources(&self) -> anyhow::Result<Vec<StoredResource>> {
        let req = ListResourcesRequest { kind: ResourceKind::Unspecified as i32 };
        Ok(self.client().await?.list_resources(req).await.map_err(refused)?.into_inner().resources)
    }
}

pub fn refused(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        return anyhow::anyhow!(
            "the control plane cannot be reached ({}): start it (millrace dev), or set --control-plane (MILLRACE_CONTROL_PLANE) to its address, or several separated by commas",
            s.message()
        );
    }
    if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
        return anyhow::anyhow!("the control plane refused the call: {} (millrace takes it from --admin-token or MILLRACE_ADMIN_TOKEN)", s.message());
    }
    anyhow::anyhow!("the control plane answered {:?}: {}", s.code(), s.message())
}

/// The checkout this binary was built from (for its scripts and SDK).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("cli/ is in the checkout").to_path_buf()
}

pub fn sdk_python() -> PathBuf {
    let venv = std::env::var("MILLRACE_SDK_VENV").map(PathBuf::from).unwrap_or_else(|_| home().join("sdk-venv"));
    venv.join("bin/python")
}

pub fn home() -> PathBuf {
    std::env::var("MILLRACE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".millrace"))
}

/// `python -m millrace plan|apply app.py`, with this command's control plane (and `--json`).
pub fn python_plan(ctx: &Ctx, what: &str, app: &str) -> anyhow::Result<()> {
    let py = sdk_python();
    anyhow::ensure!(py.exists(), "the Python SDK is not installed: run `bash scripts/sdk.sh` (or `millrace dev` once)");
    // Every address, as the Python SDK takes them (with the scheme when one is https).
    let tls = ctx.control_plane.urls().iter().any(|u| u.starts_with("https://"));
    let target = if tls { ctx.control_plane.to_string() } else { ctx.control_plane.host_ports() };
    let mut cmd = std::process::Command::new(py);
    cmd.args(["-m", "millrace", what, app, "--control-plane", &target]);
    // Given as a flag here: passed on the way the SDK reads it (never on its command line, which others can see).
    if let Some(t) = &ctx.token {
        cmd.env("MILLRACE_ADMIN_TOKEN", t.expose());
    }
    if ctx.json {
        cmd.arg("--json");
    }
    let ok = cmd.status().context("running the Python SDK")?.success();
    anyhow::ensure!(ok, "{what} failed (the reason is above)");
    Ok(())
}

fn shown(r: Option<&ResourceRef>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.version.is_empty() => r.name.clone(),
        Some(r) => format!("{}@{}", r.name, r.version),
    }
}

/// One line of `ls`: kind, name, and what matters about it.
/// What the app said about a resource (moose's `metadata`), sorted by key.
fn metadata(r: &StoredResource) -> std::collections::BTreeMap<String, String> {
    let m = match r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
        Some(Spec::Stream(x)) => &x.metadata,
        Some(Spec::Table(x)) => &x.metadata,
        Some(Spec::DeadLetterQueue(x)) => &x.metadata,
        Some(Spec::Transform(x)) => &x.metadata,
        Some(Spec::Consumer(x)) => &x.metadata,
        Some(Spec::IngestApi(x)) => &x.metadata,
        None => return Default::default(),
    };
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The line `ls` shows under a resource: its description, else its other metadata.
fn description(r: &StoredResource) -> Option<String> {
    let m = metadata(r);
    if m.is_empty() {
        return None;
    }
    Some(match m.get("description") {
        Some(d) => d.clone(),
        None => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
    })
}

fn describe(r: &StoredResource) -> (String, String, String) {
    let Some(spec) = r.resource.as_ref().and_then(|r| r.spec.as_ref()) else { return Default::default() };
    let named = |n: &str, v: &str| if v.is_empty() { n.to_string() } else { format!("{n}@{v}") };
    match spec {
        Spec::Stream(s) => (
            "stream".into(),
            named(&s.name, &s.version),
            format!(
                "topic {}, {} partitions, retention {}s{}{}",
                r.physical_name,
                s.parallelism.unwrap_or(1),
                s.retention_seconds.unwrap_or(604_800),
                s.destination.as_ref().map(|d| format!(", synced into table {}", shown(Some(d)))).unwrap_or_default(),
                s.dead_letter_queue.as_ref().map(|d| format!(", dead letters to {}", shown(Some(d)))).unwrap_or_default()
            ),
        ),
        Spec::Table(t) => {
            let cols: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
            ("table".into(), named(&t.name, &t.version), format!("{} ({})", r.physical_name, cols.join(", ")))
        }
        Spec::Transform(t) => (
            "transform".into(),
            t.name.clone(),
            format!(
                "{} -> {} by {}",
                shown(t.source.as_ref()),
                // A multi-transform routes each output to one of its streams.
                if t.routes.is_empty() {
                    shown(t.destination.as_ref())
                } else {
                    format!("[{}]", t.routes.iter().map(|r| shown(Some(r))).collect::<Vec<_>>().join(" | "))
                },
                t.function.as_ref().map(|f| format!("{}:{}", f.runtime, f.name)).unwrap_or_default()
            ),
        ),
        Spec::Consumer(c) => (
            "consumer".into(),
            c.name.clone(),
            format!("{} by {}", shown(c.source.as_ref()), c.function.as_ref().map(|f| format!("{}:{}", f.runtime, f.name)).unwrap_or_default()),
        ),
        Spec::IngestApi(i) => {
            let path = if i.version.is_empty() { format!("/ingest/{}", i.name) } else { format!("/ingest/{}/{}", i.name, i.version) };
            ("ingest_api".into(), named(&i.name, &i.version), format!("POST {path} -> {}", shown(i.destination.as_ref())))
        }
        Spec::DeadLetterQueue(d) => {
            ("dead_letter_queue".into(), named(&d.name, &d.version), format!("topic {}, {} partitions", r.physical_name, d.parallelism.unwrap_or(1)))
        }
    }
}

pub async fn ls(ctx: &Ctx) -> anyhow::Result<()> {
    let resources = ctx.resources().await?;
    if ctx.json {
        let out: Vec<serde_json::Value> = resources
            .iter()
            .map(|r| {
                let (kind, name, detail) = describe(r);
                serde_json::json!({ "kind": kind, "name": name, "physical_name": r.physical_name, "detail": detail, "metadata": metadata(r) })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if resources.is_empty() {
        println!("nothing is declared: apply an app (millrace apply app.py)");
    }
    for r in &resources {
        let (kind, name, detail) = describe(r);
        println!("{kind:<18} {name:<28} {detail}");
        if let Some(d) = description(r) {
            println!("{:<18} {:<28} {d}", "", "");
        }
    }
    Ok(())
}

/// Committed offsets of every unit, by unit id.
async fn offsets(c: &mut ControlPlaneClient<Failover>) -> anyhow::Result<(ListWorkersResponse, HashMap<String, i64>)> {
    let listed = c.list_workers(ListWorkersRequest {}).await.map_err(refused)?.into_inner();
    let offsets = listed.workers.iter().flat_map(|w| &w.assignments).map(|a| (a.unit_id.clone(), a.committed_offset)).collect();
    Ok((listed, offsets))
}

pub async fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let mut c = ctx.client().await?;
    let health = c.get_status(GetStatusRequest {}).await.map_err(refused)?.into_inner();
    // Rates: committed offsets two seconds apart.
    let (before, workers) = crate::progress::step("measuring rates (2 s)", async {
        let (_, before) = offsets(&mut c).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (listed, _) = offsets(&mut c).await?;
        Ok((before, listed))
    })
    .await?;
    let (workers, unassigned) = (workers.workers, workers.unassigned);
    let rate = |a: &UnitAssignmentInfo| -> f64 {
        match before.get(&a.unit_id) {
            Some(&b) if b >= 0 && a.committed_offset >= b => (a.committed_offset - b) as f64 / 2.0,
            _ => 0.0,
        }
    };
    if ctx.json {
        let ws: Vec<serde_json::Value> = workers
            .iter()
            .map(|w| {
                let units: Vec<serde_json::Value> = w
                    .assignments
                    .iter()
                    .map(|a| serde_json::json!({"unit": a.unit_id, "epoch": a.epoch, "committed_offset": a.committed_offset,
                        "lag": a.lag, "records_per_s": rate(a), "error": a.error}))
                    .collect();
                serde_json::json!({"name": w.name, "worker_id": w.worker_id, "generation": w.generation, "live": w.live,
                    "http_address": w.http_address, "lease_expires_at": w.lease_expires_at.as_ref().map(|t| t.seconds), "units": units})
            })
            .collect();
        let deps: Vec<serde_json::Value> =
            health.dependencies.iter().map(|d| serde_json::json!({"name": d.name, "reachable": d.reachable, "detail": d.detail})).collect();
        let idle: Vec<serde_json::Value> = unassigned
            .iter()
            .map(|a| serde_json::json!({"unit": a.unit_id, "epoch": a.epoch, "committed_offset": a.committed_offset, "lag": a.lag, "error": a.error}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"version": health.version, "uptime_seconds": health.uptime_seconds,
            "dependencies": deps, "live_workers": health.live_workers, "leader": {"address": health.leader_address, "term": health.leader_term},
            "apply_in_progress": health.apply_in_progress,
            "workers": ws, "not_running": idle}))?);
        return Ok(());
    }
    println!("control plane {} up {}s", health.version, health.uptime_seconds);
    match health.leader_address.as_str() {
        "" => println!("  leader       NONE (no control plane leads now: applies wait; try again in a few seconds)"),
        a => println!("  leader       {a} (term {}{})", health.leader_term, if health.is_leader { ", this one" } else { "" }),
    }
    if !health.apply_in_progress.is_empty() {
        println!("  applying     {} (an unfinished one is finished by the leader; applies wait for it)", health.apply_in_progress);
    }
    for d in &health.dependencies {
        println!("  {:<12} {}{}", d.name, if d.reachable { "reachable" } else { "UNREACHABLE" }, if d.detail.is_empty() { String::new() } else { format!(": {}", d.detail) });
    }
    println!("{} live worker(s)", health.live_workers);
    for w in &workers {
        let lease = w.lease_expires_at.as_ref().map(|t| t.seconds - chrono::Utc::now().timestamp()).unwrap_or(0);
        println!("worker {} (generation {}, {}, lease {}s, http {})", w.name, w.generation, if w.live { "live" } else { "gone" }, lease, w.http_address);
        for a in &w.assignments {
            let err = if a.error.is_empty() { String::new() } else { format!("  ERROR: {}", a.error) };
            println!(
                "  {:<48} epoch {:<3} committed {:<10} lag {:<8} {:>9.0}/s{err}",
                a.unit_id,
                a.epoch,
                a.committed_offset,
                if a.lag < 0 { "?".to_string() } else { a.lag.to_string() },
                rate(a)
            );
        }
    }
    if !unassigned.is_empty() {
        let why = if health.live_workers == 0 { "no live worker: start one (millrace-worker)" } else { "waiting for a worker" };
        println!("{} unit(s) not running ({why})", unassigned.len());
        for a in &unassigned {
            let err = if a.error.is_empty() { String::new() } else { format!("  ERROR: {}", a.error) };
            println!("  {:<48} committed {:<10}{err}", a.unit_id, a.committed_offset);
        }
    }
    Ok(())
}
