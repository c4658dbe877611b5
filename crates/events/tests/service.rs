//! The event service over real gRPC (in-process server on an ephemeral port, memory log):
//! publish, subscribe with filters, resume after a cursor, ListEvents paging, error codes.
//! (`EventPublisher` and `tail` are tested in `crates/events-client/tests/publisher.rs`, the
//! alert and sink consumers of the role in `consumers.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::{EventType, ManualClock, pb};
use nightshift_events::{EventLog, EventService, LogOptions, MemoryLog, SERVICE_NAME};
use nightshift_rpc::GrpcServer;
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(15);

struct Server {
    endpoint: String,
    clock: ManualClock,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), nightshift_rpc::ServeError>>,
}

async fn start(opts: LogOptions) -> Server {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(opts).unwrap());
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 8, 0, 0).unwrap());
    let service = EventService::new(log).with_clock(Arc::new(clock.clone()));
    let closer = service.clone();
    let mut server = GrpcServer::new();
    server.routes().add_service(service.into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
        closer.close_streams();
    }));
    Server { endpoint, clock, stop: tx, serving }
}

async fn client(s: &Server) -> EventServiceClient<Channel> {
    EventServiceClient::connect(s.endpoint.clone()).await.unwrap()
}

fn ev(id: &str, ty: EventType, agent: &str) -> pb::Event {
    pb::Event { id: id.into(), r#type: ty.to_pb() as i32, agent_id: agent.into(), ..Default::default() }
}

async fn publish(c: &mut EventServiceClient<Channel>, e: pb::Event) -> String {
    c.publish(pb::PublishRequest { event: Some(e) }).await.unwrap().into_inner().cursor
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "message {:?} should name {needle:?}", s.message());
}

