//! The consumers the events role runs when configured (`[alerts]`, `[sink]`), end to end: the
//! role served by `serve_roles` on an ephemeral port, events published over gRPC (the services'
//! `EventPublisher`, or plain Publish calls), a real HTTP receiver for the webhook (axum on
//! loopback), a real file for the sink, and Redis for the restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::path::{Path, PathBuf};
use std::time::Duration;

use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::{EventType, pb};
use nightshift_events::{AlertPolicy, EventsBuildError, EventsConfig, EventsRole, SinkConfig};
use nightshift_events_client::{EventPublisher, PublisherOptions, json_to_struct};
use nightshift_rpc::{GrpcServer, Role, ServeError, serve_roles};
use nightshift_testkit::webhook::WebhookReceiver;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);

/// The events role as the binary runs it, until `stop`.
struct Running {
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), ServeError>>,
}

async fn start(config: EventsConfig) -> Running {
    let role = EventsRole::build(config).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    let serving = tokio::spawn(serve_roles(roles, listener, async move {
        let _ = stopped.await;
    }));
    Running { endpoint, stop, serving }
}

impl Running {
    async fn client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::connect(self.endpoint.clone()).await.unwrap()
    }

    /// A graceful stop, as on SIGTERM; the role's consumers must let it finish.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.serving).await.expect("the role stops").unwrap().unwrap();
    }
}

fn failure(id: &str, agent: &str, run: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        r#type: EventType::BackgroundTaskError.to_pb() as i32,
        agent_id: agent.into(),
        agent_name: format!("{agent}-name"),
        run_id: run.into(),
        data: Some(json_to_struct(serde_json::json!({"error": format!("{run} broke")}))),
        ..Default::default()
    }
}

