//! [`EventPublisher`] and [`tail`] against a real event service (the events role as
//! `nightshift-events` builds it, on an ephemeral port, memory log): publishing with the builder, tailing history and following
//! through `Lagged`, and a publisher that never fails its caller when the service is down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::ops::ControlFlow;
use std::time::Duration;

use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::{AgentId, EventType, RunId, pb};
use nightshift_events::{EventsConfig, EventsRole};
use nightshift_events_client::{EventFilter, EventPublisher, PublisherOptions, TailFrom, TailOptions, tail};
use nightshift_rpc::{CallChannel, GrpcServer, Role, serve_roles};

const DEADLINE: Duration = Duration::from_secs(15);

struct Server {
    endpoint: String,
}

/// An event service on an ephemeral port; it stops when the test's runtime does.
async fn start(config: EventsConfig) -> Server {
    let role = EventsRole::build(config).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    tokio::spawn(serve_roles(roles, listener, std::future::pending()));
    Server { endpoint }
}

async fn client(s: &Server) -> EventServiceClient<CallChannel> {
    let channel = tonic::transport::Endpoint::from_shared(s.endpoint.clone()).unwrap().connect().await.unwrap();
    EventServiceClient::new(nightshift_rpc::traced(channel))
}

fn ev(id: &str, ty: EventType, agent: &str) -> pb::Event {
    pb::Event { id: id.into(), r#type: ty.to_pb() as i32, agent_id: agent.into(), ..Default::default() }
}

async fn publish(c: &mut EventServiceClient<CallChannel>, e: pb::Event) -> String {
    c.publish(pb::PublishRequest { event: Some(e) }).await.unwrap().into_inner().cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_tail() {
    // A one-event live buffer: the burst below overflows it, and `tail` must still deliver
    // every event once, in order (resubscribing after the Lagged cursor when that happens).
    let s = start(EventsConfig { subscriber_buffer: 1, ..EventsConfig::default() }).await;
    let publisher =
        EventPublisher::connect_lazy(&s.endpoint, &Default::default(), "worker/test", PublisherOptions::default())
            .unwrap();
    let agent = AgentId::from_string("agent-1");
    let run = RunId::from_string("run-1");
    publisher.emit(EventType::BackgroundTaskStarted, Some(&agent), Some(&run), serde_json::json!({}));
    publisher
        .event(EventType::BackgroundAgentStatus)
        .agent(&agent)
        .agent_name("health")
        .run(&run)
        .data(serde_json::json!({"status": "running"}))
        .emit();
    publisher.flush().await;
    assert_eq!((publisher.published(), publisher.dropped()), (2, 0));

    let mut c = client(&s).await;
    let mut seen = Vec::new();
    let last = tail(&mut c, TailOptions { from: TailFrom::Beginning, ..Default::default() }, |e| {
        seen.push(e.clone());
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(last.as_deref(), Some(seen[1].cursor.as_str()));
    assert_eq!(seen[1].source, "worker/test");
    assert_eq!(seen[1].agent_name, "health");
    let json = nightshift_events_client::event_to_json(&seen[1]);
    assert_eq!(json["type"], "BACKGROUND_AGENT_STATUS");
    assert_eq!(json["data"], serde_json::json!({"status": "running"}));

    // Follow from the last cursor while 2000 events arrive, stop at the marker.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let after = seen[1].cursor.clone();
    let mut c2 = client(&s).await;
    let follower = tokio::spawn(async move {
        let opts = TailOptions { from: TailFrom::After(after), follow: true, filter: EventFilter::default() };
        tail(&mut c2, opts, |e| {
            let _ = tx.send(e.id.clone());
            if e.id == "marker" { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .await
    });
    for chunk in 0..4 {
        let reqs: Vec<pb::PublishRequest> = (chunk * 500..(chunk + 1) * 500)
            .map(|i| pb::PublishRequest { event: Some(ev(&format!("f{i}"), EventType::ToolCall, "a1")) })
            .collect();
        c.publish_stream(futures::stream::iter(reqs)).await.unwrap();
    }
    publish(&mut c, ev("marker", EventType::ToolCall, "a1")).await;
    tokio::time::timeout(DEADLINE, follower).await.unwrap().unwrap().unwrap();
    let mut got = Vec::new();
    while let Ok(id) = rx.try_recv() {
        got.push(id);
    }
    let want: Vec<String> = (0..2000).map(|i| format!("f{i}")).chain(["marker".to_owned()]).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn publisher_never_fails_the_caller() {
    // Nothing listens on this port: every event is dropped, counted, and emit() returns at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let opts =
        PublisherOptions { buffer: 4, max_attempts: 2, retry_backoff: Duration::from_millis(10), ..Default::default() };
    let publisher = EventPublisher::connect_lazy(&endpoint, &Default::default(), "test", opts).unwrap();
    for _ in 0..50 {
        publisher.emit(EventType::ToolCall, None, None, serde_json::json!({"n": 1}));
    }
    tokio::time::timeout(DEADLINE, publisher.flush()).await.unwrap();
    assert_eq!(publisher.published(), 0);
    assert_eq!(publisher.dropped(), 50);
}
