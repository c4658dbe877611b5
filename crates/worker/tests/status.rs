//! `GetWorkerStatus` reports the local tools this worker's configuration really offers, with
//! their descriptions and argument schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use nightshift_core::pb;
use nightshift_queue::QueueSettings;
use nightshift_rpc::{GrpcServer, Role, serve_roles};
use nightshift_worker::{WorkerConfig, WorkerDeps, WorkerRole};

#[tokio::test]
async fn status_lists_the_tools_this_worker_offers_with_their_schemas() {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = WorkerConfig {
        // The scripted LLM and MCP servers run on loopback: the harness is the operator.
        allow: nightshift_core::operator_policy::OperatorPolicy::trusting(),
        queue: QueueSettings::at(format!("memory://status-{}", uuid::Uuid::new_v4().simple())),
        ..WorkerConfig::default()
    };
    // File tools have a root; http_get has no allow-list, so it would refuse every URL.
    cfg.tools.file_root = Some(root.path().to_owned());
    let role = WorkerRole::build(cfg, WorkerDeps::default()).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    tokio::spawn(serve_roles(roles, listener, std::future::pending()));

    let mut client = pb::worker_service_client::WorkerServiceClient::connect(endpoint).await.unwrap();
    let status = client.get_worker_status(pb::GetWorkerStatusRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = status.tools.iter().map(|t| t.name.as_str()).collect();
    for offered in ["calculate_area", "get_system_info", "format_data", "read_file", "list_dir"] {
        assert!(names.contains(&offered), "{offered} missing from {names:?}");
    }
    assert!(!names.contains(&"http_get"), "http_get without an allow-list is not offered: {names:?}");
    for tool in &status.tools {
        assert_eq!(tool.source, "local");
        assert!(!tool.description.is_empty(), "{} has no description", tool.name);
        let schema: serde_json::Value = serde_json::from_str(&tool.input_schema).unwrap();
        assert_eq!(schema["type"], "object", "{}: {schema}", tool.name);
    }
}
