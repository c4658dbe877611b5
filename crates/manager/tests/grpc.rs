//! The manager over real gRPC (in-process server on an ephemeral port), on SQLite and on the
//! Postgres server: error codes, the worker protocol, concurrent StartRun and fencing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::time::Duration;

use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use nightshift_manager::{ManagerService, SERVICE_NAME};
use nightshift_rpc::GrpcServer;
use nightshift_store::Store;
use nightshift_testkit::{Db, SqliteDb, database};
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    endpoint: String,
    _db: Option<SqliteDb>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(kind: Db) -> Server {
    let (url, guard) = database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let mut server = GrpcServer::new();
    server.routes().add_service(ManagerService::new(store, Duration::from_secs(30)).into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    Server { endpoint, _db: guard, _stop: tx }
}

async fn client(s: &Server) -> ManagerServiceClient<Channel> {
    ManagerServiceClient::connect(s.endpoint.clone()).await.unwrap()
}

fn yaml(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nmodel: {{provider: openai, model: m, api_key: env:K}}\ntask: {{query: q}}\nschedule: {{interval: 60s}}\n{extra}"
    )
}

fn by_name(n: &str) -> Option<pb::AgentRef> {
    Some(pb::AgentRef::by_name(n))
}

async fn create(c: &mut ManagerServiceClient<Channel>, name: &str, extra: &str) -> pb::Agent {
    c.create_agent(pb::CreateAgentRequest { spec: None, paused: false, manifest_yaml: yaml(name, extra) })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap()
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "message {:?} should name {needle:?}", s.message());
}

nightshift_testkit::both_backends!(
    malformed_requests_get_proper_codes,
    worker_protocol_end_to_end,
    concurrent_start_run_applies_skip,
    stale_token_is_failed_precondition
);

