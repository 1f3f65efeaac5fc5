use super::*;
use crate::v1::worker_coordinator_client::WorkerCoordinatorClient;
use crate::v1::worker_coordinator_server::{WorkerCoordinator, WorkerCoordinatorServer};
use crate::v1::*;
use tonic::{Code, Request, Response, Status};

#[test]
fn lists_with_or_without_scheme_parse_to_urls() {
    let a = Addresses::parse(" 127.0.0.1:50051, http://10.0.0.2:7000/ ,grpc://cp.example:1,").unwrap();
    assert_eq!(Addresses::parse("https://cp.example:443,cp:1").unwrap().urls(), ["https://cp.example:443", "http://cp:1"]);
    assert_eq!(Addresses::parse("https://cp.example:443").unwrap().host_ports(), "cp.example:443");
    assert_eq!(a.urls(), ["http://127.0.0.1:50051", "http://10.0.0.2:7000", "http://cp.example:1"]);
    assert_eq!(a.first(), "http://127.0.0.1:50051");
    assert_eq!(a.host_ports(), "127.0.0.1:50051,10.0.0.2:7000,cp.example:1");
    assert_eq!(a.to_string(), "http://127.0.0.1:50051,http://10.0.0.2:7000,http://cp.example:1");
    assert_eq!(Addresses::parse("[::1]:50051").unwrap().urls(), ["http://[::1]:50051"]);
    assert_eq!("localhost:9".parse::<Addresses>().unwrap().urls(), ["http://localhost:9"]);
}

#[test]
fn a_bad_address_is_named_with_what_to_write() {
    for (list, bad, why) in [
        ("127.0.0.1:50051,10.0.0.2", "10.0.0.2", "has no port"),
        ("https://cp", "https://cp", "has no port"),
        ("ftp://cp:1", "ftp://cp:1", "scheme"),
        ("cp:1/api", "cp:1/api", "has a path"),
        ("cp:port", "cp:port", "is not a host and port"),
        ("cp:0", "cp:0", "has no port"),
        ("user@cp:1", "user@cp:1", "user name"),
        ("http://:1", "http://:1", "host"),
    ] {
        let e = Addresses::parse(list).unwrap_err().to_string();
        assert!(e.contains(&format!("{bad:?}")) && e.contains(why), "{list}: {e}");
        assert!(e.contains("write host:port, http://host:port or https://host:port (TLS), several separated by commas"), "{e}");
    }
    assert_eq!(Addresses::parse(" , ").unwrap_err(), AddressError::Empty);
    assert!(Addresses::parse("").unwrap_err().to_string().contains("write host:port"));
}

/// A coordinator that registers everyone (naming itself in the worker id), or answers every call UNAVAILABLE.
struct Coordinator {
    name: &'static str,
    unavailable: bool,
}

#[tonic::async_trait]
impl WorkerCoordinator for Coordinator {
    async fn register(&self, _: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        if self.unavailable {
            return Err(Status::unavailable(format!("{} is not the leader", self.name)));
        }
        Ok(Response::new(RegisterResponse { worker_id: self.name.into(), ..Default::default() }))
    }
    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        if self.unavailable {
            return Err(Status::unavailable(format!("{} is not the leader", self.name)));
        }
        Ok(Response::new(HeartbeatResponse { lease_ms: 1, ..Default::default() }))
    }
    type WatchAssignmentsStream = tokio_stream::Empty<Result<AssignmentSet, Status>>;
    async fn watch_assignments(&self, _: Request<WatchAssignmentsRequest>) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn report_progress(&self, _: Request<ReportProgressRequest>) -> Result<Response<ReportProgressResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn deregister(&self, _: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// Serves a coordinator on a free port until the returned sender is dropped; its `host:port`.
async fn serve(name: &'static str, unavailable: bool) -> (String, tokio::sync::oneshot::Sender<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = WorkerCoordinatorServer::new(Coordinator { name, unavailable });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(l), async {
                let _ = rx.await;
            }),
    );
    (addr, tx)
}

fn dead_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

async fn register(c: &mut WorkerCoordinatorClient<Failover>) -> Result<String, Status> {
    c.register(RegisterRequest::default()).await.map(|r| r.into_inner().worker_id)
}

