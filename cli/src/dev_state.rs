//! Where `millrace dev` keeps an app's state, and its guard against dropping rows. Each app directory gets its own
//! Postgres database, ClickHouse database and topic prefix (named after the directory, with a short hash of its
//! path), so running another app never applies its plan over this one's and drops its streams and tables. The
//! run without an app keeps the names `millrace`, `millrace` and no prefix. A change that would drop a table
//! holding rows is not applied unless `--allow-drop` is given.

use crate::admin::Ctx;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use millrace_proto::v1::resource::Spec;
use std::path::Path;

/// The names of one app's state.
pub struct State {
    pub database: String,
    pub clickhouse_database: String,
    pub topic_namespace: String,
}

/// FNV-1a: a hash that stays the same across runs, builds and machines (std's does not promise to).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// `<directory name>_<hash of its path>`, in the characters every name allows, starting with a letter.
pub fn app_key(dir: &Path) -> String {
    let base = dir.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let slug: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let slug: String = slug.trim_matches('_').chars().take(24).collect();
    let slug = if slug.starts_with(|c: char| c.is_ascii_alphabetic()) { slug } else { format!("app_{slug}").trim_end_matches('_').to_string() };
    format!("{slug}_{:08x}", fnv1a(dir.as_os_str().as_encoded_bytes()) as u32)
}

/// The state of `app` (None: the built-in example), flags given explicitly winning.
pub fn resolve(app: Option<&Path>, database: Option<String>, clickhouse_database: Option<String>, topic_namespace: Option<String>) -> State {
    let (db, ch, ns) = match app.and_then(Path::parent) {
        Some(dir) => {
            let key = app_key(dir);
            (format!("millrace_{key}"), format!("millrace_{key}"), format!("{key}_"))
        }
        None => ("millrace".to_string(), "millrace".to_string(), String::new()),
    };
    State {
        database: database.unwrap_or(db),
        clickhouse_database: clickhouse_database.unwrap_or(ch),
        topic_namespace: topic_namespace.unwrap_or(ns),
    }
}

/// Tables the planned change (`plan --json`'s output) deletes that hold rows: (name, ClickHouse table, rows).
pub async fn dropped_rows(ctx: &Ctx, plan_json: &str, clickhouse_database: &str) -> anyhow::Result<Vec<(String, String, u64)>> {
    let plan: serde_json::Value = serde_json::from_str(plan_json)?;
    let deleted: Vec<(String, String)> = plan["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == "TABLE" && c["action"] == "DELETE")
        .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c["version"].as_str().unwrap_or_default().to_string()))
        .collect();
    if deleted.is_empty() {
        return Ok(Vec::new());
    }
    let resources = ctx.resources().await?;
    let mut out = Vec::new();
    for (name, version) in deleted {
        // A table may name its own database (OlapConfig(database=...)).
        let Some((physical, database)) = resources.iter().find_map(|r| match r.resource.as_ref()?.spec.as_ref()? {
            Spec::Table(t) if t.name == name && t.version == version => {
                Some((r.physical_name.clone(), if t.database.is_empty() { clickhouse_database.to_string() } else { t.database.clone() }))
            }
            _ => None,
        }) else {
            continue;
        };
        let rows = count(&database, &physical).await?;
        if rows > 0 {
            let shown = if version.is_empty() { name } else { format!("{name}@{version}") };
            out.push((shown, format!("{database}.{physical}"), rows));
        }
    }
    Ok(out)
}

/// Rows of a ClickHouse table, over its HTTP interface.
async fn count(database: &str, table: &str) -> anyhow::Result<u64> {
    let url = std::env::var("MILLRACE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let quote = |s: &str| format!("`{}`", s.replace('\\', "\\\\").replace('`', "\\`"));
    let sql = format!("SELECT count() FROM {}.{}", quote(database), quote(table));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(url.trim_end_matches('/').to_string() + "/").body(Full::new(Bytes::from(sql)))?;
    let answer = client.request(req).await.map_err(|e| anyhow::anyhow!("ClickHouse at {url} cannot be reached to count the rows of {table}: {e}"))?;
    let status = answer.status();
    let body = answer.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    // A table that is already gone (dropped by hand: code 60, UNKNOWN_TABLE) holds nothing to lose.
    if !status.is_success() && text.contains("Code: 60") {
        return Ok(0);
    }
    anyhow::ensure!(status.is_success(), "counting the rows of {table}: ClickHouse answered {status}: {}", text.trim());
    Ok(text.trim().parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_directory_has_its_own_stable_names() {
        let a = app_key(Path::new("/home/me/My Shop"));
        assert_eq!(a, app_key(Path::new("/home/me/My Shop")), "stable");
        assert!(a.starts_with("my_shop_") && a.len() == "my_shop_".len() + 8, "{a}");
        assert_ne!(a, app_key(Path::new("/tmp/My Shop")), "the same name elsewhere is another app");
        assert!(app_key(Path::new("/srv/2024")).starts_with("app_2024_"));
        let s = resolve(Some(Path::new("/home/me/shop/app.py")), None, Some("mine".into()), None);
        assert_eq!((s.database.as_str(), s.clickhouse_database.as_str()), (format!("millrace_{}", app_key(Path::new("/home/me/shop"))).as_str(), "mine"));
        assert!(s.topic_namespace.starts_with("shop_") && s.topic_namespace.ends_with('_'));
        let d = resolve(None, None, None, None);
        assert_eq!((d.database.as_str(), d.clickhouse_database.as_str(), d.topic_namespace.as_str()), ("millrace", "millrace", ""));
    }
}
