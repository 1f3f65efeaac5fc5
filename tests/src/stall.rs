//! A `WorkerCoordinator` in front of a control plane that forwards every call, and can hold one heartbeat without
//! ever answering it (nor passing it on), as a request lost in a network hiccup: the connection and every other
//! call keep working, so only the worker's handling of that one heartbeat is tested. (The byte-level `proxy` can
//! only stall whole connections, and then the transport's keepalive, not the heartbeat, decides what happens.)
//! Workers also read the catalog (`ControlPlane`) from their control plane address; this proxy does not serve it,
//! which only costs them the ingest APIs (and a warning).

use millrace_proto::v1::worker_coordinator_client::WorkerCoordinatorClient;
use millrace_proto::v1::worker_coordinator_server::{WorkerCoordinator, WorkerCoordinatorServer};
use millrace_proto::v1::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub struct StallProxy {
    pub port: u16,
    stall_next: Arc<AtomicBool>,
    stalled: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Forward {
    client: WorkerCoordinatorClient<Channel>,
    stall_next: Arc<AtomicBool>,
    stalled: Arc<AtomicU64>,
}

impl StallProxy {
    /// Forwards to the control plane at `target` (a URL).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let channel = tonic::transport::Endpoint::from_shared(target.to_string()).expect("control plane URL").connect_lazy();
        let (stall_next, stalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let forward = Forward { client: WorkerCoordinatorClient::new(channel), stall_next: stall_next.clone(), stalled: stalled.clone() };
        let task = tokio::spawn(async move {
            let incoming = futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
            let _ = tonic::transport::Server::builder().add_service(WorkerCoordinatorServer::new(forward)).serve_with_incoming(incoming).await;
        });
        Self { port, stall_next, stalled, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next heartbeat gets no answer, ever.
    pub fn stall_next_heartbeat(&self) {
        self.stall_next.store(true, Ordering::SeqCst);
    }

    /// Heartbeats held so far.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tonic::async_trait]
impl WorkerCoordinator for Forward {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.client.clone().register(req.into_inner()).await
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        if self.stall_next.swap(false, Ordering::SeqCst) {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            // Held until the worker gives up on it (its request is then dropped, and this with it).
            std::future::pending::<()>().await;
        }
        self.client.clone().heartbeat(req.into_inner()).await
    }

    type WatchAssignmentsStream = tonic::codec::Streaming<AssignmentSet>;

    async fn watch_assignments(&self, req: Request<WatchAssignmentsRequest>) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        self.client.clone().watch_assignments(req.into_inner()).await
    }

    async fn report_progress(&self, req: Request<ReportProgressRequest>) -> Result<Response<ReportProgressResponse>, Status> {
        self.client.clone().report_progress(req.into_inner()).await
    }

    async fn deregister(&self, req: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        self.client.clone().deregister(req.into_inner()).await
    }
}