#[tokio::test]
async fn a_dead_address_first_is_skipped_and_the_live_one_kept() {
    let (live, _stop) = serve("live", false).await;
    let dead = dead_port();
    let f = Failover::new(&Addresses::parse(&format!("{dead},{live}")).unwrap(), &Default::default(), |e| e);
    let mut c = WorkerCoordinatorClient::new(f.clone());
    assert_eq!(register(&mut c).await.unwrap(), "live");
    assert_eq!(f.current(), format!("http://{live}"), "sticks to the address that answered");
    assert_eq!(register(&mut c).await.unwrap(), "live");
}

#[tokio::test]
async fn unavailable_moves_on_and_a_stopped_control_plane_is_left_for_the_next() {
    let (follower, _f) = serve("follower", true).await;
    let (a, stop_a) = serve("a", false).await;
    let (b, _b) = serve("b", false).await;
    let f = Failover::new(&Addresses::parse(&format!("{follower},{a},{b}")).unwrap(), &Default::default(), |e| e);
    let mut c = WorkerCoordinatorClient::new(f.clone());
    assert_eq!(register(&mut c).await.unwrap(), "a", "UNAVAILABLE tries the next address");
    drop(stop_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(register(&mut c).await.unwrap(), "b", "a stopped address is left within the call");
    assert_eq!(f.current(), format!("http://{b}"));
}

#[tokio::test]
async fn when_nothing_answers_the_error_is_unavailable_and_names_every_address() {
    let (dead1, dead2) = (dead_port(), dead_port());
    let mut c = WorkerCoordinatorClient::new(Failover::new(&Addresses::parse(&format!("{dead1},{dead2}")).unwrap(), &Default::default(), |e| e));
    let e = register(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&dead1) && e.message().contains(&dead2), "{}", e.message());

    // Only a replica that cannot serve: its own answer, which may name the leader, reaches the caller.
    let (follower, _f) = serve("follower", true).await;
    let mut c = WorkerCoordinatorClient::new(Failover::new(&Addresses::parse(&format!("{dead1},{follower}")).unwrap(), &Default::default(), |e| e));
    let e = register(&mut c).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unavailable, "follower is not the leader"));
}

#[tokio::test]
async fn an_address_that_accepts_but_never_answers_costs_one_attempt_timeout() {
    // A listener nobody accepts from: connections complete (the backlog) but no gRPC answer ever comes.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (live, _stop) = serve("live", false).await;
    let list = Addresses::parse(&format!("{},{live}", hung.local_addr().unwrap())).unwrap();
    let f = Failover::new(&list, &Default::default(), |e| e).attempt_timeout(Duration::from_millis(300));
    let mut c = WorkerCoordinatorClient::new(f.clone());
    let started = std::time::Instant::now();
    let beat = c.heartbeat(HeartbeatRequest::default()).await.expect("a heartbeat is repeated on the next address");
    assert_eq!(beat.into_inner().lease_ms, 1);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // A call's own deadline is not retried elsewhere, but the next call goes to the next address.
    let f = Failover::new(&list, &Default::default(), |e| e);
    let mut c = WorkerCoordinatorClient::new(f.clone());
    let mut req = Request::new(RegisterRequest::default());
    req.set_timeout(Duration::from_millis(300));
    assert!(c.register(req).await.is_err());
    assert_eq!(f.current(), format!("http://{live}"));
    assert_eq!(register(&mut c).await.unwrap(), "live");
}

#[tokio::test]
async fn a_registration_that_got_no_answer_is_not_made_again_elsewhere() {
    // The silent address may have registered the worker: registering again at the next one would leave a ghost
    // holding units. The call fails saying so; the next one goes to the next address.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (live, _stop) = serve("live", false).await;
    let list = Addresses::parse(&format!("{},{live}", hung.local_addr().unwrap())).unwrap();
    let f = Failover::new(&list, &Default::default(), |e| e).attempt_timeout(Duration::from_millis(300));
    let mut c = WorkerCoordinatorClient::new(f.clone());
    let e = register(&mut c).await.expect_err("not repeated on the live address");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("was not repeated on another address"), "{}", e.message());
    assert_eq!(f.current(), format!("http://{live}"));
    assert_eq!(register(&mut c).await.unwrap(), "live");
}
