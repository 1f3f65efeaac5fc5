//! The ingest APIs the worker serves, learned from the control plane (`ListResources`) every few seconds and at
//! once when a request names one it does not know yet, so an apply shows up without a restart.

use crate::schema::Schema;
use millrace_proto::v1::control_plane_client::ControlPlaneClient;
use millrace_proto::v1::{resource::Spec, ListResourcesRequest, ResourceKind, ResourceRef};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use millrace_proto::endpoints::Failover;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads made because a request missed are at least this far apart: a stream of unknown names costs the control
/// plane at most ten calls a second, and an API just applied is still found within this long.
const MISS_REFRESH_GAP: Duration = Duration::from_millis(100);

/// One ingest API at one version.
#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    /// `name` or `name/version`: its metrics label.
    pub label: String,
    pub version: String,
    pub stream: String,
    pub topic: String,
    pub dead_letter_topic: Option<String>,
    pub schema: Schema,
}

/// Where each API is served: its own path, or its name (the newest version) and name/version.
#[derive(Default)]
struct Routes {
    by_name: HashMap<String, Vec<Arc<Endpoint>>>,
    by_path: HashMap<String, Arc<Endpoint>>,
}

pub struct Catalog {
    client: ControlPlaneClient<Failover>,
    refreshes: prometheus::IntCounter,
    apis: RwLock<Option<Routes>>,
    last_refresh: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
}

/// What a lookup found.
pub enum Found {
    Api(Arc<Endpoint>),
    Unknown { known: Vec<String> },
    /// Nothing learned from the control plane yet.
    NotLoaded,
}

impl Catalog {
    pub fn new(client: ControlPlaneClient<Failover>, refreshes: prometheus::IntCounter) -> Arc<Self> {
        Arc::new(Self { client, refreshes, apis: RwLock::new(None), last_refresh: Mutex::new(None), refreshing: Default::default() })
    }

