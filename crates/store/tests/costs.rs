//! The cost ledger on both backends: a checkpointed LLM answer writes its row once (a retried
//! checkpoint does not), a refused one none; sums by agent, model and namespace, since an
//! instant, within namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use std::time::Duration;

use common::env;
use nightshift_core::{AgentSpec, AgentState, Namespace, RunId, WorkerId};
use nightshift_store::{CostGroup, Fence, LlmCall, NewRun, StartInput, StartOutcome, StepInput, Store, StoreError};
use nightshift_testkit::Db;

/// A started run of agent `ns/name`: (run, its fence).
async fn running(store: &Store, ns: &str, name: &str) -> (RunId, Fence) {
    let spec = AgentSpec::from_yaml(&format!(
        "namespace: {ns}\nname: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}\n"
    ))
    .unwrap();
    let agent = store.create_agent(&spec, AgentState::Active).await.unwrap();
    let run = RunId::generate();
    store.insert_run(&NewRun::manual(run.clone(), agent.id.clone())).await.unwrap();
    let input = StartInput {
        run_id: run.clone(),
        agent_id: agent.id,
        worker_id: WorkerId::from_string("w"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    let StartOutcome::Started { run: r, lease_token, .. } = store.start_run(&input).await.unwrap() else { panic!() };
    (run, Fence { attempt: r.attempt, token: Some(lease_token) })
}

fn answer(seq: u32, model: &str, tokens: (u64, u64), cost: Option<u64>) -> StepInput {
    let call = LlmCall { model: model.into(), input_tokens: tokens.0, output_tokens: tokens.1, cost_micros: cost };
    StepInput { call: Some(call), ..StepInput::new(seq, "llm_response", vec![seq as u8]) }
}

async fn ledger(kind: Db) {
    let e = env(kind).await;
    let (a, fa) = running(&e.store, "default", "a").await;
    let (b, fb) = running(&e.store, "team-b", "b").await;
    e.store.checkpoint(&a, fa.clone(), &answer(0, "gpt-x", (100, 20), Some(300)), None).await.unwrap();
    // A retried checkpoint of the same step: no second row.
    e.store.checkpoint(&a, fa.clone(), &answer(0, "gpt-x", (100, 20), Some(300)), None).await.unwrap();
    e.store.checkpoint(&a, fa.clone(), &StepInput::new(1, "tool_result", vec![9]), None).await.unwrap();
    e.clock.advance(chrono::Duration::hours(2));
    let later = nightshift_core::Clock::now(&e.clock);
    e.store.checkpoint(&a, fa.clone(), &answer(2, "gpt-x", (200, 40), Some(600)), None).await.unwrap();
    e.store.checkpoint(&b, fb.clone(), &answer(0, "local", (7, 3), None), None).await.unwrap();
    // A refused checkpoint (stale token) writes nothing.
    let stale = Fence { token: Some("0".repeat(32)), ..fb.clone() };
    let refused = e.store.checkpoint(&b, stale, &answer(1, "local", (1, 1), None), None).await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");

    let by_agent = e.store.costs(CostGroup::Agent, None, None).await.unwrap();
    let rows: Vec<(&str, u64, u64, u64, u64, u64)> = by_agent
        .iter()
        .map(|r| (r.key.as_str(), r.calls, r.input_tokens, r.output_tokens, r.cost_micros, r.unpriced_calls))
        .collect();
    assert_eq!(rows, [("default/a", 2, 300, 60, 900, 0), ("team-b/b", 1, 7, 3, 0, 1)], "most expensive first");
    let by_model = e.store.costs(CostGroup::Model, Some(later), None).await.unwrap();
    let models: Vec<(&str, u64)> = by_model.iter().map(|r| (r.key.as_str(), r.cost_micros)).collect();
    assert_eq!(models, [("gpt-x", 600), ("local", 0)], "only the calls since `later`");
    let team_b = [Namespace::parse("namespace", "team-b").unwrap()];
    let by_ns = e.store.costs(CostGroup::Namespace, None, Some(&team_b)).await.unwrap();
    assert_eq!(by_ns.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["team-b"]);
    assert!(e.store.costs(CostGroup::Agent, None, Some(&[])).await.unwrap().is_empty(), "no namespace, no rows");
    let a_agent = e.store.get_run(&a).await.unwrap().unwrap().agent_id;
    assert_eq!(e.store.agent_stats(&a_agent).await.unwrap().cost_micros, 900);
}

#[tokio::test]
async fn ledger_sqlite() {
    ledger(Db::Sqlite).await;
}

#[tokio::test]
async fn ledger_postgres() {
    ledger(Db::Postgres).await;
}
