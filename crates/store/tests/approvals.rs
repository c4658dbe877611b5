//! Approvals in the store, on both backends: a run parks on its calls (fenced), stays parked
//! until every call is decided, is queued again by the last decision, and its next attempt gets
//! the decisions; expiry per policy; a cancel closes what is pending; a decision is final.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;
use std::time::Duration;

use common::env;
use nightshift_core::governance::{ApprovalStatus, Effect, OnTimeout};
use nightshift_core::{AgentSpec, AgentState, RunStatus, WorkerId};
use nightshift_store::{
    ApprovalCall, ApprovalFilter, NewRun, ParkInput, RunRecord, StartInput, StartOutcome, Store, StoreError, Verdict,
};
use nightshift_testkit::Db;

fn call(id: &str, tool: &str) -> ApprovalCall {
    ApprovalCall {
        call_id: id.into(),
        tool_name: tool.into(),
        arguments_json: r#"{"to":"a"}"#.into(),
        effect: Effect::Irreversible,
    }
}

fn park(timeout_s: u64, on_timeout: OnTimeout) -> ParkInput {
    ParkInput { input_tokens: 50, output_tokens: 10, timeout: Duration::from_secs(timeout_s), on_timeout }
}

fn verdict(approve: bool) -> Verdict {
    Verdict { approve, by: "key:1:ops".into(), reason: "checked".into(), arguments_json: None }
}

