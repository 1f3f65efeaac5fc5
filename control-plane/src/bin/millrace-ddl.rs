//! Prints the DDL the control plane would run for each table of a plan, without a control plane or a server:
//! `millrace-ddl [--server-version 26.1] [--no-keeper] [--database millrace] [--stored old.pb] < plan.pb` (binary
//! `Plan`s). One JSON line per table: its database, physical name, CREATE TABLE, the query settings it needs,
//! `refused` when that server version could not create it, and with `--stored`, for a table the stored plan has
//! too, the ALTERs that take it there (`alter`) or why it cannot change (`alter_refused`). The test suite runs
//! the statements in a modern ClickHouse (chdb) to check them against what users run in production.

use clap::Parser;
use millrace_control_plane::plan;
use millrace_control_plane::resource::{physical_name, spec};
use millrace_control_plane::table::{changes, ddl, features};
use millrace_proto::v1::{resource::Spec, Plan};
use prost::Message;
use std::io::Read;

#[derive(Parser)]
#[command(name = "millrace-ddl", about = "Prints the CREATE TABLE of each table of a plan (a binary Plan on stdin)")]
struct Args {
    /// The ClickHouse version to render for (major.minor).
    #[arg(long, default_value = "26.1")]
    server_version: String,
    /// Render as for a server without ZooKeeper or Keeper (Replicated engines are refused).
    #[arg(long)]
    no_keeper: bool,
    /// The database of tables that name none (the control plane's --clickhouse-database).
    #[arg(long, default_value = "millrace")]
    database: String,
    /// A plan applied before (binary Plan): print the ALTERs from its tables to these.
    #[arg(long)]
    stored: Option<std::path::PathBuf>,
}

fn read_plan(bytes: &[u8], what: &str) -> anyhow::Result<millrace_control_plane::resource::State> {
    let plan = Plan::decode(bytes).map_err(|e| anyhow::anyhow!("{what} is not a binary Plan: {e}"))?;
    plan::validate(plan).map_err(|e| anyhow::anyhow!("invalid plan in {what}: {e}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let version = features::Version::parse(&args.server_version)
        .ok_or_else(|| anyhow::anyhow!("--server-version {:?}: give major.minor, such as 26.1", args.server_version))?;
    let server = features::Server { version, has_keeper: !args.no_keeper };
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let state = read_plan(&bytes, "stdin")?;
    let stored = match &args.stored {
        Some(path) => read_plan(&std::fs::read(path)?, &path.display().to_string())?,
        None => Default::default(),
    };
    for (key, r) in &state {
        let Spec::Table(t) = spec(r) else { continue };
        let database = if t.database.is_empty() { args.database.as_str() } else { t.database.as_str() };
        let physical = physical_name(spec(r), "");
        let create = ddl::create_table(database, &physical, t, &server).map_err(|e| anyhow::anyhow!("table `{}`: {e}", t.name))?;
        let (alter, alter_refused) = match stored.get(key).map(spec) {
            Some(Spec::Table(old)) => match changes::option_changes(t, old) {
                Ok(_) => {
                    let sql: Vec<String> = ddl::alter_options(database, &physical, t, old, &server).into_iter().map(|s| s.sql).collect();
                    (Some(sql), features::check_alter(t, old, &server).err())
                }
                Err(why) => (None, Some(why)),
            },
            _ => (None, None),
        };
        let line = serde_json::json!({
            "table": t.name,
            "version": t.version,
            "database": database,
            "physical": physical,
            "create": create.sql,
            "query_settings": create.settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            "refused": features::check_create(t, &server).err(),
            "alter": alter,
            "alter_refused": alter_refused,
        });
        println!("{line}");
    }
    Ok(())
}
