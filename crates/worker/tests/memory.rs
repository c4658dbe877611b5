//! A worker with the memory service, end to end: recall into the prompt and the episode stored
//! after the run; once with the scripted LLM and once with a real small LLM. Then each memory
//! type as docs/architecture.md defines it for a run: working memory carried from one attempt
//! to the next and forgotten with the run, a `fixed:<id>` scope shared by the agents naming it,
//! and episodes over the budget summarized by the real small LLM (the agents' own model stays the
//! scripted one there: deterministic runs, and only the summaries need a real model).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use std::time::Duration;

use nightshift_core::{AgentSpec, AgentState, pb};
use nightshift_testkit::llm::scripted_llm;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_recall_memory_and_store_their_result_as_an_episode() {
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (memory, _worker) = start_worker_with_memory(&env, Duration::from_secs(10)).await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() };
    let recall = |kind: pb::MemoryType| {
        let (mut memory, scope) = (memory.clone(), scope.clone());
        async move {
            memory
                .recall(pb::RecallRequest { scope: Some(scope), r#type: kind as i32, limit: 10, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .records
        }
    };

    let first = trigger(&env).await;
    let first = wait_for_status(&env, &first.id, pb::RunStatus::Succeeded).await;
    let episodes = recall(pb::MemoryType::Episodic).await;
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].id, format!("episode-{}", first.id));
    assert_eq!(episodes[0].run_id, first.id);
    assert!(
        episodes[0].content.starts_with("Task: Area of a 3x4 rectangle?\nResult: The area is 12"),
        "{}",
        episodes[0].content
    );
    assert_eq!(episodes[0].metadata.get("steps").map(String::as_str), Some("2"));

    // A note the agent keeps about its job, then a second run: both reach the prompt.
    memory
        .clone()
        .store(pb::StoreMemoryRequest {
            records: vec![pb::MemoryRecord {
                r#type: pb::MemoryType::Procedural as i32,
                scope: Some(scope.clone()),
                content: "Always give areas in square metres.".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let second = trigger(&env).await;
    let second = wait_for_status(&env, &second.id, pb::RunStatus::Succeeded).await;
    let systems = script.systems.lock().unwrap().clone();
    // The run's steps record what was recalled and sent (the first call of the attempt), and,
    // last, the episode stored with its end.
    let llm: Vec<&pb::LlmResponse> = second
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::LlmResponse(r)) => Some(r),
            _ => None,
        })
        .collect();
    let sent = llm[0].prompt.as_ref().unwrap();
    assert_eq!(
        (sent.first, sent.system.as_str(), sent.user.as_str()),
        (true, systems[1].as_str(), "Area of a 3x4 rectangle?")
    );
    let recalled = sent.recall.unwrap();
    assert_eq!((recalled.episodes, recalled.notes, recalled.facts, recalled.errors), (1, 1, 0, 0));
    let later = llm[1].prompt.as_ref().unwrap();
    assert_eq!((later.first, later.system.as_str(), later.messages), (false, "", 3), "task, call, result");
    match &second.steps.last().unwrap().payload {
        Some(pb::run_step::Payload::MemoryStored(m)) => {
            assert_eq!((m.record_id.clone(), m.error.as_str()), (format!("episode-{}", second.id), ""));
        }
        other => panic!("the last step is the stored episode: {other:?}"),
    }
    assert_eq!(systems.len(), 2);
    assert!(!systems[0].contains("## Your memory") && !systems[0].contains("no memory"), "{}", systems[0]);
    assert!(systems[1].starts_with("You compute areas.\n\n## Your memory"), "{}", systems[1]);
    assert!(systems[1].contains("- Always give areas in square metres."), "{}", systems[1]);
    assert!(systems[1].contains("Your earlier runs, newest first:"), "{}", systems[1]);
    assert!(systems[1].contains("Task: Area of a 3x4 rectangle? | Result: The area is 12"), "{}", systems[1]);
    assert_eq!(recall(pb::MemoryType::Episodic).await.len(), 2);
}

