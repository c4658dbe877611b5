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
    running_with(store, ns, name, "").await
}

/// [`running`] of an agent whose manifest ends with `extra`.
async fn running_with(store: &Store, ns: &str, name: &str, extra: &str) -> (RunId, Fence) {
    let spec = AgentSpec::from_yaml(&format!(
        "namespace: {ns}\nname: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}\n{extra}"
    ))
    .unwrap();
    let agent = store.create_agent(&spec, AgentState::Active).await.unwrap();
    let StartOutcome::Started { run, lease_token, .. } = start_new(store, &agent.id, Default::default()).await else {
        panic!()
    };
    (run.id, Fence { attempt: run.attempt, token: Some(lease_token) })
}

/// Records a new manual run of `agent` and asks StartRun for it.
async fn start_new(
    store: &Store,
    agent: &nightshift_core::AgentId,
    budgets: std::collections::BTreeMap<Namespace, nightshift_core::budget::Budget>,
) -> StartOutcome {
    let run = RunId::generate();
    store.insert_run(&NewRun::manual(run.clone(), agent.clone())).await.unwrap();
    let input = StartInput {
        run_id: run,
        agent_id: agent.clone(),
        worker_id: WorkerId::from_string("w"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: std::sync::Arc::new(budgets),
    };
    store.start_run(&input).await.unwrap()
}

fn answer(seq: u32, model: &str, tokens: (u64, u64), cost: Option<u64>) -> StepInput {
    let call = LlmCall {
        model: model.into(),
        input_tokens: tokens.0,
        cached_input_tokens: 0,
        output_tokens: tokens.1,
        cost_micros: cost,
    };
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

/// StartRun's admission against the agent's and the namespace's daily budgets, from the ledger.
async fn admission(kind: Db) {
    let e = env(kind).await;
    let (run, fence) = running_with(&e.store, "default", "spender", "budget: {per_day: {usd: 0.001}}\n").await;
    e.store.checkpoint(&run, fence, &answer(0, "m", (100, 20), Some(600)), None).await.unwrap();
    let agent = e.store.get_run(&run).await.unwrap().unwrap().agent_id;
    // 600 spent today, and the next run projected at 600 (the p90 of one run): over $0.001.
    match start_new(&e.store, &agent, Default::default()).await {
        StartOutcome::Skipped { reason, .. } => {
            assert!(reason.starts_with("budget: the agent's daily budget of $0.001000"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A new UTC day: the budget is fresh again.
    e.clock.advance(chrono::Duration::days(1));
    assert!(matches!(start_new(&e.store, &agent, Default::default()).await, StartOutcome::Started { .. }));
    // The namespace's budget applies to an agent without one of its own.
    let (run, fence) = running(&e.store, "team-c", "free").await;
    e.store.checkpoint(&run, fence, &answer(0, "m", (1000, 0), None), None).await.unwrap();
    let free = e.store.get_run(&run).await.unwrap().unwrap().agent_id;
    let ns = Namespace::parse("namespace", "team-c").unwrap();
    let tight = nightshift_core::budget::Budget {
        per_month: nightshift_core::budget::Limit { tokens: Some(1500), micros: None },
        ..Default::default()
    };
    match start_new(&e.store, &free, [(ns, tight)].into()).await {
        StartOutcome::Skipped { reason, .. } => assert!(reason.contains("namespace's monthly budget"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// `on_exceeded: wait`: the run parks as awaiting_budget until the next UTC day, when the sweep
/// queues it again and StartRun admits it afresh.
async fn waiting_for_the_next_day(kind: Db) {
    let e = env(kind).await;
    let budget = "budget: {per_day: {usd: 0.001}, on_exceeded: wait}\n";
    let (run, fence) = running_with(&e.store, "default", "patient", budget).await;
    e.store.checkpoint(&run, fence, &answer(0, "m", (100, 20), Some(600)), None).await.unwrap();
    let agent = e.store.get_run(&run).await.unwrap().unwrap().agent_id;
    let StartOutcome::AwaitingBudget { run: waiting } = start_new(&e.store, &agent, Default::default()).await else {
        panic!("must wait")
    };
    assert_eq!(waiting.status, nightshift_core::RunStatus::AwaitingBudget);
    assert!(waiting.reason.clone().unwrap_or_default().starts_with("budget: the agent's daily budget"));
    let midnight = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 3, 2, 0, 0, 0).unwrap();
    assert_eq!(waiting.not_before, Some(midnight), "the next UTC day");
    assert_eq!(e.store.release_budget_waits().await.unwrap(), 0, "not yet");
    // A delivery meanwhile does not start it.
    let again = StartInput {
        run_id: waiting.id.clone(),
        agent_id: agent.clone(),
        worker_id: WorkerId::from_string("w"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    assert!(matches!(e.store.start_run(&again).await.unwrap(), StartOutcome::AwaitingBudget { .. }));
    e.clock.advance(chrono::Duration::hours(12));
    assert_eq!(e.store.release_budget_waits().await.unwrap(), 1);
    assert!(matches!(e.store.start_run(&again).await.unwrap(), StartOutcome::Started { .. }), "a fresh day");
}

#[tokio::test]
async fn waiting_for_the_next_day_sqlite() {
    waiting_for_the_next_day(Db::Sqlite).await;
}

#[tokio::test]
async fn waiting_for_the_next_day_postgres() {
    waiting_for_the_next_day(Db::Postgres).await;
}

#[tokio::test]
async fn admission_sqlite() {
    admission(Db::Sqlite).await;
}

#[tokio::test]
async fn admission_postgres() {
    admission(Db::Postgres).await;
}

#[tokio::test]
async fn ledger_sqlite() {
    ledger(Db::Sqlite).await;
}

#[tokio::test]
async fn ledger_postgres() {
    ledger(Db::Postgres).await;
}
