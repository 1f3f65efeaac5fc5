//! `millrace`: `dev` runs everything on this machine; the admin commands show and change what runs, over the gRPC
//! contract, the broker and the Python SDK.

mod admin;
mod dev;
mod dev_project;
mod dev_state;
mod logs;
mod progress;
mod replay;
mod supervise;
mod topics;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "millrace", version, about = "Typed streaming pipelines: run them locally, see and change what runs")]
struct Cli {
    /// The control plane's gRPC address, or several separated by commas (`host:port` or `http://host:port`): each
    /// command asks the first that answers. `millrace dev` runs its control plane on the first.
    #[arg(long, global = true, env = "MILLRACE_CONTROL_PLANE", default_value = "http://127.0.0.1:50051")]
    control_plane: millrace_proto::endpoints::Addresses,
    /// Kafka bootstrap servers (for peek and dead letters).
    #[arg(long, global = true, env = "MILLRACE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// The admin token, when the control plane wants one (apply, delete, replay, and reads).
    #[arg(long, global = true, env = "MILLRACE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<millrace_proto::auth::Secret>,
    /// TLS of the calls to `https://` addresses.
    #[command(flatten)]
    tls: millrace_proto::tls::ClientTls,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing, start the stack, the control plane, a worker and the app's Python sidecar; apply the
    /// app and re-apply it when its files change. Ctrl-C stops everything it started.
    Dev(dev::Args),
    /// The changes applying a Python app would make.
    Plan { app: String },
    /// Apply a Python app.
    Apply { app: String },
    /// Declared streams, tables, transforms, consumers, ingest APIs and dead letter queues.
    Ls,
    /// The last records of a stream (or dead letter queue).
    Peek {
        stream: String,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        n: usize,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
    },
    /// Workers, leases, units with their committed offsets, lag and rates.
    Status,
    /// Dead letters of a queue, with where they came from; `dlq replay` sends them back to the function that failed them.
    Dlq(topics::DlqArgs),
    /// What user functions log (`Logger`, `cli_log`, prints) in the sidecar `millrace dev` runs, with each
    /// function's name.
    Logs(logs::Args),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `host:port` or `http://host:port`, as the Python CLI and the SDKs take them (MILLRACE_CONTROL_PLANE is shared
    // with them): parsed, and refused naming the bad address, by clap.
    let tls = match cli.tls.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let ctx = admin::Ctx { control_plane: cli.control_plane.clone(), brokers: cli.kafka_brokers.clone(), json: cli.json, token: cli.admin_token.clone(), tls };
    let result = match cli.command {
        Command::Dev(args) => dev::run(&ctx, args).await,
        Command::Plan { app } => admin::python_plan(&ctx, "plan", &app),
        Command::Apply { app } => admin::python_plan(&ctx, "apply", &app),
        Command::Ls => admin::ls(&ctx).await,
        Command::Peek { stream, n, follow } => topics::peek(&ctx, &stream, n, follow).await,
        Command::Status => admin::status(&ctx).await,
        Command::Dlq(args) => topics::dlq(&ctx, args).await,
        Command::Logs(args) => logs::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("millrace: {e:#}");
        std::process::exit(1);
    }
}