/// A **real** LLM (SmolLM2-135M in-process, `provider: embedded`, its tool calls constrained to
/// their schemas) picks and calls the local `calculate_area` tool in structured-output mode, and the run completes with its answer stored
/// in memory. The model is tiny, so the test asserts what the platform guarantees (a valid tool
/// call executed and checkpointed, a final answer, the episode stored), not the model's prose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_small_llm_calls_a_local_tool_in_structured_mode() {
    // The embedded provider on the real SmolLM2-135M (fetched into the model cache once).
    let file = nightshift_llm::embedded::catalog::fetch(nightshift_llm::embedded::catalog::DEFAULT_MODEL)
        .await
        .unwrap_or_else(|e| panic!("the embedded model must be fetchable: {e}"));
    let model = format!(
        "{{provider: embedded, model: '{}', temperature: 0, max_tokens: 256, request_timeout: 120s}}",
        file.display()
    );
    let extra = "memory: {recall_recent: 3}";
    let (env, agent) = env_with(&model, "memory://", extra).await;
    set_spec(
        &env,
        format!(
            "name: area\nmodel: {model}\nsystem_instruction: You compute areas of shapes with the calculate_area tool.\n\
             task: {{query: 'What is the area of a rectangle that is 3 wide and 4 high? Call calculate_area with shape rectangle, width 3, height 4, then give the final answer.'}}\n\
             schedule: {{manual: true}}\npolicy: {{max_retries: 0, max_steps: 6, timeout: 300s}}\ntools: {{local: [calculate_area]}}\n{extra}"
        ),
    )
    .await;
    let (memory, _worker) = start_worker_with_memory(&env, Duration::from_secs(30)).await;
    let run = trigger(&env).await;
    let done = wait_for_status_within(&env, &run.id, pb::RunStatus::Succeeded, Duration::from_secs(180)).await;
    let calls: Vec<&pb::ToolResult> = done
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some(t),
            _ => None,
        })
        .collect();
    let ok: Vec<&&pb::ToolResult> = calls.iter().filter(|t| t.tool_name == "calculate_area" && !t.is_error).collect();
    assert!(!ok.is_empty(), "the model never made a valid calculate_area call: {calls:#?}");
    // The tool really ran on the model's arguments: a rectangle's result carries its area.
    assert!(ok[0].output.contains("\"area\""), "{}", ok[0].output);
    // Greedy decoding under a grammar is deterministic: the answer quotes the tool's area. (The
    // model keeps re-calling the tool; the last allowed turn, final-only, makes it answer.)
    assert!(done.result.contains("12"), "answer {:?}", done.result);
    eprintln!(
        "SmolLM2 answered {:?} after {} steps; tool results: {:?}",
        done.result,
        done.steps.len(),
        calls.iter().map(|t| &t.output).collect::<Vec<_>>()
    );

    let episodes = memory
        .clone()
        .recall(pb::RecallRequest {
            scope: Some(pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() }),
            r#type: pb::MemoryType::Episodic as i32,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(episodes.len(), 1);
    assert!(
        episodes[0].content.contains(done.result.trim()),
        "episode {:?} vs answer {:?}",
        episodes[0].content,
        done.result
    );
}

/// A replay (ReplayRun) stores no episode in the agent's memory unless it is asked to: replays
/// are for trying a version or a model out, not for what the agent remembers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_stores_no_episode_unless_asked() {
    let (llm, _script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (memory, _worker) = start_worker_with_memory(&env, Duration::from_secs(10)).await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() };
    let first = trigger(&env).await;
    wait_for_status(&env, &first.id, pb::RunStatus::Succeeded).await;
    assert_eq!(recall_in(&memory, scope.clone(), pb::MemoryType::Episodic).await.len(), 1);
    let replay = async |store_memory: bool| {
        let req = pb::ReplayRunRequest { run_id: first.id.clone(), store_memory, ..Default::default() };
        let run = env.manager.clone().replay_run(req).await.unwrap().into_inner().run.unwrap();
        wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await
    };
    let quiet = replay(false).await;
    assert_eq!(quiet.replay_of, first.id);
    assert!(!quiet.steps.iter().any(|s| matches!(s.payload, Some(pb::run_step::Payload::MemoryStored(_)))));
    assert_eq!(recall_in(&memory, scope.clone(), pb::MemoryType::Episodic).await.len(), 1, "no episode");
    let kept = replay(true).await;
    let episodes = recall_in(&memory, scope, pb::MemoryType::Episodic).await;
    assert_eq!(episodes.len(), 2, "asked to: stored");
    assert_eq!(episodes[0].id, format!("episode-{}", kept.id));
}

