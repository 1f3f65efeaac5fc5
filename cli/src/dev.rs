//! `millrace dev [app.py]`: everything on this machine, in one command. It installs and starts the stack
//! (scripts/stack.sh), the Python SDK (scripts/sdk.sh), builds and starts the control plane and a worker, applies
//! the app and serves its functions with the Python sidecar, showing what the functions print and log; then it
//! watches the app's project and applies each change. Without an app it runs `./app/main.py` (a MooseStack
//! project, from its directory: see `dev_project`), else the reference example. A process it started that dies is
//! reported and started again (`supervise`). Ctrl-C (or SIGTERM) stops what it started, last started first.

use millrace_proto::auth::Role;
use crate::admin::{home, repo, sdk_python, Ctx};
use crate::dev_project::{self, Project};
use crate::dev_state::State;
use crate::progress::{step, Step};
use millrace_proto::endpoints::Addresses;
use crate::supervise::{self, Supervised, Supervisor};
use anyhow::Context;
use millrace_proto::v1::resource::Spec;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct Args {
    /// The Python app; without one, `./app/main.py` when it exists (a MooseStack project), else the reference page's
    /// chained example.
    app: Option<PathBuf>,
    /// The worker's HTTP listener: the ingest API and /metrics.
    #[arg(long, env = "MILLRACE_HTTP_LISTEN", default_value = "127.0.0.1:4000")]
    http_listen: String,
    /// The first port of the Python sidecar (one port per process).
    #[arg(long, env = "MILLRACE_SIDECAR_PORT", default_value_t = 50061)]
    sidecar_port: u16,
    /// Postgres database of the control plane [default: `millrace_<app directory>_<hash>` for an app, `millrace`
    /// without one].
    #[arg(long)]
    database: Option<String>,
    /// ClickHouse database of the tables [default: as --database].
    #[arg(long)]
    clickhouse_database: Option<String>,
    /// Prefix of every topic name [default: `<app directory>_<hash>_` for an app, none without one].
    #[arg(long)]
    topic_namespace: Option<String>,
    /// Apply changes that drop tables holding rows (without it, such a change is shown and not applied).
    #[arg(long)]
    allow_drop: bool,
    /// Use the control plane and worker binaries in this directory instead of building them (env MILLRACE_BIN_DIR).
    #[arg(long, env = "MILLRACE_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

fn log_file(name: &str) -> anyhow::Result<std::fs::File> {
    supervise::open_log(name, true)
}

/// Starts (`fresh`: for the first time) a process in a process group of its own (with whatever it starts), its
/// output in its log.
fn spawn(name: &'static str, program: &Path, args: &[String], fresh: bool) -> anyhow::Result<Child> {
    let log = supervise::open_log(name, fresh)?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

/// The sidecar, run from the project directory, its output both in its log and shown (rendered) by `dev`.
fn spawn_sidecar(root: &Path, args: &[String], fresh: bool) -> anyhow::Result<Child> {
    let log = supervise::open_log("sidecar", fresh)?;
    let mut child = Command::new(sdk_python())
        .args(args)
        .current_dir(root)
        // Prints reach `dev` as they happen, not when a pipe's buffer fills.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the sidecar ({})", sdk_python().display()))?;
    tokio::spawn(show(child.stdout.take().expect("piped"), log.try_clone()?));
    tokio::spawn(show(child.stderr.take().expect("piped"), log));
    Ok(child)
}

/// Copies a stream's lines to the log as they are and to `dev`'s output rendered, until it ends.
async fn show(from: impl tokio::io::AsyncRead + Unpin, mut log: std::fs::File) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    // Bytes, not text: a line that is not UTF-8 must not stop the reading (the sidecar would block on a full pipe).
    let mut lines = tokio::io::BufReader::new(from).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let _ = log.write_all(&line).and_then(|_| log.write_all(b"\n"));
        // Never println!: it panics when dev's own output is gone, and the sidecar's pipe would close with it (its
        // prints would then fail inside user functions).
        let _ = writeln!(std::io::stdout(), "{}", dev_project::render(String::from_utf8_lossy(&line).trim_end()));
    }
}

