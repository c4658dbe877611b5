//! `RecallForRun`: a run's episodes, procedural notes and facts in one call, over real gRPC on
//! an ephemeral port, against what `Recall` and `Search` answer for the same scope.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::sync::Arc;

use chrono::Duration;
use common::{DIMS, Running, WordsEmbedder, agent_scope as scope, pb_record, serve};
use nightshift_core::{ManualClock, pb};
use nightshift_memory::{Embedder, InMemoryStore, MemoryError, MemoryService, MemoryStore, SqlStore};
use tonic::Code;

fn rec(t: pb::MemoryType, agent: &str, content: &str) -> pb::MemoryRecord {
    pb_record(t, agent, content, &[])
}

/// [`WordsEmbedder`], failing (an embedding server's outage) on a text holding "outage".
#[derive(Debug)]
struct FailsOnOutage;

#[async_trait::async_trait]
impl Embedder for FailsOnOutage {
    fn name(&self) -> &str {
        "fails-on-outage"
    }

    fn dims(&self) -> usize {
        DIMS
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        if texts.iter().any(|t| t.contains("outage")) {
            return Err(MemoryError::Unavailable("the embedding server is down".into()));
        }
        WordsEmbedder.embed(texts).await
    }
}

/// A service over `store` (every type in it), with search when `search`.
fn service(clock: &ManualClock, store: Arc<dyn MemoryStore>, search: bool) -> MemoryService {
    common::service_over(clock, store, search.then(|| Arc::new(FailsOnOutage) as Arc<dyn Embedder>))
}

/// Three episodes and two notes of `a1`, facts of `a1` and `a2`, a second apart.
async fn remember(run: &mut Running, clock: &ManualClock) {
    let records = [
        rec(pb::MemoryType::Episodic, "a1", "run 0 done"),
        rec(pb::MemoryType::Procedural, "a1", "note 0"),
        rec(pb::MemoryType::Episodic, "a1", "run 1 done"),
        rec(pb::MemoryType::Procedural, "a1", "note 1"),
        rec(pb::MemoryType::Episodic, "a1", "run 2 done"),
        rec(pb::MemoryType::LongTerm, "a1", "the deploy key lives in the vault"),
        rec(pb::MemoryType::LongTerm, "a1", "customers prefer email over phone"),
        rec(pb::MemoryType::LongTerm, "a2", "the deploy key lives in the vault"),
        rec(pb::MemoryType::Episodic, "a2", "another agent's run"),
    ];
    for r in records {
        clock.advance(Duration::seconds(1));
        run.client.store(pb::StoreMemoryRequest { records: vec![r] }).await.expect("store");
    }
}

fn contents(records: &[pb::MemoryRecord]) -> Vec<&str> {
    records.iter().map(|r| r.content.as_str()).collect()
}

fn ask(episodes: u32, notes: u32, top_k: u32, query: &str) -> pb::RecallForRunRequest {
    pb::RecallForRunRequest { scope: scope("a1"), episodes, notes, top_k, query: query.into() }
}

async fn recall(run: &mut Running, kind: pb::MemoryType, limit: u32) -> Vec<pb::MemoryRecord> {
    let req = pb::RecallRequest { scope: scope("a1"), r#type: kind as i32, limit, ..Default::default() };
    run.client.recall(req).await.expect("recall").into_inner().records
}

/// The answer is what Recall (twice) and Search answer: the scope's own records, newest first,
/// at most as many as asked; the facts best first.
async fn answers_as_recall_and_search(store: Arc<dyn MemoryStore>) {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(service(&clock, store, true)).await;
    remember(&mut run, &clock).await;

    let got = run.client.recall_for_run(ask(2, 5, 1, "where is the deploy key")).await.expect("call").into_inner();
    assert_eq!(contents(&got.episodes), ["run 2 done", "run 1 done"]);
    assert_eq!(contents(&got.notes), ["note 1", "note 0"]);
    assert_eq!(got.facts.len(), 1);
    let fact = got.facts[0].record.as_ref().expect("record");
    assert_eq!(
        (fact.content.as_str(), fact.scope.as_ref().map(|s| s.agent_id.as_str())),
        ("the deploy key lives in the vault", Some("a1"))
    );
    assert!(!got.search_unavailable);
    assert_eq!(got.episodes, recall(&mut run, pb::MemoryType::Episodic, 2).await);
    assert_eq!(got.notes, recall(&mut run, pb::MemoryType::Procedural, 5).await);
    let search = pb::SearchMemoryRequest {
        scope: scope("a1"),
        query: "where is the deploy key".into(),
        top_k: 1,
        ..Default::default()
    };
    assert_eq!(got.facts, run.client.search(search).await.expect("search").into_inner().hits);

    // Nothing asked of a part: that part is empty, and a search needs no query.
    let got = run.client.recall_for_run(ask(0, 1, 0, "")).await.expect("call").into_inner();
    assert!(got.episodes.is_empty() && got.facts.is_empty() && !got.search_unavailable);
    assert_eq!(contents(&got.notes), ["note 1"]);

    // A failing search costs the facts only, and says why.
    let got = run.client.recall_for_run(ask(1, 1, 3, "the outage")).await.expect("call").into_inner();
    assert!(got.facts.is_empty() && !got.search_unavailable, "{got:?}");
    assert!(got.search_error.contains("embedding server is down"), "{got:?}");
    assert_eq!((contents(&got.episodes), contents(&got.notes)), (vec!["run 2 done"], vec!["note 1"]));
    run.stop().await;
}

#[tokio::test]
async fn answers_as_recall_and_search_in_memory() {
    let clock: Arc<dyn nightshift_core::Clock> = Arc::new(ManualClock::new(common::t0()));
    answers_as_recall_and_search(Arc::new(InMemoryStore::with_clock(clock))).await;
}

/// On SQLite the two recalls are one read on the store's group writer (`SqlStore::recent_each`).
#[tokio::test]
async fn answers_as_recall_and_search_on_sqlite() {
    let db = nightshift_testkit::sqlite_db();
    let store = SqlStore::connect(&db.url).await.expect("sqlite");
    answers_as_recall_and_search(Arc::new(store)).await;
}

/// Without a vector index the recalls are still answered, and the answer says no search ran.
#[tokio::test]
async fn without_an_index_recalls_and_says_so() {
    let clock = ManualClock::new(common::t0());
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryStore::with_clock(Arc::new(clock.clone())));
    let mut run = serve(service(&clock, store, false)).await;
    remember(&mut run, &clock).await;
    let got = run.client.recall_for_run(ask(10, 5, 3, "deploy key")).await.expect("call").into_inner();
    assert!(got.search_unavailable && got.facts.is_empty() && got.search_error.is_empty());
    assert_eq!(contents(&got.episodes), ["run 2 done", "run 1 done", "run 0 done"]);
    assert_eq!(contents(&got.notes), ["note 1", "note 0"]);
    run.stop().await;
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let clock = ManualClock::new(common::t0());
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryStore::with_clock(Arc::new(clock.clone())));
    let mut run = serve(service(&clock, store, true)).await;
    let no_scope = pb::RecallForRunRequest { scope: None, ..ask(1, 1, 0, "") };
    let cases = [
        (ask(1001, 0, 0, ""), "episodes"),
        (ask(0, 1001, 0, ""), "notes"),
        (ask(0, 0, 101, "q"), "top_k"),
        (ask(0, 0, 1, "  "), "query"),
        (ask(0, 0, 1, &"x".repeat(64 * 1024 + 1)), "query"),
        (no_scope, "scope"),
    ];
    for (req, field) in cases {
        let err = run.client.recall_for_run(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    run.stop().await;
}