type MemoryClient = pb::memory_service_client::MemoryServiceClient<tonic::transport::Channel>;

/// A memory role and a worker using it; returns a client of the memory service.
async fn start_worker_with_memory(env: &Env, lease: Duration) -> (MemoryClient, tokio::task::JoinHandle<()>) {
    start_worker_with_memory_config(env, lease, |_| {}).await
}

/// [`start_worker_with_memory`] with the memory service's options changed by `configure`.
async fn start_worker_with_memory_config(
    env: &Env,
    lease: Duration,
    configure: impl FnOnce(&mut nightshift_memory::MemoryConfig),
) -> (MemoryClient, tokio::task::JoinHandle<()>) {
    let (memory_endpoint, channel) = memory_service_with(configure).await;
    let (_events, worker) =
        start_worker_at(&env.endpoint, &env.queue_url, &env.queue_name, lease, Some(&memory_endpoint)).await;
    (pb::memory_service_client::MemoryServiceClient::new(channel), worker)
}

/// The records of `kind` in `scope`, newest first.
async fn recall_in(memory: &MemoryClient, scope: pb::MemoryScope, kind: pb::MemoryType) -> Vec<pb::MemoryRecord> {
    let req = pb::RecallRequest { scope: Some(scope), r#type: kind as i32, limit: 100, ..Default::default() };
    memory.clone().recall(req).await.unwrap().into_inner().records
}

/// Polls `recall_in` until `done` holds for what it returns (`limit` at most).
async fn recall_until(
    memory: &MemoryClient,
    scope: pb::MemoryScope,
    kind: pb::MemoryType,
    limit: Duration,
    done: impl Fn(&[pb::MemoryRecord]) -> bool,
) -> Vec<pb::MemoryRecord> {
    let started = std::time::Instant::now();
    loop {
        let got = recall_in(memory, scope.clone(), kind).await;
        if done(&got) {
            return got;
        }
        assert!(started.elapsed() < limit, "{kind:?} memory of {scope:?} never got there: {got:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Working memory, with the scripted LLM: the first attempt runs out of time (its one LLM call
/// hangs), so the manager schedules a retry; the worker notes in the run's working memory how the
/// attempt ended, the second attempt reads the note in its prompt, and once the run has
/// succeeded the note is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_reads_how_the_earlier_attempt_ended_and_the_notes_end_with_the_run() {
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    set_spec(&env, area_spec(&llm, "{max_retries: 1, retry_delay: 2s, timeout: 2s}")).await;
    script.delay_ms.store(30_000, std::sync::atomic::Ordering::SeqCst);
    let (memory, _worker) = start_worker_with_memory(&env, Duration::from_secs(10)).await;
    let run = trigger(&env).await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: format!("run:{}", run.id) };

    // Attempt 1 times out; its note is in the run's working memory before the retry is delivered.
    let notes =
        recall_until(&memory, scope.clone(), pb::MemoryType::Working, Duration::from_secs(20), |n| !n.is_empty()).await;
    script.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[0].id, format!("attempt-{}-1", run.id));
    assert_eq!(notes[0].metadata.get("outcome").map(String::as_str), Some("timed_out"));
    assert_eq!(notes[0].content, "Attempt 1 ran out of time (policy.timeout) after 0 LLM turns in all.");

    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2);
    let systems = script.systems.lock().unwrap().clone();
    let second = systems.last().unwrap();
    assert!(
        second.contains(
            "## This run so far\n\nThis is attempt 2 of this run. How the earlier attempts ended:\n\
             - Attempt 1 ran out of time (policy.timeout) after 0 LLM turns in all."
        ),
        "{second}"
    );
    assert_eq!(systems.iter().filter(|s| s.contains("This run so far")).count(), 1, "{systems:#?}");

    // The run is over: its working memory goes with it (the episode stays).
    recall_until(&memory, scope, pb::MemoryType::Working, Duration::from_secs(10), <[_]>::is_empty).await;
    let agent_scope = pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() };
    assert_eq!(recall_in(&memory, agent_scope, pb::MemoryType::Episodic).await.len(), 1);
}

