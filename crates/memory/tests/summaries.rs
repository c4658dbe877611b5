//! Automatic summaries: a Store of episodes that puts a scope's history over the `[summarizer]`
//! budget makes the service summarize its oldest episodes in the background. Once with a
//! deterministic stand-in model (exact counts), once with a real small model (SmolLM2-135M,
//! `provider: embedded`, in this process), built from configuration as the `nightshift-memory`
//! binary builds it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{CountingModel, serve};
use nightshift_core::{ManualClock, pb, time};
use nightshift_memory::config::{AutoRetention, MemoryConfig, SummarizerConfig};
use nightshift_memory::service::{Budget, Retention, summary_request};
use nightshift_memory::{
    InMemoryStore, MemoryRecord, MemoryService, MemoryStore, MemoryType, Scope, SummarizerProvider,
};
use pb::memory_service_client::MemoryServiceClient;
use tonic::transport::Channel;

fn scope() -> Option<pb::MemoryScope> {
    Some(pb::MemoryScope { agent_id: "agent-1".into(), session: "agent".into() })
}

fn episode(i: usize, content: &str) -> pb::MemoryRecord {
    pb::MemoryRecord {
        id: format!("ep-{i}"),
        r#type: pb::MemoryType::Episodic as i32,
        scope: scope(),
        content: content.into(),
        created_at: Some(time::to_pb(common::t0() + chrono::Duration::minutes(i as i64))),
        ..Default::default()
    }
}