    /// Keeps the catalog fresh until the process ends.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot read the ingest APIs from the control plane; serving the last ones known");
            }
            tokio::time::sleep(every).await;
        }
    }

    pub async fn refresh(&self) -> Result<(), String> {
        self.refresh_since(None).await
    }

    /// Reads the catalog, unless a read that started after `asked` is already done (requests that miss at the same
    /// time share one read).
    async fn refresh_since(&self, asked: Option<Instant>) -> Result<(), String> {
        let _one = self.refreshing.lock().await;
        let last = *self.last_refresh.lock().expect("refresh lock");
        if let (Some(asked), Some(last)) = (asked, last) {
            if last >= asked {
                return Ok(());
            }
            // Misses wait for the next slot; those arriving meanwhile share its read.
            tokio::time::sleep_until(last + MISS_REFRESH_GAP).await;
        }
        *self.last_refresh.lock().expect("refresh lock") = Some(Instant::now());
        self.refreshes.inc();
        let mut client = self.client.clone();
        let req = ListResourcesRequest { kind: ResourceKind::Unspecified as i32 };
        let resources = match tokio::time::timeout(CALL_TIMEOUT, client.list_resources(req)).await {
            Err(_) => return Err(format!("no answer within {CALL_TIMEOUT:?}")),
            Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
            Ok(Ok(r)) => r.into_inner().resources,
        };
        let key = |kind: ResourceKind, name: &str, version: &str| (kind as i32, name.to_string(), version.to_string());
        let mut by_key = HashMap::new();
        for r in &resources {
            let (kind, name, version) = match r.resource.as_ref().and_then(|r| r.spec.as_ref()) {
                Some(Spec::Stream(s)) => (ResourceKind::Stream, &s.name, &s.version),
                Some(Spec::DeadLetterQueue(d)) => (ResourceKind::DeadLetterQueue, &d.name, &d.version),
                _ => continue,
            };
            by_key.insert(key(kind, name, version), r);
        }
        let mut apis = Routes::default();
        for r in &resources {
            let Some(Spec::IngestApi(api)) = r.resource.as_ref().and_then(|r| r.spec.as_ref()) else { continue };
            let dest = api.destination.clone().unwrap_or_default();
            let Some(stream) = by_key.get(&key(ResourceKind::Stream, &dest.name, &dest.version)) else { continue };
            let Some(Spec::Stream(s)) = stream.resource.as_ref().and_then(|r| r.spec.as_ref()) else { continue };
            // The API's own dead letter queue, else its stream's.
            let dlq = api.dead_letter_queue.as_ref().or(s.dead_letter_queue.as_ref());
            let dead_letter_topic = dlq.and_then(|d: &ResourceRef| {
                by_key.get(&key(ResourceKind::DeadLetterQueue, &d.name, &d.version)).map(|r| r.physical_name.clone())
            });
            let endpoint = Arc::new(Endpoint {
                name: api.name.clone(),
                label: if api.version.is_empty() { api.name.clone() } else { format!("{}/{}", api.name, api.version) },
                version: api.version.clone(),
                stream: s.name.clone(),
                topic: stream.physical_name.clone(),
                dead_letter_topic,
                schema: Schema::new(&s.fields, s.allow_extra_fields),
            });
            // An API with its own path is served there only (the control plane keeps paths distinct).
            if api.path.is_empty() {
                apis.by_name.entry(api.name.clone()).or_default().push(endpoint);
            } else {
                apis.by_path.insert(api.path.clone(), endpoint);
            }
        }
        for versions in apis.by_name.values_mut() {
            versions.sort_by(|a, b| version_order(&a.version, &b.version));
        }
        *self.apis.write().expect("catalog lock") = Some(apis);
        Ok(())
    }

    fn find(&self, path: &str) -> Found {
        let apis = self.apis.read().expect("catalog lock");
        let Some(apis) = apis.as_ref() else { return Found::NotLoaded };
        let path = path.trim_matches('/');
        let hit = apis.by_path.get(path).cloned().or_else(|| {
            let (name, version) = match path.split_once('/') {
                Some((n, v)) => (n, Some(v)),
                None => (path, None),
            };
            apis.by_name.get(name).and_then(|vs| match version {
                // The bare name is the newest version.
                None => vs.last().cloned(),
                Some(v) => vs.iter().find(|e| e.version == v).cloned(),
            })
        });
        match hit {
            Some(e) => Found::Api(e),
            None => {
                let mut known: Vec<String> = apis.by_name.values().flatten().map(|e| e.label.clone()).chain(apis.by_path.keys().cloned()).collect();
                known.sort();
                Found::Unknown { known }
            }
        }
    }

    /// The endpoint for `/ingest/<path>`: an API's own path, or `<name>[/<version>]`. On a miss the catalog is read
    /// again first (an apply may have just added it), so an API is served as soon as its apply has returned.
    pub async fn lookup(&self, path: &str) -> Found {
        let asked = Instant::now();
        match self.find(path) {
            Found::Api(e) => Found::Api(e),
            _ => {
                let _ = self.refresh_since(Some(asked)).await;
                self.find(path)
            }
        }
    }
}

/// Versions in order: dot-separated parts compared as numbers where both are numbers; unversioned first.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| v.split(['.', '_']).map(|p| (p.parse::<u64>().ok(), p.to_string())).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.0, y.0) {
            (Some(m), Some(n)) => m.cmp(&n),
            _ => x.1.cmp(&y.1),
        };
        if o.is_ne() {
            return o;
        }
    }
    // Equal so far: the longer version is the newer ("1.9.1" after "1.9").
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::version_order;

    #[test]
    fn newest_version_is_last() {
        let mut v = vec!["1.10", "", "1.9", "2", "1.9.1", "beta"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["", "1.9", "1.9.1", "1.10", "2", "beta"]);
    }
}