/// Working memory, cancelled: attempt 1 times out and leaves its note, attempt 2 reads it and is
/// cancelled at the manager while its LLM call hangs. The manager tells the worker (its
/// WorkerService is served and advertised), the worker's report of the cancel finds the run
/// already ended there, and the notes still go with the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_cancelled_at_the_manager_forgets_its_notes() {
    let (llm, script) = scripted_llm().await;
    // A 30 s ack wait so that beats follow the 10 s lease (every 3.3 s, see below).
    let model = format!("{{provider: openai, model: scripted, base_url: '{llm}'}}");
    let (env, agent) = env_with_ack_wait(&model, "memory://", "", Duration::from_secs(30)).await;
    set_spec(&env, area_spec(&llm, "{max_retries: 2, retry_delay: 1s, timeout: 3s}")).await;
    script.delay_ms.store(30_000, std::sync::atomic::Ordering::SeqCst);
    let (memory_endpoint, channel) = memory_service().await;
    let memory = pb::memory_service_client::MemoryServiceClient::new(channel);
    let listener = nightshift_rpc::GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cfg = nightshift_worker::WorkerConfig {
        // The scripted LLM and MCP servers run on loopback: the harness is the operator.
        allow: nightshift_core::operator_policy::OperatorPolicy::trusting(),
        concurrency: 4,
        // Heartbeats every 3.3 s, after attempt 2's timeout: the cancel reaches the worker
        // through its WorkerService, not as a refused heartbeat.
        lease_ttl: Duration::from_secs(10),
        queue: queue_settings(&env.queue_url, &env.queue_name),
        manager_endpoint: env.endpoint.clone(),
        memory_endpoint,
        advertise_endpoint: endpoint,
        ..nightshift_worker::WorkerConfig::default()
    };
    let role: Box<dyn nightshift_rpc::Role> =
        Box::new(nightshift_worker::WorkerRole::build(cfg, Default::default()).await.unwrap());
    tokio::spawn(nightshift_rpc::serve_roles(vec![role], listener, std::future::pending()));
    let run = trigger(&env).await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: format!("run:{}", run.id) };

    recall_until(&memory, scope.clone(), pb::MemoryType::Working, Duration::from_secs(20), |n| !n.is_empty()).await;
    // The LLM records a prompt only once it answers: wait for attempt 2 to run instead. Its
    // notes are read before its loop, the only place a cancel is noticed.
    let since = std::time::Instant::now();
    loop {
        let got = env.manager.clone().get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap();
        let got = got.into_inner().run.unwrap();
        if got.attempt == 2 && got.status() == pb::RunStatus::Running {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(20), "attempt 2 never started: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = pb::CancelRunRequest { run_id: run.id.clone(), reason: "test".into() };
    env.manager.clone().cancel_run(req).await.unwrap();
    let cancelled = wait_for_status(&env, &run.id, pb::RunStatus::Cancelled).await;
    assert_eq!(cancelled.attempt, 2);
    recall_until(&memory, scope, pb::MemoryType::Working, Duration::from_secs(10), <[_]>::is_empty).await;
}

/// Creates another agent like `area` (its model the scripted LLM at `llm`) with this name, task
/// and memory session.
async fn add_agent(env: &Env, llm: &str, name: &str, query: &str, session: &str) {
    let spec = AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
         system_instruction: You compute areas.\ntask: {{query: '{query}'}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0, timeout: 60s}}\ntools: {{local: [calculate_area]}}\n\
         memory: {{session: '{session}'}}\n"
    ))
    .unwrap();
    env.store.create_agent(&spec, AgentState::Active).await.unwrap();
}

/// Triggers the agent `name` and waits for its run to succeed.
async fn run_agent(env: &Env, name: &str) -> pb::Run {
    let req = pb::TriggerAgentRequest { agent: by_name(name), query_override: None };
    let run = env.manager.clone().trigger_agent(req).await.unwrap().into_inner().run.unwrap();
    wait_for_status(env, &run.id, pb::RunStatus::Succeeded).await
}