async fn next_event(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::Event {
    let msg = tokio::time::timeout(DEADLINE, stream.message()).await.expect("an item in time").unwrap();
    match msg.and_then(|m| m.item) {
        Some(pb::subscribe_response::Item::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn filter(types: &[EventType], agents: &[&str]) -> Option<pb::EventFilter> {
    Some(pb::EventFilter {
        agent_ids: agents.iter().map(|s| s.to_string()).collect(),
        run_ids: vec![],
        types: types.iter().map(|t| t.to_pb() as i32).collect(),
        namespaces: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_assigns_id_and_time_and_subscribe_filters() {
    let s = start(LogOptions::default()).await;
    let mut c = client(&s).await;
    let req = pb::SubscribeRequest { filter: filter(&[EventType::BackgroundTaskError], &[]), from: None };
    let mut errors = c.subscribe(req).await.unwrap().into_inner();
    let c1 = publish(&mut c, ev("", EventType::BackgroundTaskStarted, "a1")).await;
    let c2 = publish(&mut c, ev("", EventType::BackgroundTaskError, "a1")).await;
    assert_ne!(c1, c2);
    let e = next_event(&mut errors).await;
    assert_eq!(e.cursor, c2);
    assert_eq!(e.r#type, EventType::BackgroundTaskError.to_pb() as i32);
    assert!(uuid::Uuid::parse_str(&e.id).is_ok(), "server-assigned id: {}", e.id);
    assert_eq!(e.time, Some(nightshift_core::time::to_pb(nightshift_core::Clock::now(&s.clock))));
    // A time set by the publisher is kept; a cursor sent by a client is replaced.
    let t = nightshift_core::time::to_pb(Utc.with_ymd_and_hms(2025, 5, 5, 5, 5, 5).unwrap());
    let mut mine = ev("mine", EventType::BackgroundTaskError, "a2");
    mine.time = Some(t);
    mine.cursor = "bogus".into();
    let c3 = publish(&mut c, mine).await;
    let e = next_event(&mut errors).await;
    assert_eq!((e.id.as_str(), e.time, e.cursor.as_str()), ("mine", Some(t), c3.as_str()));
    // Publishing the same id again stores nothing new and returns the first cursor.
    let again = publish(&mut c, ev("mine", EventType::BackgroundTaskError, "a2")).await;
    assert_eq!(again, c3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resumes_after_a_cursor() {
    let s = start(LogOptions::default()).await;
    let mut c = client(&s).await;
    let mut cursors = Vec::new();
    for i in 0..10 {
        cursors.push(publish(&mut c, ev(&format!("e{i}"), EventType::ToolCall, "a1")).await);
    }
    use pb::subscribe_request::From;
    let req = pb::SubscribeRequest { filter: None, from: Some(From::AfterCursor(cursors[3].clone())) };
    let mut stream = c.subscribe(req).await.unwrap().into_inner();
    publish(&mut c, ev("live", EventType::ToolCall, "a1")).await;
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(next_event(&mut stream).await.id);
    }
    assert_eq!(got, ["e4", "e5", "e6", "e7", "e8", "e9", "live"]);
    // From the beginning, filtered by agent.
    publish(&mut c, ev("other", EventType::ToolCall, "a2")).await;
    let req = pb::SubscribeRequest { filter: filter(&[], &["a2"]), from: Some(From::FromBeginning(true)) };
    let mut stream = c.subscribe(req).await.unwrap().into_inner();
    assert_eq!(next_event(&mut stream).await.id, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_events_pages_and_filters() {
    let s = start(LogOptions::default()).await;
    let mut c = client(&s).await;
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 8, 0, 0).unwrap();
    let events: Vec<pb::PublishRequest> = (0..25)
        .map(|i| {
            let ty = if i % 5 == 0 { EventType::BackgroundTaskError } else { EventType::ToolCall };
            let mut e = ev(&format!("e{i}"), ty, if i < 20 { "a1" } else { "a2" });
            e.time = Some(nightshift_core::time::to_pb(base + chrono::Duration::seconds(i)));
            pb::PublishRequest { event: Some(e) }
        })
        .collect();
    let batch = c.publish_stream(futures::stream::iter(events)).await.unwrap().into_inner();
    assert_eq!(batch.published, 25);
    let list = |page_token: String, f: Option<pb::EventFilter>| pb::ListEventsRequest {
        filter: f,
        page_size: 10,
        page_token,
        since: None,
        until: None,
    };
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c.list_events(list(token, None)).await.unwrap().into_inner();
        pages += 1;
        ids.extend(page.events.iter().map(|e| e.id.clone()));
        if page.next_page_token.is_empty() {
            assert_eq!(page.events.last().unwrap().cursor, batch.last_cursor);
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(ids, (0..25).map(|i| format!("e{i}")).collect::<Vec<_>>());
    // Filters and time windows.
    let errors = c.list_events(list(String::new(), filter(&[EventType::BackgroundTaskError], &[]))).await.unwrap();
    let ids: Vec<String> = errors.into_inner().events.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["e0", "e5", "e10", "e15", "e20"]);
    let a2 = c.list_events(list(String::new(), filter(&[], &["a2"]))).await.unwrap().into_inner();
    assert_eq!(a2.events.len(), 5);
    let window = pb::ListEventsRequest {
        since: Some(nightshift_core::time::to_pb(base + chrono::Duration::seconds(3))),
        until: Some(nightshift_core::time::to_pb(base + chrono::Duration::seconds(6))),
        ..Default::default()
    };
    let ids: Vec<String> = c.list_events(window).await.unwrap().into_inner().events.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["e3", "e4", "e5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stream_larger_than_one_batch() {
    let s = start(LogOptions::default()).await;
    let mut c = client(&s).await;
    let reqs: Vec<pb::PublishRequest> =
        (0..600).map(|i| pb::PublishRequest { event: Some(ev(&format!("b{i}"), EventType::LlmCall, "a1")) }).collect();
    let r = c.publish_stream(futures::stream::iter(reqs)).await.unwrap().into_inner();
    assert_eq!(r.published, 600);
    let page = c.list_events(pb::ListEventsRequest { page_size: 1000, ..Default::default() }).await.unwrap();
    let events = page.into_inner().events;
    assert_eq!(events.len(), 600);
    assert_eq!(events.last().unwrap().cursor, r.last_cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let s = start(LogOptions { max_events: 5, ..LogOptions::default() }).await;
    let mut c = client(&s).await;
    use pb::subscribe_request::From;
    assert_code(c.publish(pb::PublishRequest { event: None }).await, Code::InvalidArgument, "event");
    assert_code(
        c.publish(pb::PublishRequest { event: Some(pb::Event::default()) }).await,
        Code::InvalidArgument,
        "event.type",
    );
    let mut unknown = ev("x", EventType::ToolCall, "a");
    unknown.r#type = 999;
    assert_code(c.publish(pb::PublishRequest { event: Some(unknown) }).await, Code::InvalidArgument, "event.type");
    let spaced = ev("has space", EventType::ToolCall, "a");
    assert_code(c.publish(pb::PublishRequest { event: Some(spaced) }).await, Code::InvalidArgument, "event.id");
    let mut huge = ev("huge", EventType::ToolCall, "a");
    huge.data = Some(nightshift_events_client::json_to_struct(serde_json::json!({"blob": "x".repeat(300 * 1024)})));
    assert_code(c.publish(pb::PublishRequest { event: Some(huge) }).await, Code::InvalidArgument, "limit");
    let stream = futures::stream::iter(vec![
        pb::PublishRequest { event: Some(ev("ok", EventType::ToolCall, "a")) },
        pb::PublishRequest { event: Some(pb::Event::default()) },
    ]);
    assert_code(c.publish_stream(stream).await, Code::InvalidArgument, "events[1].type");

    let list = |page_size, page_token: &str| pb::ListEventsRequest {
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    assert_code(c.list_events(list(1001, "")).await, Code::InvalidArgument, "page_size");
    assert_code(c.list_events(list(10, "garbage")).await, Code::InvalidArgument, "page_token");
    assert_code(c.list_events(list(10, "c1.not-a-cursor")).await, Code::InvalidArgument, "page_token");
    let bad_types = pb::ListEventsRequest {
        filter: Some(pb::EventFilter { types: vec![0], ..Default::default() }),
        ..Default::default()
    };
    assert_code(c.list_events(bad_types).await, Code::InvalidArgument, "filter.types[0]");
    let t = |s| Some(nightshift_core::time::to_pb(Utc.timestamp_opt(s, 0).unwrap()));
    let backwards = pb::ListEventsRequest { since: t(100), until: t(50), ..Default::default() };
    assert_code(c.list_events(backwards).await, Code::InvalidArgument, "until");
    let bad_ts =
        pb::ListEventsRequest { since: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), ..Default::default() };
    assert_code(c.list_events(bad_ts).await, Code::InvalidArgument, "since");

    let sub = |from| pb::SubscribeRequest { filter: None, from: Some(from) };
    assert_code(c.subscribe(sub(From::AfterCursor(String::new()))).await, Code::InvalidArgument, "after_cursor");
    assert_code(c.subscribe(sub(From::AfterCursor("x".into()))).await, Code::InvalidArgument, "after_cursor");
    let bad_agent = pb::SubscribeRequest { filter: filter(&[], &[""]), from: None };
    assert_code(c.subscribe(bad_agent).await, Code::InvalidArgument, "filter.agent_ids[0]");
    // A cursor whose successors were removed by retention (5 events kept): OUT_OF_RANGE.
    let first = publish(&mut c, ev("r0", EventType::ToolCall, "a")).await;
    for i in 1..10 {
        publish(&mut c, ev(&format!("r{i}"), EventType::ToolCall, "a")).await;
    }
    assert_code(c.subscribe(sub(From::AfterCursor(first.clone()))).await, Code::OutOfRange, "no longer retained");
    let token = format!("c1.{first}");
    assert_code(c.list_events(list(10, &token)).await, Code::OutOfRange, "page_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_subscriptions() {
    let s = start(LogOptions::default()).await;
    let mut c = client(&s).await;
    let cursor = publish(&mut c, ev("s0", EventType::ToolCall, "a1")).await;
    let mut stream = c.subscribe(pb::SubscribeRequest::default()).await.unwrap().into_inner();
    let mut other = c.subscribe(pb::SubscribeRequest::default()).await.unwrap().into_inner();
    publish(&mut c, ev("s1", EventType::ToolCall, "a1")).await;
    assert_eq!(next_event(&mut stream).await.id, "s1");
    assert_eq!(next_event(&mut other).await.id, "s1");
    // Without closing the streams, the graceful drain would wait for them forever.
    s.stop.send(()).unwrap();
    let status = tokio::time::timeout(DEADLINE, stream.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(DEADLINE, s.serving).await.expect("the server stops").unwrap().unwrap();
    assert!(!cursor.is_empty());
}