/// A started run of a fresh agent: (run, lease token).
async fn running(store: &Store, name: &str) -> (RunRecord, String) {
    let spec = AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}\n"
    ))
    .unwrap();
    let agent = store.create_agent(&spec, AgentState::Active).await.unwrap();
    let (run, _) =
        store.insert_run(&NewRun::manual(nightshift_core::RunId::generate(), agent.id.clone())).await.unwrap();
    let input = StartInput {
        run_id: run.id.clone(),
        agent_id: agent.id.clone(),
        worker_id: WorkerId::from_string("w1"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    match store.start_run(&input).await.unwrap() {
        StartOutcome::Started { run, lease_token, .. } => (run, lease_token),
        other => panic!("{other:?}"),
    }
}

fn fence(run: &RunRecord, token: &str) -> nightshift_store::Fence {
    nightshift_store::Fence { attempt: run.attempt, token: Some(token.into()) }
}

async fn parks_until_every_call_is_decided(kind: Db) {
    let e = env(kind).await;
    let (run, token) = running(&e.store, "mailer").await;
    let calls = [call("c1", "send_mail"), call("c2", "drop_table")];
    // A stale token is refused: only the attempt holding the run parks it.
    let stale = nightshift_store::Fence { attempt: run.attempt, token: Some("not-the-token".into()) };
    assert!(matches!(
        e.store.park_for_approval(&run.id, stale, &calls, &park(60, OnTimeout::Deny)).await,
        Err(StoreError::Fenced(_))
    ));
    let (parked, approvals) =
        e.store.park_for_approval(&run.id, fence(&run, &token), &calls, &park(60, OnTimeout::Deny)).await.unwrap();
    assert_eq!(parked.status, RunStatus::AwaitingApproval);
    assert_eq!((parked.input_tokens, parked.output_tokens), (50, 10), "the attempt's tokens are recorded");
    assert_eq!(approvals.len(), 2);
    assert!(approvals.iter().all(|a| a.status == ApprovalStatus::Pending && a.agent_name == "mailer"));
    assert_eq!(approvals[0].call_hash, nightshift_core::governance::call_hash("send_mail", r#"{"to":"a"}"#));
    // Parked: a redelivered request is dropped, not started.
    let again = StartInput {
        run_id: run.id.clone(),
        agent_id: run.agent_id.clone(),
        worker_id: WorkerId::from_string("w2"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    assert!(matches!(e.store.start_run(&again).await.unwrap(), StartOutcome::AwaitingApproval { .. }));

    let first = e.store.decide_approval(&approvals[0].id, &verdict(true)).await.unwrap();
    assert_eq!(first.approval.status, ApprovalStatus::Approved);
    assert!(first.run.is_none(), "c2 still pending: the run stays parked");
    assert!(
        matches!(
            e.store.decide_approval(&approvals[0].id, &verdict(false)).await,
            Err(StoreError::FailedPrecondition(_))
        ),
        "final"
    );
    let last = e.store.decide_approval(&approvals[1].id, &verdict(false)).await.unwrap();
    let queued = last.run.expect("the last decision queues the run");
    assert_eq!(queued.status, RunStatus::Queued);

    // The next attempt gets both decisions.
    match e.store.start_run(&again).await.unwrap() {
        StartOutcome::Started { run: next, approvals, .. } => {
            assert_eq!(next.attempt, run.attempt + 1);
            let states: Vec<(String, ApprovalStatus)> =
                approvals.iter().map(|a| (a.call_id.clone(), a.status)).collect();
            assert_eq!(states, [("c1".into(), ApprovalStatus::Approved), ("c2".into(), ApprovalStatus::Denied)]);
            assert_eq!(approvals[1].decided_by.as_deref(), Some("key:1:ops"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn parks_until_every_call_is_decided_sqlite() {
    parks_until_every_call_is_decided(Db::Sqlite).await;
}

#[tokio::test]
async fn parks_until_every_call_is_decided_postgres() {
    parks_until_every_call_is_decided(Db::Postgres).await;
}

async fn expiry_and_cancel(kind: Db) {
    let e = env(kind).await;
    // fail: the run fails and its other pending request closes with it.
    let (run, token) = running(&e.store, "a1").await;
    let calls = [call("c1", "send_mail"), call("c2", "send_sms")];
    e.store.park_for_approval(&run.id, fence(&run, &token), &calls, &park(60, OnTimeout::Fail)).await.unwrap();
    assert!(e.store.expired_approvals(10).await.unwrap().is_empty(), "not yet");
    e.clock.advance(chrono::Duration::seconds(61));
    let expired = e.store.expired_approvals(10).await.unwrap();
    assert_eq!(expired.len(), 2);
    let decided = e.store.expire_approval(&expired[0]).await.unwrap().unwrap();
    let failed = decided.run.expect("the policy fails the run");
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(failed.error.unwrap_or_default().contains("in time"));
    assert!(e.store.expire_approval(&expired[1]).await.unwrap().is_none(), "closed with the run");

    // deny: the run is queued again with the call denied.
    let (run, token) = running(&e.store, "a2").await;
    e.store
        .park_for_approval(&run.id, fence(&run, &token), &[call("c1", "send_mail")], &park(60, OnTimeout::Deny))
        .await
        .unwrap();
    e.clock.advance(chrono::Duration::seconds(61));
    let id = e.store.expired_approvals(10).await.unwrap().remove(0);
    assert_eq!(e.store.expire_approval(&id).await.unwrap().unwrap().run.unwrap().status, RunStatus::Queued);

    // cancel: the run ends and nothing is left to decide.
    let (run, token) = running(&e.store, "a3").await;
    let (_, approvals) = e
        .store
        .park_for_approval(&run.id, fence(&run, &token), &[call("c1", "send_mail")], &park(600, OnTimeout::Deny))
        .await
        .unwrap();
    assert_eq!(e.store.cancel_run(&run.id, "no").await.unwrap().status, RunStatus::Cancelled);
    let err = e.store.decide_approval(&approvals[0].id, &verdict(true)).await.unwrap_err();
    assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
    let pending = ApprovalFilter { statuses: vec![ApprovalStatus::Pending], limit: 100, ..Default::default() };
    assert!(e.store.list_approvals(&pending).await.unwrap().items.is_empty(), "no stale pending request");
}

#[tokio::test]
async fn expiry_and_cancel_sqlite() {
    expiry_and_cancel(Db::Sqlite).await;
}

#[tokio::test]
async fn expiry_and_cancel_postgres() {
    expiry_and_cancel(Db::Postgres).await;
}