/// `fixed:<id>`, with the scripted LLM: two agents naming `fixed:team` see each other's
/// episodes in their prompts; an agent naming `fixed:other` sees neither, nor they its.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_sharing_a_fixed_scope_see_each_others_memories() {
    let (llm, script) = scripted_llm().await;
    let (env, _area) = env_on(&llm, "memory://", "memory: {session: 'fixed:team'}").await;
    add_agent(&env, &llm, "builder", "Area of the 5x6 plot for the builder?", "fixed:team").await;
    add_agent(&env, &llm, "tester", "Area of the 7x8 test field?", "fixed:other").await;
    let (memory, _worker) = start_worker_with_memory(&env, Duration::from_secs(10)).await;

    for name in ["area", "builder", "tester", "area"] {
        run_agent(&env, name).await;
    }
    let systems = script.systems.lock().unwrap().clone();
    assert_eq!(systems.len(), 4);
    assert!(!systems[0].contains("## Your memory"), "nothing shared yet: {}", systems[0]);
    // builder sees area's episode, by name.
    assert!(systems[1].contains("Earlier runs of the agents sharing this memory"), "{}", systems[1]);
    assert!(systems[1].contains(", by area] Task: Area of a 3x4 rectangle?"), "{}", systems[1]);
    // tester shares nothing with them.
    assert!(!systems[2].contains("## Your memory"), "fixed:other is empty: {}", systems[2]);
    // area's second run sees builder's episode (and its own), not tester's.
    assert!(systems[3].contains(", by builder] Task: Area of the 5x6 plot for the builder?"), "{}", systems[3]);
    assert!(systems[3].contains(", by area] Task: Area of a 3x4 rectangle?"), "{}", systems[3]);
    assert!(!systems[3].contains("7x8"), "{}", systems[3]);

    // In the service: one scope, whatever agent id asks; the other scope apart.
    let team = pb::MemoryScope { agent_id: "anyone".into(), session: "fixed:team".into() };
    let shared = recall_in(&memory, team, pb::MemoryType::Episodic).await;
    let authors: Vec<&str> = shared.iter().filter_map(|r| r.metadata.get("agent").map(String::as_str)).collect();
    assert_eq!(authors, ["area", "builder", "area"]);
    let other = pb::MemoryScope { agent_id: "anyone".into(), session: "fixed:other".into() };
    let other = recall_in(&memory, other, pb::MemoryType::Episodic).await;
    assert_eq!(
        other.iter().filter_map(|r| r.metadata.get("agent").map(String::as_str)).collect::<Vec<_>>(),
        ["tester"]
    );
}

/// Summaries: the memory service summarizes an agent's episodes over its `[summarizer]` budget
/// (two episodes here) with a **real** LLM — SmolLM2-135M in-process, `provider: embedded` —
/// after the worker stores the third; the two oldest are archived, and the next run's prompt
/// carries the summary. The runs themselves use the scripted LLM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn episodes_over_the_budget_are_summarized_by_a_real_small_llm_into_the_next_prompt() {
    use nightshift_llm::embedded::catalog;
    catalog::fetch(catalog::DEFAULT_MODEL)
        .await
        .unwrap_or_else(|e| panic!("the embedded model must be fetchable: {e}"));
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (memory, _worker) = start_worker_with_memory_config(&env, Duration::from_secs(30), move |cfg| {
        cfg.summarizer = nightshift_memory::config::SummarizerConfig {
            provider: nightshift_memory::SummarizerProvider::Embedded,
            model: catalog::DEFAULT_MODEL.into(),
            max_tokens: 96,
            seed: Some(5),
            budget_tokens: 0,
            budget_episodes: 2,
            retention: nightshift_memory::AutoRetention::Archive,
            ..Default::default()
        };
    })
    .await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() };
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(run_agent(&env, "area").await);
    }
    // Over the budget of 2: the newest (half the budget) stays, the 2 older are summarized.
    let episodes = recall_until(&memory, scope.clone(), pb::MemoryType::Episodic, Duration::from_secs(240), |e| {
        e.iter().any(|r| r.summary)
    })
    .await;
    assert_eq!(episodes.len(), 2, "{episodes:#?}");
    assert_eq!(episodes[0].id, format!("episode-{}", runs[2].id));
    let summary = &episodes[1];
    eprintln!("SmolLM2's summary: {:?}", summary.content);
    assert!(summary.summary && !summary.content.trim().is_empty());
    assert_eq!(summary.metadata.get("summarized_records").map(String::as_str), Some("2"));
    assert_eq!(summary.metadata.get("summarized_by").map(String::as_str), Some(catalog::DEFAULT_MODEL));

    run_agent(&env, "area").await;
    let systems = script.systems.lock().unwrap().clone();
    let last = systems.last().unwrap();
    let quoted: String = summary.content.trim().chars().take(60).collect::<String>().replace('\n', " | ");
    assert!(last.contains(quoted.trim()), "the summary reaches the next prompt: {last}");
}