async fn malformed_requests_get_proper_codes(kind: Db) {
    let s = start(kind).await;
    let mut c = client(&s).await;
    let bad = |m: &str| pb::CreateAgentRequest { spec: None, paused: false, manifest_yaml: m.to_owned() };
    assert_code(
        c.create_agent(bad(&yaml("a", "").replace("60s", "-5s"))).await,
        Code::InvalidArgument,
        "schedule.interval",
    );
    assert_code(
        c.create_agent(bad(&yaml("a", "").replace("{interval: 60s}", "{cron: '* * *'}"))).await,
        Code::InvalidArgument,
        "schedule.cron",
    );
    assert_code(
        c.create_agent(bad(&yaml("a", "").replace("{interval: 60s}", "{cron: '* * * * *', timezone: Nowhere/Land}")))
            .await,
        Code::InvalidArgument,
        "schedule.timezone",
    );
    let literal = c.create_agent(bad(&yaml("a", "").replace("env:K", "sk-secret-value"))).await.unwrap_err();
    assert_eq!(literal.code(), Code::InvalidArgument);
    assert!(literal.message().contains("model.api_key") && !literal.message().contains("sk-secret-value"));
    assert_code(c.create_agent(bad(&yaml("a", "tools: {lambda: [x]}"))).await, Code::InvalidArgument, "tools");
    assert_code(c.create_agent(pb::CreateAgentRequest::default()).await, Code::InvalidArgument, "spec");
    assert_code(
        c.create_agent(pb::CreateAgentRequest {
            spec: Some(pb::AgentSpec::default()),
            paused: false,
            manifest_yaml: yaml("a", ""),
        })
        .await,
        Code::InvalidArgument,
        "spec",
    );
    assert_code(c.get_agent(pb::GetAgentRequest { agent: None }).await, Code::InvalidArgument, "agent");
    assert_code(c.get_agent(pb::GetAgentRequest { agent: by_name("ghost") }).await, Code::NotFound, "ghost");
    assert_code(c.get_run(pb::GetRunRequest { run_id: String::new() }).await, Code::InvalidArgument, "run_id");
    assert_code(c.get_run(pb::GetRunRequest { run_id: "nope".into() }).await, Code::NotFound, "nope");
    assert_code(
        c.list_agents(pb::ListAgentsRequest { page_size: 5000, ..Default::default() }).await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_code(
        c.list_runs(pb::ListRunsRequest { page_token: "garbage".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "page_token",
    );

    let a = create(&mut c, "alpha", "").await;
    assert_code(c.create_agent(bad(&yaml("alpha", ""))).await, Code::AlreadyExists, "alpha");
    let upd = pb::UpdateAgentRequest {
        agent: by_name("alpha"),
        spec: None,
        expected_version: Some(9),
        manifest_yaml: yaml("alpha", "description: x"),
    };
    assert_code(c.update_agent(upd).await, Code::Aborted, "version");
    let ok = pb::UpdateAgentRequest {
        agent: by_name("alpha"),
        spec: None,
        expected_version: Some(1),
        manifest_yaml: yaml("alpha", "description: x"),
    };
    assert_eq!(c.update_agent(ok).await.unwrap().into_inner().agent.unwrap().version, 2);

    c.pause_agent(pb::PauseAgentRequest { agent: by_name("alpha") }).await.unwrap();
    assert_code(
        c.trigger_agent(pb::TriggerAgentRequest { agent: by_name("alpha"), query_override: None }).await,
        Code::FailedPrecondition,
        "paused",
    );
    c.resume_agent(pb::ResumeAgentRequest { agent: by_name("alpha") }).await.unwrap();
    assert_code(
        c.trigger_agent(pb::TriggerAgentRequest { agent: by_name("alpha"), query_override: Some(" ".into()) }).await,
        Code::InvalidArgument,
        "query_override",
    );
    let start = pb::StartRunRequest {
        run_id: "r1".into(),
        agent_id: a.id.clone(),
        worker_id: "w".into(),
        lease_ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    assert_code(c.start_run(start).await, Code::InvalidArgument, "lease_ttl");
    assert_code(
        c.start_run(pb::StartRunRequest { run_id: "r1".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "agent_id",
    );
    assert_code(
        c.checkpoint(pb::CheckpointRequest {
            run_id: "r1".into(),
            attempt: 1,
            step: None,
            lease_ttl: None,
            lease_token: "t".into(),
        })
        .await,
        Code::InvalidArgument,
        "step",
    );
    assert_code(
        c.finish_run(pb::FinishRunRequest { run_id: "r1".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "outcome",
    );
    let stored = pb::RunStep {
        payload: Some(pb::run_step::Payload::MemoryStored(pb::MemoryStored::default())),
        ..Default::default()
    };
    let end = |steps: Vec<pb::RunStep>| pb::FinishRunRequest {
        run_id: "r1".into(),
        outcome: pb::RunOutcome::Succeeded as i32,
        steps,
        ..Default::default()
    };
    assert_code(c.finish_run(end(vec![stored; 5])).await, Code::InvalidArgument, "steps: at most 4");
    assert_code(c.finish_run(end(vec![pb::RunStep::default()])).await, Code::InvalidArgument, "steps[0].payload");
}

async fn worker_protocol_end_to_end(kind: Db) {
    let s = start(kind).await;
    let mut c = client(&s).await;
    let a = create(&mut c, "health", "tools: {local: [get_system_info]}").await;
    let run = c
        .trigger_agent(pb::TriggerAgentRequest { agent: by_name("health"), query_override: Some("just CPU".into()) })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.status(), pb::RunStatus::Queued);
    let started = c
        .start_run(pb::StartRunRequest {
            run_id: run.id.clone(),
            agent_id: a.id.clone(),
            worker_id: "w1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.decision(), pb::StartDecision::Started);
    let lease = started.run.unwrap();
    assert_eq!((lease.attempt, lease.query_override.as_deref()), (1, Some("just CPU")));
    let token = started.lease_token.clone();
    assert_eq!(token.len(), 32, "a 128-bit lease token: {token:?}");
    // The attempt number alone is not enough: without the token, or with another one, the
    // worker calls are refused.
    let hb = |lease_token: &str| pb::HeartbeatRequest {
        run_id: run.id.clone(),
        attempt: 1,
        worker_id: "w1".into(),
        lease_ttl: None,
        lease_token: lease_token.into(),
    };
    assert_code(c.heartbeat(hb("")).await, Code::InvalidArgument, "lease_token");
    assert_code(c.heartbeat(hb(&"0".repeat(32))).await, Code::FailedPrecondition, "lease token does not match");
    let forged = pb::FinishRunRequest {
        run_id: run.id.clone(),
        attempt: 1,
        lease_token: "f".repeat(32),
        outcome: pb::RunOutcome::Succeeded as i32,
        result: "forged".into(),
        ..Default::default()
    };
    assert_code(c.finish_run(forged).await, Code::FailedPrecondition, "lease token does not match");
    assert_eq!(started.spec.unwrap().tools.unwrap().local, ["get_system_info"]);

    let llm = pb::RunStep {
        seq: 0,
        payload: Some(pb::run_step::Payload::LlmResponse(pb::LlmResponse {
            model: "m".into(),
            tool_calls: vec![pb::ToolCall {
                id: "c1".into(),
                name: "get_system_info".into(),
                arguments_json: "{}".into(),
            }],
            usage: Some(pb::TokenUsage { input_tokens: 12, output_tokens: 3, ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let tool = pb::RunStep {
        seq: 1,
        payload: Some(pb::run_step::Payload::ToolResult(pb::ToolResult {
            call_id: "c1".into(),
            tool_name: "get_system_info".into(),
            output: "cpu 3%".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    for step in [llm, tool] {
        c.checkpoint(pb::CheckpointRequest {
            run_id: run.id.clone(),
            attempt: 1,
            step: Some(step),
            lease_ttl: None,
            lease_token: token.clone(),
        })
        .await
        .unwrap();
    }
    c.heartbeat(hb(&token)).await.unwrap();
    let done = c
        .finish_run(pb::FinishRunRequest {
            run_id: run.id.clone(),
            attempt: 1,
            lease_token: token.clone(),
            outcome: pb::RunOutcome::Succeeded as i32,
            result: "all fine".into(),
            usage: Some(pb::TokenUsage { input_tokens: 20, output_tokens: 8, ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.run.unwrap().status(), pb::RunStatus::Succeeded);

    let got = c.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(got.steps.len(), 2);
    assert!(matches!(&got.steps[1].payload, Some(pb::run_step::Payload::ToolResult(t)) if t.output == "cpu 3%"));
    assert_eq!(got.result, "all fine");

    let st = c.get_agent_status(pb::GetAgentStatusRequest { agent: by_name("health") }).await.unwrap().into_inner();
    assert_eq!((st.total_runs, st.succeeded, st.running), (1, 1, 0));
    assert_eq!(st.total_usage.unwrap().input_tokens, 20);
    assert_eq!(st.tools, ["get_system_info"]);
    assert!(st.next_run_at.is_some());

    let runs =
        c.list_runs(pb::ListRunsRequest { agent: by_name("health"), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(runs.runs.len(), 1);
    c.delete_agent(pb::DeleteAgentRequest { agent: by_name("health") }).await.unwrap();
    assert_code(c.get_run(pb::GetRunRequest { run_id: run.id }).await, Code::NotFound, "run");
}

async fn concurrent_start_run_applies_skip(kind: Db) {
    let s = start(kind).await;
    let mut c = client(&s).await;
    let a = create(&mut c, "busy", "policy: {overlap: skip}").await;
    const N: usize = 10;
    // StartRun starts only runs the manager recorded: the scheduler's EnqueueRun records them.
    for i in 0..N {
        let run_id = format!("{}@{i}", a.id);
        c.enqueue_run(pb::EnqueueRunRequest { run_id, agent_id: a.id.clone(), scheduled_for: None }).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..N {
        let endpoint = s.endpoint.clone();
        let agent_id = a.id.clone();
        // One connection per simulated worker.
        tasks.push(tokio::spawn(async move {
            let mut c = ManagerServiceClient::connect(endpoint).await.unwrap();
            c.start_run(pb::StartRunRequest {
                run_id: format!("{agent_id}@{i}"),
                agent_id,
                worker_id: format!("w{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .decision()
        }));
    }
    let mut decisions = Vec::new();
    for t in tasks {
        decisions.push(t.await.unwrap());
    }
    let started = decisions.iter().filter(|d| **d == pb::StartDecision::Started).count();
    let skipped = decisions.iter().filter(|d| **d == pb::StartDecision::Skipped).count();
    assert_eq!((started, skipped), (1, N - 1), "{decisions:?}");
    let st = c.get_agent_status(pb::GetAgentStatusRequest { agent: by_name("busy") }).await.unwrap().into_inner();
    assert_eq!((st.running, st.skipped), (1, (N - 1) as u64));
}

async fn stale_token_is_failed_precondition(kind: Db) {
    let s = start(kind).await;
    let mut c = client(&s).await;
    let a = create(&mut c, "fence", "").await;
    let short = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    let req = |w: &str| pb::StartRunRequest {
        run_id: "fence-run".into(),
        agent_id: a.id.clone(),
        worker_id: w.into(),
        lease_ttl: short,
        ..Default::default()
    };
    // A run nobody recorded is not started (a worker cannot make up runs).
    assert_code(c.start_run(req("w1")).await, Code::NotFound, "fence-run");
    c.enqueue_run(pb::EnqueueRunRequest { run_id: "fence-run".into(), agent_id: a.id.clone(), scheduled_for: None })
        .await
        .unwrap();
    let first = c.start_run(req("w1")).await.unwrap().into_inner();
    assert_eq!(first.decision(), pb::StartDecision::Started);
    assert_eq!(c.start_run(req("w2")).await.unwrap().into_inner().decision(), pb::StartDecision::LeasedElsewhere);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = c.start_run(req("w2")).await.unwrap().into_inner();
    assert_eq!(second.decision(), pb::StartDecision::Started);
    assert_eq!(second.run.unwrap().attempt, 2);
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            run_id: "fence-run".into(),
            attempt: 1,
            worker_id: "w1".into(),
            lease_ttl: None,
            lease_token: first.lease_token.clone(),
        })
        .await;
    assert_code(hb, Code::FailedPrecondition, "attempt 2");
    let fin = c
        .finish_run(pb::FinishRunRequest {
            run_id: "fence-run".into(),
            attempt: 1,
            lease_token: first.lease_token,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await;
    assert_code(fin, Code::FailedPrecondition, "stale");
}