fn event(id: &str, ty: EventType) -> pb::Event {
    pb::Event { id: id.into(), r#type: ty.to_pb() as i32, agent_id: "a1".into(), ..Default::default() }
}

async fn publish(c: &mut EventServiceClient<Channel>, e: pb::Event) -> String {
    c.publish(pb::PublishRequest { event: Some(e) }).await.unwrap().into_inner().cursor
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line {l:?}: {e}")))
        .collect()
}

fn ids(lines: &[serde_json::Value]) -> Vec<&str> {
    lines.iter().map(|l| l["id"].as_str().unwrap()).collect()
}

/// Waits until `done` holds, failing with `what` after the deadline.
async fn eventually(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alerts(hook: &WebhookReceiver) -> AlertPolicy {
    AlertPolicy {
        webhook_url: hook.url.clone(),
        consecutive_failures: 2,
        min_interval: Duration::from_secs(3600),
        retry_backoff: Duration::from_millis(20),
        ..AlertPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_post_once_per_rule_match_retry_and_ignore_a_redelivered_event() {
    let hook = WebhookReceiver::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    // A memory log keeping 4 events: once "fail-1" is evicted, publishing its id again stores it
    // again, and the consumers receive it a second time (the sink shows that they did).
    let config = EventsConfig {
        max_events: 4,
        alerts: Some(alerts(&hook)),
        sink: Some(SinkConfig { path: sink.clone() }),
        ..EventsConfig::default()
    };
    let role = start(config).await;
    let publisher =
        EventPublisher::connect_lazy(&role.endpoint, &Default::default(), "worker/test", PublisherOptions::default())
            .unwrap();
    publisher.publish(failure("fail-1", "a1", "r1"));
    publisher.publish(failure("fail-1", "a1", "r1")); // within the log's dedup: stored once
    for i in 0..5 {
        publisher.publish(event(&format!("tool-{i}"), EventType::ToolCall));
    }
    publisher.publish(failure("fail-1", "a1", "r1")); // evicted meanwhile: stored and delivered again
    publisher.publish(failure("fail-2", "a1", "r2")); // the second failure in a row of a1
    publisher.publish(failure("fail-3", "a1", "r3")); // rate limited (and the streak alerted once)
    publisher.publish(failure("fail-4", "a2", "r4")); // another agent
    // A fresh agent's failure alerts; alerts go out in order, so once it arrived every alert
    // the events before it raised has arrived too.
    publisher.publish(failure("sentinel", "sentinel", "rs"));
    publisher.flush().await;
    assert_eq!(publisher.dropped(), 0);

    let expected = [
        "fail-1", "tool-0", "tool-1", "tool-2", "tool-3", "tool-4", "fail-1", "fail-2", "fail-3", "fail-4", "sentinel",
    ];
    eventually(|| format!("sink lines {:?}", ids(&lines(&sink))), || lines(&sink).len() >= expected.len()).await;
    let written = lines(&sink);
    assert_eq!(ids(&written), expected, "one line per stored event, in log order");
    assert_eq!(written[0]["type"], "BACKGROUND_TASK_ERROR");
    assert_eq!(written[0]["data"]["error"], "r1 broke");

    let texts = hook.wait_for("sentinel-name", DEADLINE).await;
    assert_eq!(texts.len(), 4, "one POST per rule match: {texts:#?}");
    assert!(texts[0].contains("a1-name") && texts[0].contains("`r1` failed: r1 broke"), "{}", texts[0]);
    // Had the redelivered fail-1 counted, the streak alert would name r1 and fail-2 be rate limited.
    assert!(texts[1].contains("failed 2 runs in a row") && texts[1].contains("`r2`"), "{}", texts[1]);
    assert!(texts[2].contains("a2-name") && texts[2].contains("`r4`"), "{}", texts[2]);
    assert!(texts[3].contains("`rs`"), "{}", texts[3]);
    assert_eq!(hook.calls(), 5, "the first POST got 503 and was retried once");
    assert!(!cursor_file_of(&sink).exists(), "the memory log keeps no cursor file");
    role.stop().await;
}

fn cursor_file_of(sink: &Path) -> PathBuf {
    PathBuf::from(format!("{}.cursor", sink.display()))
}

/// The cursor of the last line of the sink file.
fn last_cursor(sink: &Path) -> String {
    lines(sink).last().and_then(|l| l["cursor"].as_str()).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_sink_resumes_after_its_cursor_and_alerts_do_not_replay() {
    let hook = WebhookReceiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let prefix = format!("nstest_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let base = EventsConfig {
        backend_url: nightshift_testkit::redis_url(),
        prefix: prefix.clone(),
        ..EventsConfig::default()
    };
    let with_consumers =
        EventsConfig { alerts: Some(alerts(&hook)), sink: Some(SinkConfig { path: sink.clone() }), ..base.clone() };

    let first = start(with_consumers.clone()).await;
    let mut c = first.client().await;
    publish(&mut c, event("s1", EventType::RunQueued)).await;
    publish(&mut c, failure("s2", "a1", "r1")).await;
    eventually(|| format!("sink {:?}", ids(&lines(&sink))), || lines(&sink).len() == 2).await;
    eventually(|| format!("alerts {:?}", hook.texts()), || hook.texts().len() == 1).await;
    first.stop().await;

    // Events appended while no sink runs.
    let without = start(base.clone()).await;
    let mut c = without.client().await;
    publish(&mut c, event("s3", EventType::ToolCall)).await;
    without.stop().await;

    let again = start(with_consumers).await;
    let mut c = again.client().await;
    publish(&mut c, event("s4", EventType::BackgroundTaskCompleted)).await;
    eventually(|| format!("sink {:?}", ids(&lines(&sink))), || lines(&sink).len() >= 4).await;
    assert_eq!(ids(&lines(&sink)), ["s1", "s2", "s3", "s4"], "no gap, no duplicate across the restart");
    // The failure in the history was alerted by the first process and is not alerted again:
    // the next alert is the sentinel's.
    publish(&mut c, failure("s5", "sentinel", "rs")).await;
    let texts = hook.wait_for("sentinel-name", DEADLINE).await;
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(texts[0].contains("`r1`"), "{}", texts[0]);
    again.stop().await;
    // The cursor is saved at most once a second while running, and always at shutdown.
    let saved = std::fs::read_to_string(cursor_file_of(&sink)).unwrap();
    assert_eq!(saved, last_cursor(&sink), "the cursor of the last written event");

    nightshift_testkit::redis_delete_prefix(&nightshift_testkit::redis_url(), &prefix).await;
}

#[tokio::test]
async fn unusable_consumer_settings_stop_the_role_from_starting() {
    let bad_url = EventsConfig {
        alerts: Some(AlertPolicy { webhook_url: "ftp://hooks.example/secret".into(), ..AlertPolicy::default() }),
        ..EventsConfig::default()
    };
    let err = EventsRole::build(bad_url).await.err().expect("refused").to_string();
    assert!(err.contains("alerts.webhook_url") && !err.contains("secret"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let no_dir = EventsConfig {
        sink: Some(SinkConfig { path: dir.path().join("missing/events.jsonl") }),
        ..EventsConfig::default()
    };
    let err = EventsRole::build(no_dir).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("sink.path") && text.contains("missing/events.jsonl"), "{text}");
    let EventsBuildError::Sink(sink) = err else { panic!("not a sink error: {text}") };
    assert_eq!(sink.source.kind(), std::io::ErrorKind::NotFound);
}
