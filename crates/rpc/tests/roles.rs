//! `serve_roles`: how a process with several roles stops — on a signal, draining while the
//! server still answers (and reports NOT_SERVING), or at once when a role fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_rpc::{CancellationToken, GrpcServer, Role, RoleError, ServeError, serve_roles};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Fails as soon as it runs.
struct Failing;

#[async_trait::async_trait]
impl Role for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn mount(&self, _server: &mut GrpcServer) {}
    async fn run(self: Box<Self>, _shutdown: CancellationToken) -> Result<(), RoleError> {
        Err("cannot reach its backend".into())
    }
}

/// Panics in its background work.
struct Panicking;

#[async_trait::async_trait]
impl Role for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn mount(&self, _server: &mut GrpcServer) {}
    #[allow(clippy::panic)]
    async fn run(self: Box<Self>, _shutdown: CancellationToken) -> Result<(), RoleError> {
        panic!("a bug in the role");
    }
}

/// Only answers requests (the default `run`).
struct Idle;

#[async_trait::async_trait]
impl Role for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }
    fn mount(&self, _server: &mut GrpcServer) {}
}

/// On shutdown, asks the process's own server for its health, as a draining worker calls the
/// manager on the same port in `nightshift dev`.
struct Draining {
    endpoint: String,
    seen: Arc<Mutex<Option<Result<i32, String>>>>,
}

#[async_trait::async_trait]
impl Role for Draining {
    fn name(&self) -> &'static str {
        "draining"
    }
    fn mount(&self, _server: &mut GrpcServer) {}
    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        shutdown.cancelled().await;
        let answer = async {
            let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut client = HealthClient::new(channel);
            let reply = client.check(HealthCheckRequest { service: String::new() }).await.map_err(|e| e.to_string())?;
            Ok(reply.into_inner().status)
        };
        *self.seen.lock().unwrap() = Some(answer.await);
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_role_stops_the_process_and_names_itself() {
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(Idle), Box::new(Failing)];
    let result = tokio::time::timeout(Duration::from_secs(10), serve_roles(roles, listener, std::future::pending()))
        .await
        .expect("the process stops without a signal");
    match result {
        Err(ServeError::Role { role, source }) => {
            assert_eq!(role, "failing");
            assert_eq!(source.to_string(), "cannot reach its backend");
        }
        other => panic!("expected the failing role's error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_role_stops_the_process_too() {
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(Idle), Box::new(Panicking)];
    let result = tokio::time::timeout(Duration::from_secs(10), serve_roles(roles, listener, std::future::pending()))
        .await
        .expect("the process stops without a signal");
    match result {
        Err(ServeError::Role { role, source }) => {
            assert_eq!(role, "panicking");
            assert!(source.to_string().contains("panicked"), "{source}");
        }
        other => panic!("expected the panicking role's error, got {other:?}"),
    }
}

#[tokio::test]
async fn roles_drain_while_the_server_still_answers_not_serving() {
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(None));
    let roles: Vec<Box<dyn Role>> = vec![Box::new(Idle), Box::new(Draining { endpoint, seen: seen.clone() })];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve_roles(roles, listener, async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving).await.expect("stops").unwrap().unwrap();
    let seen = seen.lock().unwrap().clone().expect("the draining role ran to its end");
    assert_eq!(seen, Ok(ServingStatus::NotServing as i32), "answered during the drain, as NOT_SERVING");
}
