//! The worker enforces its operator's `[allow]` policy on specs that reached the store without
//! the manager's check (written to the store directly here, as an attacker with database access
//! or a manager with another policy would): a model on a loopback address (literal or a name
//! that resolves to it), a stdio MCP program and a secret it does not list. The runs fail at
//! once, permanently, naming the field, and the scripted LLM (OpenAI-compatible, on loopback)
//! never sees a request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{env, set_spec_in_store, start_worker_allowing, trigger, wait_for_status};
use nightshift_core::operator_policy::OperatorPolicy;
use nightshift_core::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_programs_secrets_and_addresses_its_operator_does_not_allow() {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let (env, _agent) = env(&llm).await;
    let strict = OperatorPolicy { secrets: vec!["OPENAI_API_KEY".into()], ..OperatorPolicy::default() };
    let (_events, _worker) =
        start_worker_allowing(&env.endpoint, &env.queue_url, &env.queue_name, Duration::from_secs(10), None, strict)
            .await;

    // 1. The model at a loopback address (the scripted LLM's own URL).
    let run = trigger(&env).await;
    let failed = wait_for_status(&env, &run.id, pb::RunStatus::Failed).await;
    assert!(failed.error.contains("model.base_url") && failed.error.contains("loopback"), "{}", failed.error);
    assert_eq!(failed.attempt, 1, "a policy refusal is not retried");

    // 2. The same server by a name that resolves to loopback: refused when resolved.
    let port = llm.rsplit(':').next().unwrap().trim_end_matches("/v1");
    let by_name = format!("http://localhost:{port}/v1");
    set_spec_in_store(&env, &common::area_spec(&by_name, "{max_retries: 0, timeout: 30s}")).await;
    let run = trigger(&env).await;
    let failed = wait_for_status(&env, &run.id, pb::RunStatus::Failed).await;
    assert!(failed.error.contains("resolves to"), "{}", failed.error);

    // 3. A stdio MCP program and a secret the operator does not list.
    let mcp = format!(
        "{}  mcp: [{{name: sh, command: bash, args: ['-c', 'id'], env: {{T: env:AWS_SECRET_ACCESS_KEY}}}}]\n",
        common::area_spec("https://api.openai.com/v1", "{max_retries: 0, timeout: 30s}")
            .replace("tools: {local: [calculate_area]}\n", "tools:\n  local: [calculate_area]\n")
    );
    set_spec_in_store(&env, &mcp).await;
    let run = trigger(&env).await;
    let failed = wait_for_status(&env, &run.id, pb::RunStatus::Failed).await;
    for expected in ["tools.mcp[0].command", "allow.mcp_commands", "tools.mcp[0].env.T", "allow.secrets"] {
        assert!(failed.error.contains(expected), "{expected}: {}", failed.error);
    }

    let asked = script.first_turns.load(Ordering::SeqCst) + script.second_turns.load(Ordering::SeqCst);
    assert_eq!(asked, 0, "the LLM on the refused address was never called");
}