async fn port_open(addr: &str) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Runs a script of the checkout with its output in a log; the log's tail on failure.
async fn script(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let log = home().join("dev").join(format!("{name}.log"));
    let out = Command::new("bash").args(args).current_dir(repo()).stdout(log_file(name)?).stderr(log_file(&format!("{name}.err"))?).status().await?;
    if !out.success() {
        let err = std::fs::read_to_string(home().join("dev").join(format!("{name}.err.log"))).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow::bail!("`bash {}` failed: {}\n(see {})", args.join(" "), tail.join("\n"), log.display());
    }
    Ok(())
}

/// `python -m millrace plan|apply app [--json]`, from the project directory: its output, or its one-line error
/// (without the lines the app logged as it was imported).
async fn python(ctx: &Ctx, what: &str, project: &Project) -> Result<String, String> {
    let target = ctx.control_plane.host_ports();
    let (what, json) = match what.strip_suffix(" --json") {
        Some(w) => (w, true),
        None => (what, false),
    };
    let out = Command::new(sdk_python())
        .args(["-m", "millrace", what, &project.app.display().to_string(), "--control-plane", &target])
        .args(json.then_some("--json"))
        .current_dir(&project.root)
        .output()
        .await
        .map_err(|e| format!("running the Python SDK: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().filter(|l| !dev_project::is_log_line(l)).collect::<Vec<_>>().join("\n").trim_end().to_string())
    }
}

struct Running {
    supervisor: Supervisor,
    procs: Vec<Supervised>,
    sidecar: Option<Supervised>,
    stop_stack: Vec<&'static str>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    // `dev` runs one control plane, on the first address given; everything it starts and asks uses that one.
    let first = Addresses::parse(ctx.control_plane.first())?;
    if ctx.control_plane.urls().len() > 1 {
        println!("millrace dev runs one control plane: on {} (the first of --control-plane)", first);
    }
    let ctx = &Ctx { control_plane: first, ..ctx.clone() };
    let found = Project::find(args.app.as_deref())?;
    // The built-in example keeps the state it always had; an app's is its project's.
    let anchor = found.as_ref().map(Project::state_anchor);
    let project = match found {
        Some(p) => {
            if args.app.is_none() {
                println!("running {} (the project's app/main.py), from {}", p.app.display(), p.root.display());
            }
            p
        }
        None => {
            let path = home().join("dev").join("app.py");
            std::fs::create_dir_all(path.parent().expect("a directory"))?;
            std::fs::write(&path, include_str!("../../examples/reference_chained.py"))?;
            println!("no app given and no app/main.py here: running the reference page's chained example ({})", path.display());
            Project { root: path.parent().expect("a directory").to_path_buf(), app: path }
        }
    };
    let state = crate::dev_state::resolve(
        anchor.as_deref(),
        args.database.clone(),
        args.clickhouse_database.clone(),
        args.topic_namespace.clone(),
    );
    // Each app directory has its own state: another app's plan never replaces this one's (nor drops its tables).
    println!(
        "state of this app: Postgres database {}, ClickHouse database {}, topics {} (--database, --clickhouse-database and --topic-namespace choose others)",
        state.database,
        state.clickhouse_database,
        if state.topic_namespace.is_empty() { "without a prefix".to_string() } else { format!("prefixed {}", state.topic_namespace) }
    );
    let mut running = Running { supervisor: Supervisor::new(), procs: Vec::new(), sidecar: None, stop_stack: Vec::new() };
    let result = tokio::select! {
        r = start_and_watch(ctx, &args, &state, &project, &mut running) => r,
        _ = shutdown_signal() => Ok(()),
    };
    // Nothing that dies from now on is started again.
    running.supervisor.shutting_down();
    println!("stopping what millrace dev started");
    if let Some(s) = running.sidecar.take() {
        s.stop().await;
    }
    while let Some(p) = running.procs.pop() {
        p.stop().await;
    }
    for s in &running.stop_stack {
        let _ = script(&format!("stop-{s}"), &["scripts/stack.sh", "stop", s]).await;
        println!("  stopped {s}");
    }
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Whether the app's planned change may be applied: not when it drops a table holding rows, unless --allow-drop.
async fn drop_guard(ctx: &Ctx, args: &Args, state: &State, app: &Project) -> Result<(), String> {
    if args.allow_drop {
        return Ok(());
    }
    let plan = python(ctx, "plan --json", app).await?;
    let drops = crate::dev_state::dropped_rows(ctx, &plan, &state.clickhouse_database).await.map_err(|e| format!("{e:#}"))?;
    if drops.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = drops.iter().map(|(name, table, rows)| format!("table {name} ({table}) holding {rows} rows")).collect();
    Err(format!(
        "not applied: the change drops {}; put the table back in the app, or run millrace dev again with --allow-drop to drop it",
        list.join(", ")
    ))
}

async fn start_and_watch(ctx: &Ctx, args: &Args, state: &State, app: &Project, running: &mut Running) -> anyhow::Result<()> {
    let cp_listen = ctx.control_plane.host_ports();
    let (broker_up, clickhouse_up) = (port_open("127.0.0.1:9092").await, port_open("127.0.0.1:8123").await);
    step("local stack: Postgres, Tansu, ClickHouse (the first run installs them: Tansu builds for minutes)", script("stack", &["scripts/stack.sh", "start"])).await?;
    if !broker_up {
        running.stop_stack.push("tansu");
    }
    if !clickhouse_up {
        running.stop_stack.push("clickhouse");
    }
    step("Python SDK (~/.millrace/sdk-venv)", script("sdk", &["scripts/sdk.sh"])).await?;
    let bin = match &args.bin_dir {
        Some(d) => d.clone(),
        None => {
            let build = async {
                let ok = Command::new("cargo")
                    .args(["build", "--release", "--locked", "-p", "millrace-control-plane", "-p", "millrace-worker"])
                    .current_dir(repo())
                    .stdout(log_file("build")?)
                    .stderr(log_file("build.err")?)
                    .status()
                    .await?
                    .success();
                anyhow::ensure!(ok, "building failed: see {}", home().join("dev/build.err.log").display());
                Ok(())
            };
            step("building the control plane and the worker (release)", build).await?;
            repo().join("target/release")
        }
    };
    let pg = std::env::var("MILLRACE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let cp_args: Vec<String> = [
        "--listen", &cp_listen, "--database-url", &format!("{pg}/{}", state.database), "--kafka-brokers", &ctx.brokers,
        "--clickhouse-database", &state.clickhouse_database, "--topic-namespace", &state.topic_namespace,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let restart_dev = "fix what it says, then stop millrace dev (Ctrl-C) and run it again";
    let program = bin.join("millrace-control-plane");
    let cp = supervise::Spec {
        name: "control-plane",
        addr: cp_listen.clone(),
        advice: restart_dev.into(),
        start: Box::new(move |fresh| spawn("control-plane", &program, &cp_args, fresh)),
    };
    running.procs.push(step(&format!("control plane on {cp_listen}"), running.supervisor.start(cp)).await?);
    let sidecar_url = format!("default=http://127.0.0.1:{}", args.sidecar_port);
    let worker_args: Vec<String> =
        ["--control-plane", ctx.control_plane.first(), "--kafka-brokers", &ctx.brokers, "--sidecar", &sidecar_url, "--http-listen", &args.http_listen]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let program = bin.join("millrace-worker");
    let worker = supervise::Spec {
        name: "worker",
        addr: args.http_listen.clone(),
        advice: restart_dev.into(),
        start: Box::new(move |fresh| spawn("worker", &program, &worker_args, fresh)),
    };
    running.procs.push(step(&format!("worker on {}", args.http_listen), running.supervisor.start(worker)).await?);

    let s = Step::start(&format!("applying {}", app.app.display()));
    let applied = match drop_guard(ctx, args, state, app).await {
        Ok(()) => python(ctx, "apply", app).await,
        Err(e) => Err(e),
    };
    match applied {
        Ok(out) => {
            s.done("");
            println!("{out}");
        }
        Err(e) => {
            s.fail();
            println!("{e}\nfix the app: millrace dev applies it when it changes");
        }
    }
    running.sidecar = Some(start_sidecar(&running.supervisor, app, args.sidecar_port).await?);
    endpoints(ctx, args, state).await;
    println!("\nwatching {} for changes; Ctrl-C stops everything", app.root.display());
    let (mut seen, cut) = dev_project::snapshot(&app.root);
    if cut {
        println!(
            "  {} holds over {} files: only some of its Python files are watched; keep the app in a project directory of its own",
            app.root.display(),
            dev_project::WATCH_LIMIT
        );
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (now, _) = dev_project::snapshot(&app.root);
        if now == seen {
            continue;
        }
        let changed: Vec<&PathBuf> = now.iter().filter(|(f, t)| seen.get(*f) != Some(*t)).map(|(f, _)| f).chain(seen.keys().filter(|f| !now.contains_key(*f))).collect();
        let shown: Vec<String> = changed.iter().take(3).map(|f| f.strip_prefix(&app.root).unwrap_or(f).display().to_string()).collect();
        println!("\n{} changed", if changed.len() > 3 { format!("{} and {} more", shown.join(", "), changed.len() - 3) } else { shown.join(", ") });
        seen = now;
        match python(ctx, "plan", app).await {
            Err(e) => {
                println!("{e}\nthe last good version keeps running; fix the app and save it again");
                continue;
            }
            Ok(diff) => println!("{diff}"),
        }
        if let Err(e) = drop_guard(ctx, args, state, app).await {
            println!("{e}\nthe last applied version keeps running");
            continue;
        }
        match python(ctx, "apply", app).await {
            Err(e) => println!("{e}\nthe last good version keeps running"),
            Ok(_) => {
                if let Some(old) = running.sidecar.take() {
                    old.stop().await;
                }
                // A sidecar that does not come up is this version's problem, not the end of `dev`: the next save
                // starts it again.
                match start_sidecar(&running.supervisor, app, args.sidecar_port).await {
                    Ok(sidecar) => {
                        running.sidecar = Some(sidecar);
                        println!("applied; the sidecar serves the new version");
                    }
                    Err(e) => println!("applied, but the sidecar did not start: {e:#}
fix the app and save it: millrace dev starts the sidecar again"),
                }
            }
        }
    }
}

/// The sidecar, restarted on the same port when it dies (the worker reconnects to it there).
async fn start_sidecar(supervisor: &Supervisor, app: &Project, port: u16) -> anyhow::Result<Supervised> {
    let args: Vec<String> = ["-m", "millrace", "serve", &app.app.display().to_string(), "--port", &port.to_string()].iter().map(|s| s.to_string()).collect();
    let addr = format!("127.0.0.1:{port}");
    let root = app.root.clone();
    let spec = supervise::Spec {
        name: "sidecar",
        addr: addr.clone(),
        advice: "fix the app (its error is above) and save it: millrace dev starts the sidecar again".into(),
        start: Box::new(move |fresh| spawn_sidecar(&root, &args, fresh)),
    };
    step(&format!("Python sidecar on {addr}"), supervisor.start(spec)).await
}

/// Where things are, with a curl line per ingest API.
async fn endpoints(ctx: &Ctx, args: &Args, state: &State) {
    println!("\nMillrace is running:");
    println!("  control plane   {}   (millrace ls, millrace status)", ctx.control_plane);
    println!("  metrics         http://{}/metrics", args.http_listen);
    println!("  ClickHouse      http://127.0.0.1:8123   database {}", state.clickhouse_database);
    let set: Vec<&str> = Role::ALL.iter().filter(|r| std::env::var(r.env()).is_ok_and(|v| !v.is_empty())).map(|r| r.name()).collect();
    if set.is_empty() {
        println!("  tokens, TLS     none (local). In production: MILLRACE_ADMIN_TOKEN, _WORKER_TOKEN, _INGEST_TOKEN and");
        println!("                  _SIDECAR_TOKEN, each process the ones it uses, and MILLRACE_TLS_CERT/KEY: docs/deploy.md");
    } else {
        println!("  tokens          from the environment: {} (every process here was given them)", set.join(", "));
    }
    // The curl lines send the ingest token when there is one (read from the environment by the shell, not printed).
    let auth = if std::env::var(Role::Ingest.env()).is_ok_and(|v| !v.is_empty()) { "-H \"Authorization: Bearer $MILLRACE_INGEST_TOKEN\" " } else { "" };
    let Ok(resources) = ctx.resources().await else { return };
    for r in &resources {
        if let Some(Spec::IngestApi(api)) = r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
            let path = match (api.path.is_empty(), api.version.is_empty()) {
                (false, _) => api.path.clone(),
                (true, true) => api.name.clone(),
                (true, false) => format!("{}/{}", api.name, api.version),
            };
            let dest = api.destination.clone().unwrap_or_default();
            let fields = resources.iter().find_map(|r| match r.resource.as_ref()?.spec.as_ref()? {
                Spec::Stream(s) if s.name == dest.name && s.version == dest.version => Some(s.fields.clone()),
                _ => None,
            });
            let example = serde_json::Value::Object(fields.unwrap_or_default().iter().map(|f| (f.name.clone(), sample(f))).collect());
            println!("  ingest          http://{}/ingest/{path}", args.http_listen);
            println!("    curl -s {auth}-H 'Content-Type: application/json' -d '{example}' http://{}/ingest/{path}", args.http_listen);
        }
    }
    for r in &resources {
        if let Some(Spec::Table(t)) = r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
            println!(
                // Quoted: names may hold `-`.
                "  table {:<9} curl -s 127.0.0.1:8123 -d 'SELECT * FROM `{}`.`{}` FORMAT JSONEachRow'",
                t.name,
                if t.database.is_empty() { &state.clickhouse_database } else { &t.database },
                r.physical_name
            );
        }
    }
}

/// A value of a field's type, for the example curl line.
fn sample(f: &millrace_proto::v1::Field) -> serde_json::Value {
    if f.nullable {
        return serde_json::Value::Null;
    }
    f.r#type.as_ref().map(sample_type).unwrap_or(serde_json::Value::Null)
}

fn sample_type(t: &millrace_proto::v1::FieldType) -> serde_json::Value {
    use millrace_proto::v1::field_type::Kind;
    use millrace_proto::v1::ScalarType as S;
    match &t.kind {
        Some(Kind::Scalar(s)) => match S::try_from(*s).unwrap_or(S::String) {
            S::String | S::Unspecified => "example-1".into(),
            S::Float32 | S::Float64 => 1.5.into(),
            S::Bool => true.into(),
            S::Datetime => chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
            S::Date => chrono::Utc::now().format("%Y-%m-%d").to_string().into(),
            S::Uuid => "00000000-0000-0000-0000-000000000001".into(),
            S::Ipv4 => "10.0.0.1".into(),
            S::Ipv6 => "2001:db8::1".into(),
            _ => 1.into(),
        },
        Some(Kind::Decimal(_)) => "1".into(),
        // Its first member, as records carry it.
        Some(Kind::Enumeration(e)) => match e.members.first() {
            Some(m) if e.numbers => m.number.into(),
            Some(m) => m.label.clone().into(),
            None => serde_json::Value::Null,
        },
        Some(Kind::Datetime64(_)) => chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into(),
        Some(Kind::FixedString(_)) => "a".into(),
        Some(Kind::Map(_)) | Some(Kind::Json(_)) => serde_json::json!({}),
        Some(Kind::Array(inner)) => serde_json::Value::Array(vec![sample_type(inner)]),
        Some(Kind::Record(r)) => serde_json::Value::Object(r.fields.iter().map(|f| (f.name.clone(), sample(f))).collect()),
        Some(Kind::Optional(_)) | None => serde_json::Value::Null,
    }
}
