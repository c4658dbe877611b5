//! Web pages on a gRPC server's port (`GrpcServer::pages`, as `nightshift dev` serves the
//! console): every other path reaches the pages over HTTP/1.1, and no request reaches a gRPC
//! service without passing the auth layer, whatever its content type or HTTP version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use std::convert::Infallible;
use std::sync::Arc;

use nightshift_core::Namespaces;
use nightshift_core::auth::{Principal, Role};
use nightshift_rpc::{GrpcServer, Guard, Listener, StaticKeys, WithStaticKeys, is_grpc_path};
use tonic::codegen::http;
use tonic::server::NamedService;

/// Stands in for the manager: answers every call with `reached` (and grpc-status 0).
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
        let res =
            http::Response::builder().header("grpc-status", "0").body(tonic::body::Body::new("reached".to_owned()));
        std::future::ready(Ok(res.unwrap()))
    }
}

struct Nobody;

#[async_trait::async_trait]
impl nightshift_rpc::Authenticator for Nobody {
    async fn authenticate(&self, _: &str) -> Result<Principal, nightshift_rpc::AuthFailure> {
        Err(nightshift_rpc::AuthFailure::Refused("unknown".into()))
    }
}

#[test]
fn grpc_paths_are_told_from_pages() {
    assert!(is_grpc_path("/nightshift.v1.ManagerService/TriggerAgent"));
    assert!(is_grpc_path("/grpc.health.v1.Health/Check"));
    assert!(!is_grpc_path("/"));
    assert!(!is_grpc_path("/agents/default/a.b"));
    assert!(!is_grpc_path("/static/console.css"));
    assert!(!is_grpc_path(""));
}

#[tokio::test]
async fn pages_share_the_port_and_grpc_calls_stay_guarded() {
    let keys = StaticKeys::new([
        ("admin-key".to_owned(), Principal { name: "a".into(), role: Role::Admin, namespaces: Namespaces::All }),
        ("viewer-key".to_owned(), Principal { name: "v".into(), role: Role::Viewer, namespaces: Namespaces::All }),
    ]);
    let guard = Guard::Required(Arc::new(WithStaticKeys { keys, rest: Nobody }));
    let tcp = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", tcp.local_addr().unwrap());
    let mut server = GrpcServer::new();
    server.routes().add_service(FakeManager);
    server.pages(axum::Router::new().route("/agents", axum::routing::get(|| async { "the agents page" })));
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    let serving =
        tokio::spawn(server.serve(Listener::from(tcp).with_guard(guard), async move { until.cancelled().await }));

    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/agents")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "the agents page");

    let call = async |key: Option<&str>, content_type: &str| {
        let mut req = http
            .post(format!("{base}/nightshift.v1.ManagerService/TriggerAgent"))
            .header("content-type", content_type)
            .body("x");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let res = req.send().await.unwrap();
        let status = res.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        (status, res.text().await.unwrap())
    };
    // Not gRPC by its content type, over HTTP/1.1, without a credential: still the auth layer's.
    for content_type in ["text/plain", "application/grpc", "application/x-www-form-urlencoded"] {
        let (status, body) = call(None, content_type).await;
        assert_eq!(status.as_deref(), Some("16"), "{content_type}: UNAUTHENTICATED");
        assert_ne!(body, "reached", "{content_type}");
    }
    // Paths that are not gRPC paths by their first segment never reach a gRPC service either,
    // sent as raw bytes (an HTTP client would normalize the dot segments away).
    for path in [
        "//nightshift.v1.ManagerService/TriggerAgent",
        "/./nightshift.v1.ManagerService/TriggerAgent",
        "/agents/../nightshift.v1.ManagerService/TriggerAgent",
        "/nightshift%2Ev1%2EManagerService/TriggerAgent",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 "), "{path}: {answer}");
        assert!(!answer.contains("reached"), "{path} reached the service without the auth layer: {answer}");
    }
    let (status, body) = call(Some("viewer-key"), "text/plain").await;
    assert_eq!((status.as_deref(), body.as_str()), (Some("7"), ""), "a viewer may not trigger");
    let (status, body) = call(Some("admin-key"), "application/grpc").await;
    assert_eq!((status.as_deref(), body.as_str()), (Some("0"), "reached"), "an admin reaches the service");

    // gRPC over HTTP/2 still works on the same port.
    let channel = tonic::transport::Channel::from_shared(base.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    stop.cancel();
    serving.await.unwrap().unwrap();
}
