//! Web pages on a gRPC server's port (`GrpcServer::pages`, as `nightshift dev` serves the
//! console): every other path reaches the pages over HTTP/1.1, and no request reaches a gRPC
//! service without passing the auth layer, whatever its content type or HTTP version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use common::{FakeManager, admin_and_viewer};
use nightshift_rpc::{GrpcServer, Listener, is_grpc_path};

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
    let guard = admin_and_viewer();
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
