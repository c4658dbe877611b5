//! In-process calls (`nightshift dev`'s roles calling each other): a client whose options route
//! the process's own endpoint in-process reaches the server's routes without the network —
//! the endpoint names a port nobody listens on — and through the same auth layer as a network
//! call; a call made before the server serves waits for it, one after it stopped fails
//! UNAVAILABLE.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::Namespaces;
use nightshift_core::auth::{Principal, Role};
use nightshift_proto::v1::TriggerAgentRequest;
use nightshift_proto::v1::manager_service_client::ManagerServiceClient;
use nightshift_rpc::{ClientOptions, GrpcServer, Guard, InProcess, Listener, StaticKeys, WithStaticKeys};
use tonic::Code;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Stands in for the manager: answers every call it is reached with NOT_FOUND "reached"
/// (trailers-only), so that a caller can tell it got through the auth layer.
#[derive(Clone)]
struct FakeManager;

impl NamedService for FakeManager {
    const NAME: &'static str = "nightshift.v1.ManagerService";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for FakeManager {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::not_found("reached").into_http()))
    }
}

struct Nobody;

#[async_trait::async_trait]
impl nightshift_rpc::Authenticator for Nobody {
    async fn authenticate(&self, _: &str) -> Result<Principal, nightshift_rpc::AuthFailure> {
        Err(nightshift_rpc::AuthFailure::Refused("unknown".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_calls_reach_the_guarded_routes_without_the_network() {
    // Port 1 on loopback: nothing listens there, so only an in-process call can be answered.
    let endpoint = "http://127.0.0.1:1";
    let link = InProcess::to(endpoint);
    let client = |key: &str| ClientOptions { api_key: key.to_owned(), in_process: link.clone(), ..Default::default() };
    let timeout = Duration::from_secs(5);
    let health = |options: ClientOptions| async move {
        let mut health = HealthClient::new(options.channel("endpoint", endpoint, timeout).unwrap());
        health.check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status)
    };

    // Made before the server serves: the call waits for it.
    let early = tokio::spawn(health(client("")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!early.is_finished(), "a call before the server serves waits for it");

    let keys = StaticKeys::new([
        ("admin-key".to_owned(), Principal { name: "a".into(), role: Role::Admin, namespaces: Namespaces::All }),
        ("viewer-key".to_owned(), Principal { name: "v".into(), role: Role::Viewer, namespaces: Namespaces::All }),
    ]);
    let guard = Guard::Required(Arc::new(WithStaticKeys { keys, rest: Nobody }));
    let tcp = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let mut server = GrpcServer::new();
    server.routes().add_service(FakeManager);
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    let listener = Listener::from(tcp).with_guard(guard).with_in_process(link.clone());
    let serving = tokio::spawn(server.serve(listener, async move { until.cancelled().await }));
    const SERVING: i32 = 1;
    assert_eq!(early.await.unwrap().unwrap(), SERVING);

    // Through the server's auth layer, as over the network.
    let trigger = |key: &'static str| {
        let channel = client(key).channel("endpoint", endpoint, timeout).unwrap();
        async move {
            let mut manager = ManagerServiceClient::new(channel);
            manager.trigger_agent(TriggerAgentRequest::default()).await.unwrap_err()
        }
    };
    assert_eq!(trigger("").await.code(), Code::Unauthenticated);
    assert_eq!(trigger("viewer-key").await.code(), Code::PermissionDenied);
    let reached = trigger("admin-key").await;
    assert_eq!((reached.code(), reached.message()), (Code::NotFound, "reached"), "{reached:?}");

    // Without the link the same endpoint goes to the network, where nothing listens.
    let network = health(ClientOptions::default()).await.unwrap_err();
    assert_eq!(network.code(), Code::Unavailable, "{network:?}");

    // After the server stopped, in-process calls fail as a refused connection would.
    stop.cancel();
    serving.await.unwrap().unwrap();
    let after = health(client("")).await.unwrap_err();
    assert_eq!(after.code(), Code::Unavailable, "{after:?}");
}
