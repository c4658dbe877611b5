//! A worker with the memory service, end to end: recall into the prompt and the episode stored
//! after the run; once with the scripted LLM and once with a real small LLM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use std::time::Duration;

use nightshift_core::pb;
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
    wait_for_status(&env, &second.id, pb::RunStatus::Succeeded).await;
    let systems = script.systems.lock().unwrap().clone();
    assert_eq!(systems.len(), 2);
    assert!(!systems[0].contains("## Your memory") && !systems[0].contains("no memory"), "{}", systems[0]);
    assert!(systems[1].starts_with("You compute areas.\n\n## Your memory"), "{}", systems[1]);
    assert!(systems[1].contains("- Always give areas in square metres."), "{}", systems[1]);
    assert!(systems[1].contains("Your earlier runs, newest first:"), "{}", systems[1]);
    assert!(systems[1].contains("Task: Area of a 3x4 rectangle? | Result: The area is 12"), "{}", systems[1]);
    assert_eq!(recall(pb::MemoryType::Episodic).await.len(), 2);
}

/// A **real** LLM (SmolLM2-135M on llama.cpp, `scripts/llm.sh`) picks and calls the local
/// `calculate_area` tool in structured-output mode, and the run completes with its answer stored
/// in memory. The model is tiny, so the test asserts what the platform guarantees (a valid tool
/// call executed and checkpointed, a final answer, the episode stored), not the model's prose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_small_llm_calls_a_local_tool_in_structured_mode() {
    let llama = tokio::task::spawn_blocking(nightshift_testkit::llama::LlamaServer::start).await.unwrap();
    let model = format!(
        "{{provider: openai, model: smollm2, base_url: '{}', tool_call_mode: structured, temperature: 0, max_tokens: 256, request_timeout: 120s}}",
        llama.base_url
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

type MemoryClient = pb::memory_service_client::MemoryServiceClient<tonic::transport::Channel>;

/// A memory role and a worker using it; returns a client of the memory service.
async fn start_worker_with_memory(env: &Env, lease: Duration) -> (MemoryClient, tokio::task::JoinHandle<()>) {
    let (memory_endpoint, channel) = memory_service().await;
    let (_events, worker) =
        start_worker_at(&env.endpoint, &env.queue_url, &env.queue_name, lease, Some(&memory_endpoint)).await;
    (pb::memory_service_client::MemoryServiceClient::new(channel), worker)
}