async fn episodes(c: &mut MemoryServiceClient<Channel>) -> Vec<pb::MemoryRecord> {
    let req =
        pb::RecallRequest { scope: scope(), r#type: pb::MemoryType::Episodic as i32, limit: 100, ..Default::default() };
    c.recall(req).await.unwrap().into_inner().records
}

/// Recalls the scope's episodes until a summary shows up.
async fn wait_for_summary(c: &mut MemoryServiceClient<Channel>, limit: Duration) -> Vec<pb::MemoryRecord> {
    wait_for(c, limit, |got| got.iter().any(|r| r.summary)).await
}

/// Recalls the scope's episodes until `done` holds for them (`limit` at most).
async fn wait_for(
    c: &mut MemoryServiceClient<Channel>,
    limit: Duration,
    done: impl Fn(&[pb::MemoryRecord]) -> bool,
) -> Vec<pb::MemoryRecord> {
    let started = std::time::Instant::now();
    loop {
        let got = episodes(c).await;
        if done(&got) {
            return got;
        }
        assert!(started.elapsed() < limit, "not there after {limit:?}: {got:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_episodes(c: &mut MemoryServiceClient<Channel>) -> u64 {
    let stats = c.stats(pb::MemoryStatsRequest { scope: scope() }).await.unwrap().into_inner();
    stats.types.iter().find(|t| t.r#type == pb::MemoryType::Episodic as i32).map(|t| t.records).unwrap()
}

/// The stand-in model answers "summary of N entries": the counts are exact.
#[tokio::test]
async fn a_store_over_the_episode_budget_summarizes_the_oldest_in_the_background() {
    let clock = ManualClock::new(common::t0());
    let clock_arc: Arc<dyn nightshift_core::Clock> = Arc::new(clock.clone());
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryStore::with_clock(clock_arc.clone()));
    let stores: HashMap<MemoryType, Arc<dyn MemoryStore>> =
        MemoryType::ALL.iter().map(|t| (*t, store.clone())).collect();
    let model = Arc::new(CountingModel::default());
    let service = MemoryService::new(stores)
        .unwrap()
        .with_clock(clock_arc)
        .with_summarizer(model.clone())
        .with_auto_summarize(Budget { tokens: 0, records: 4 }, Retention::Archive);
    let mut run = serve(service).await;
    let c = &mut run.client;
    for i in 0..4 {
        c.store(pb::StoreMemoryRequest { records: vec![episode(i, &format!("run {i} done"))] }).await.unwrap();
    }
    // Other types do not count towards the episodic budget.
    let fact = pb::MemoryRecord {
        r#type: pb::MemoryType::LongTerm as i32,
        scope: scope(),
        content: "a fact".into(),
        ..Default::default()
    };
    c.store(pb::StoreMemoryRequest { records: vec![fact] }).await.unwrap();

    // The fifth episode is over: the newest 2 (half the budget) stay, the 3 older are summarized.
    c.store(pb::StoreMemoryRequest { records: vec![episode(4, "run 4 done")] }).await.unwrap();
    let got = wait_for_summary(c, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{got:#?}");
    assert_eq!(&ids[..2], ["ep-4", "ep-3"]);
    let summary = &got[2];
    assert!(summary.summary);
    assert_eq!(summary.content, "summary of 3 entries");
    assert_eq!(summary.metadata.get("summarized_records").map(String::as_str), Some("3"));
    assert_eq!(summary.metadata.get("summarized_by").map(String::as_str), Some("counting"));
    assert_eq!(stored_episodes(c).await, 6, "archive: the 3 originals are kept, out of Recall");
    assert_eq!(model.prompts.lock().unwrap().len(), 1, "one summary: the four earlier Stores were within budget");
    let first = summary.id.clone();

    // A sixth episode makes four unarchived records again: within budget. A seventh is over,
    // and the next summary folds in the first one with the two episodes next to it.
    for i in 5..7 {
        c.store(pb::StoreMemoryRequest { records: vec![episode(i, &format!("run {i} done"))] }).await.unwrap();
    }
    let got = wait_for(c, Duration::from_secs(10), |got| got.iter().any(|r| r.summary && r.id != first)).await;
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{got:#?}");
    assert_eq!(&ids[..2], ["ep-6", "ep-5"]);
    assert_eq!(got[2].content, "summary of 3 entries");
    let prompts = model.prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 2, "the Store within budget summarized nothing: {prompts:#?}");
    assert!(prompts[1].contains("(earlier summary)] summary of 3 entries"), "{}", prompts[1]);
    run.stop().await;
}

/// The real small model writes the summary. The model is tiny, so the test asserts what the
/// platform guarantees, not the quality of its prose: a summary record replacing exactly the
/// episodes beyond the budget (deleted), attributed to the model, whose text is exactly what the
/// model answers to the summary request over those episodes — checked by asking the same model,
/// with the same seed, directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_small_llm_summarizes_an_agents_episodes_over_budget() {
    use nightshift_llm::embedded::catalog;
    catalog::fetch(catalog::DEFAULT_MODEL)
        .await
        .unwrap_or_else(|e| panic!("the embedded model must be fetchable: {e}"));
    let mut cfg = MemoryConfig::default();
    for store in
        [&mut cfg.stores.working, &mut cfg.stores.episodic, &mut cfg.stores.long_term, &mut cfg.stores.procedural]
    {
        *store = "memory://".into();
    }
    cfg.summarizer = SummarizerConfig {
        provider: SummarizerProvider::Embedded,
        model: catalog::DEFAULT_MODEL.into(),
        max_tokens: 120,
        seed: Some(11),
        budget_tokens: 0,
        budget_episodes: 4,
        retention: AutoRetention::Delete,
        ..SummarizerConfig::default()
    };
    let mut run = serve(MemoryService::from_config(&cfg).await.unwrap()).await;
    let c = &mut run.client;
    let originals = [
        "Task: Check the nightly build.\nResult: The nightly build of main passed; 412 tests green.",
        "Task: Check the nightly build.\nResult: The nightly build failed: the linker ran out of memory.",
        "Task: Check the nightly build.\nResult: Passed after raising the builder's memory to 8 GB.",
        "Task: Check the nightly build.\nResult: Passed; the flaky network test was skipped twice.",
        "Task: Check the nightly build.\nResult: Passed; 415 tests green.",
        "Task: Check the nightly build.\nResult: Failed: a dependency update broke the TLS tests.",
    ];
    // One Store of six episodes: one background summary, over the four oldest.
    let records = originals.iter().enumerate().map(|(i, text)| episode(i, text)).collect();
    c.store(pb::StoreMemoryRequest { records }).await.unwrap();
    let got = wait_for_summary(c, Duration::from_secs(240)).await;
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "the 2 newest and the summary: {got:#?}");
    assert_eq!(&ids[..2], ["ep-5", "ep-4"], "the newest episodes are kept as they are");
    let summary = &got[2];
    eprintln!("SmolLM2's summary: {:?}", summary.content);
    assert!(summary.summary);
    assert_eq!(summary.metadata.get("summarized_records").map(String::as_str), Some("4"));
    assert_eq!(summary.metadata.get("summarized_by").map(String::as_str), Some(catalog::DEFAULT_MODEL));
    assert_eq!(stored_episodes(c).await, 3, "delete: the 4 summarized originals are gone");

    // The same question to the same seeded model, outside the service.
    let oldest: Vec<MemoryRecord> = originals[..4]
        .iter()
        .enumerate()
        .map(|(i, text)| MemoryRecord {
            id: format!("ep-{i}"),
            kind: MemoryType::Episodic,
            scope: Scope { agent_id: "agent-1".into(), session: "agent".into() },
            content: (*text).into(),
            metadata: Default::default(),
            run_id: String::new(),
            created_at: common::t0() + chrono::Duration::minutes(i as i64),
            expires_at: None,
            summary: false,
            archived: false,
        })
        .collect();
    let model = nightshift_llm::model_from_config(&cfg.summarizer.model_config().unwrap().unwrap()).unwrap();
    let direct = model.chat(&summary_request(&oldest)).await.unwrap();
    assert!(!direct.content.trim().is_empty());
    assert_eq!(summary.content, direct.content.trim(), "the summary is the model's answer, as it gave it");
    run.stop().await;
}
