//! In-process calls (`nightshift dev`'s roles calling each other): a client whose options route
//! the process's own endpoint in-process reaches the server's routes without the network —
//! the endpoint names a port nobody listens on — and through the same auth layer as a network
//! call; a call made before the server serves waits for it, one after it stopped fails
//! UNAVAILABLE.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use std::time::Duration;

use common::{FakeManager, admin_and_viewer};
use nightshift_rpc::{CallChannel, ClientOptions, GrpcServer, InProcess, Listener};
use tonic::Code;
use tonic::codegen::{Service, http};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A call to the stand-in manager through `channel`: its grpc-status and body.
async fn trigger(mut channel: CallChannel) -> (Option<String>, String) {
    let req = http::Request::post("/nightshift.v1.ManagerService/TriggerAgent")
        .header("content-type", "application/grpc")
        .body(tonic::body::Body::empty())
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let res = channel.call(req).await.unwrap();
    let status = res.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(axum::body::Body::new(res.into_body()), 1024).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
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

    let guard = admin_and_viewer();
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
    let channel = |key: &str| client(key).channel("endpoint", endpoint, timeout).unwrap();
    assert_eq!(trigger(channel("")).await, (Some("16".into()), String::new()), "UNAUTHENTICATED");
    assert_eq!(trigger(channel("viewer-key")).await, (Some("7".into()), String::new()), "PERMISSION_DENIED");
    assert_eq!(trigger(channel("admin-key")).await, (Some("0".into()), "reached".into()), "an admin reaches it");

    // Without the link the same endpoint goes to the network, where nothing listens.
    let network = health(ClientOptions::default()).await.unwrap_err();
    assert_eq!(network.code(), Code::Unavailable, "{network:?}");

    // After the server stopped, in-process calls fail as a refused connection would.
    stop.cancel();
    serving.await.unwrap().unwrap();
    let after = health(client("")).await.unwrap_err();
    assert_eq!(after.code(), Code::Unavailable, "{after:?}");
}
