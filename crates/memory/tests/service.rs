//! The MemoryService over real gRPC on an ephemeral port.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Duration;
use common::{CountingModel, DIMS, WordsEmbedder, agent_scope as scope, pb_record as rec, serve};
use nightshift_core::{ManualClock, pb};
use nightshift_memory::config::{EmbedderKind, MemoryConfig, StoresConfig};
use nightshift_memory::{Embedder, InMemoryStore, InProcessIndex, MemoryError, MemoryService, MemoryStore, MemoryType};
use tonic::Code;

fn service(clock: &ManualClock, search: bool) -> MemoryService {
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryStore::with_clock(Arc::new(clock.clone())));
    common::service_over(clock, store, search.then(|| Arc::new(WordsEmbedder) as Arc<dyn Embedder>))
}

#[tokio::test]
async fn store_recall_search_forget_stats() {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(service(&clock, true)).await;
    let c = &mut run.client;
    let mut episodic_ids = Vec::new();
    for i in 0..3 {
        clock.advance(Duration::seconds(1));
        let r = c
            .store(pb::StoreMemoryRequest {
                records: vec![rec(pb::MemoryType::Episodic, "a1", &format!("run {i} done"), &[("n", &i.to_string())])],
            })
            .await
            .expect("store")
            .into_inner();
        episodic_ids.extend(r.ids);
    }
    let facts = [
        "the deploy key lives in the vault",
        "customers prefer email over phone",
        "the staging database restarts nightly",
    ];
    let stored = c
        .store(pb::StoreMemoryRequest {
            records: facts.iter().map(|f| rec(pb::MemoryType::LongTerm, "a1", f, &[("src", "test")])).collect(),
        })
        .await
        .expect("store facts")
        .into_inner();
    assert_eq!(stored.ids.len(), 3);
    // Another agent's fact must never show up in a1's search.
    c.store(pb::StoreMemoryRequest {
        records: vec![rec(pb::MemoryType::LongTerm, "a2", "the deploy key lives in the vault", &[])],
    })
    .await
    .expect("store other");

    let recalled = c
        .recall(pb::RecallRequest {
            scope: scope("a1"),
            r#type: pb::MemoryType::Episodic as i32,
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner()
        .records;
    assert_eq!(recalled.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(), ["run 2 done", "run 1 done"]);
    let older = c
        .recall(pb::RecallRequest {
            scope: scope("a1"),
            r#type: pb::MemoryType::Episodic as i32,
            before: recalled[1].created_at,
            ..Default::default()
        })
        .await
        .expect("recall page 2")
        .into_inner()
        .records;
    assert_eq!(older.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(), ["run 0 done"]);
    let filtered = c
        .recall(pb::RecallRequest {
            scope: scope("a1"),
            r#type: pb::MemoryType::Episodic as i32,
            metadata_filter: [("n".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("recall filtered")
        .into_inner()
        .records;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].content, "run 1 done");

    let hits = c
        .search(pb::SearchMemoryRequest {
            scope: scope("a1"),
            query: "where is the deploy key".into(),
            top_k: 2,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 2);
    let top = hits[0].record.as_ref().expect("record");
    assert_eq!(top.content, "the deploy key lives in the vault");
    assert_eq!(top.scope, scope("a1"));
    assert!(hits[0].score > hits[1].score);
    let none = c
        .search(pb::SearchMemoryRequest {
            scope: scope("a1"),
            query: "deploy key".into(),
            metadata_filter: [("src".to_owned(), "other".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("search filtered")
        .into_inner()
        .hits;
    assert!(none.is_empty());
    let high = c
        .search(pb::SearchMemoryRequest {
            scope: scope("a1"),
            query: "deploy key".into(),
            min_score: Some(0.99),
            ..Default::default()
        })
        .await
        .expect("search min_score")
        .into_inner()
        .hits;
    assert!(high.is_empty());

    let stats = c.stats(pb::MemoryStatsRequest { scope: scope("a1") }).await.expect("stats").into_inner();
    let count = |t: pb::MemoryType| stats.types.iter().find(|s| s.r#type == t as i32).map(|s| s.records);
    assert_eq!(count(pb::MemoryType::Episodic), Some(3));
    assert_eq!(count(pb::MemoryType::LongTerm), Some(3));
    assert_eq!(stats.types[0].backend, "memory");
    let all = c.stats(pb::MemoryStatsRequest { scope: None }).await.expect("stats all").into_inner();
    assert_eq!(all.types.iter().find(|s| s.r#type == pb::MemoryType::LongTerm as i32).map(|s| s.records), Some(4));

    let forgot = c
        .forget(pb::ForgetRequest { scope: scope("a1"), r#type: pb::MemoryType::LongTerm as i32, ids: vec![] })
        .await
        .expect("forget")
        .into_inner();
    assert_eq!(forgot.deleted, 3);
    let after = c
        .search(pb::SearchMemoryRequest { scope: scope("a1"), query: "deploy key".into(), ..Default::default() })
        .await
        .expect("search after forget")
        .into_inner()
        .hits;
    assert!(after.is_empty());
    let forgot = c
        .forget(pb::ForgetRequest { scope: scope("a1"), r#type: 0, ids: vec![episodic_ids[0].clone()] })
        .await
        .expect("forget id")
        .into_inner();
    assert_eq!(forgot.deleted, 1);
    run.stop().await;
}

#[tokio::test]
async fn working_memory_expires_by_default() {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(service(&clock, false).with_working_ttl(std::time::Duration::from_secs(60))).await;
    let c = &mut run.client;
    c.store(pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Working, "a1", "scratch", &[])] })
        .await
        .expect("store");
    let recall = pb::RecallRequest { scope: scope("a1"), r#type: pb::MemoryType::Working as i32, ..Default::default() };
    let got = c.recall(recall.clone()).await.expect("recall").into_inner().records;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ttl.map(|d| d.seconds), Some(60));
    clock.advance(Duration::seconds(61));
    assert!(c.recall(recall).await.expect("recall").into_inner().records.is_empty());
    run.stop().await;
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(service(&clock, false)).await;
    let c = &mut run.client;
    let mut no_type = rec(pb::MemoryType::Episodic, "a1", "x", &[]);
    no_type.r#type = 0;
    let cases: Vec<(pb::StoreMemoryRequest, &str)> = vec![
        (pb::StoreMemoryRequest { records: vec![] }, "records"),
        (
            pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Episodic, "a1", "ok", &[]), no_type] },
            "records[1].type",
        ),
        (
            pb::StoreMemoryRequest {
                records: vec![pb::MemoryRecord {
                    scope: Some(pb::MemoryScope { agent_id: "a".into(), session: "later".into() }),
                    ..rec(pb::MemoryType::Episodic, "a1", "x", &[])
                }],
            },
            "records[0].scope.session",
        ),
        (
            pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Episodic, "", "x", &[])] },
            "records[0].scope.agent_id",
        ),
        (pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Episodic, "a1", " ", &[])] }, "records[0].content"),
    ];
    for (req, field) in cases {
        let e = c.store(req).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(&format!("{field}:")), "{field}: {}", e.message());
    }
    let e = c
        .recall(pb::RecallRequest { scope: scope("a1"), r#type: 2, limit: 5000, ..Default::default() })
        .await
        .expect_err("limit");
    assert!(e.message().starts_with("limit:"), "{}", e.message());
    let e = c.recall(pb::RecallRequest { scope: scope("a1"), ..Default::default() }).await.expect_err("type");
    assert!(e.message().starts_with("type:"), "{}", e.message());
    let e = c.recall(pb::RecallRequest { r#type: 2, ..Default::default() }).await.expect_err("scope");
    assert!(e.message().starts_with("scope:"), "{}", e.message());
    let e = c
        .search(pb::SearchMemoryRequest { scope: scope("a1"), query: "x".into(), ..Default::default() })
        .await
        .expect_err("no search configured");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e =
        c.summarize(pb::SummarizeRequest { scope: scope("a1"), ..Default::default() }).await.expect_err("summarize");
    assert_eq!(e.code(), Code::FailedPrecondition, "no summarizer configured");
    run.stop().await;
}

fn config_with(episodic: &str) -> MemoryConfig {
    MemoryConfig {
        stores: StoresConfig {
            working: "memory://".into(),
            episodic: episodic.into(),
            long_term: "memory://".into(),
            procedural: "memory://".into(),
        },
        ..MemoryConfig::default()
    }
}

#[tokio::test]
async fn bad_store_urls_fail_start_up_without_fallback() {
    for (url, expect) in [
        ("redis://127.0.0.1:1", "stores.episodic"),
        ("", "stores.episodic"),
        ("mongodb://x", "unsupported store URL"),
        ("postgres://postgres@127.0.0.1:1/x", "stores.episodic"),
    ] {
        let e = MemoryService::from_config(&config_with(url)).await.expect_err(url);
        assert!(matches!(e, MemoryError::Config(_)), "{url}: {e}");
        assert!(e.to_string().contains(expect), "{url}: {e}");
    }
    let mut cfg = config_with("memory://");
    cfg.vector.url = "inprocess://".into();
    let e = MemoryService::from_config(&cfg).await.expect_err("vector without embedder");
    assert!(e.to_string().contains("embedder"), "{e}");
    cfg.embedder.kind = EmbedderKind::MiniLm;
    let e = MemoryService::from_config(&cfg).await.expect_err("minilm without path");
    assert!(e.to_string().contains("model_path"), "{e}");
    cfg.embedder.model_path = "/nonexistent".into();
    let e = MemoryService::from_config(&cfg).await.expect_err("minilm bad path");
    assert!(e.to_string().contains("fetch-model.sh"), "{e}");
}

#[tokio::test]
async fn config_builds_stores_from_urls() {
    let db = nightshift_testkit::sqlite_db();
    let prefix = common::unique_prefix();
    let mut cfg = config_with(&format!("{}?prefix={prefix}", common::redis_url()));
    cfg.stores.long_term = db.url.clone();
    cfg.stores.procedural = db.url.clone();
    let mut run = serve(MemoryService::from_config(&cfg).await.expect("from config")).await;
    let stats = run.client.stats(pb::MemoryStatsRequest { scope: None }).await.expect("stats").into_inner();
    let backends: Vec<&str> = stats.types.iter().map(|s| s.backend.as_str()).collect();
    assert_eq!(backends, ["memory", "redis", "sql", "sql"]);
    run.stop().await;
    common::redis_cleanup(&prefix).await;
}

async fn summarize_with(retention: pb::SummaryRetention) -> (pb::SummarizeResponse, Vec<pb::MemoryRecord>) {
    let clock = ManualClock::new(common::t0());
    let model = Arc::new(CountingModel::default());
    let mut run = serve(service(&clock, false).with_summarizer(model.clone())).await;
    let c = &mut run.client;
    for i in 0..10 {
        clock.advance(Duration::seconds(1));
        // 100 characters ~ 25 tokens each: 250 tokens in all.
        let text = format!("{i} {}", "x".repeat(98));
        c.store(pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Episodic, "a1", &text, &[])] })
            .await
            .expect("store");
    }
    let within = c
        .summarize(pb::SummarizeRequest {
            scope: scope("a1"),
            token_budget: 1000,
            retention: retention as i32,
            max_records: 0,
        })
        .await
        .expect("summarize within budget")
        .into_inner();
    assert!(within.summary.is_none());
    assert_eq!(within.summarized_records, 0);
    let resp = c
        .summarize(pb::SummarizeRequest {
            scope: scope("a1"),
            token_budget: 100,
            retention: retention as i32,
            max_records: 0,
        })
        .await
        .expect("summarize")
        .into_inner();
    let recall = pb::RecallRequest {
        scope: scope("a1"),
        r#type: pb::MemoryType::Episodic as i32,
        limit: 100,
        ..Default::default()
    };
    let recalled = c.recall(recall).await.expect("recall").into_inner().records;
    run.stop().await;
    (resp, recalled)
}

#[tokio::test]
async fn summarize_keep_archive_delete() {
    // Budget 100: the newest records within 50 tokens (2 x 25) stay, the 8 older ones are summarized.
    let (resp, recalled) = summarize_with(pb::SummaryRetention::Keep).await;
    let summary = resp.summary.expect("summary");
    assert_eq!(resp.summarized_records, 8);
    assert!(summary.summary);
    assert_eq!(summary.content, "summary of 8 entries");
    assert_eq!(summary.metadata.get("summarized_records").map(String::as_str), Some("8"));
    assert_eq!(recalled.len(), 11, "keep: originals plus the summary");
    assert!(recalled.iter().any(|r| r.id == summary.id));

    let (resp, recalled) = summarize_with(pb::SummaryRetention::Archive).await;
    assert_eq!(resp.summarized_records, 8);
    let contents: Vec<&str> = recalled.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(recalled.len(), 3, "archive: the 2 newest plus the summary: {contents:?}");
    assert!(recalled[2].summary, "the summary sits where the history it replaced ended");

    let (resp, recalled) = summarize_with(pb::SummaryRetention::Delete).await;
    assert_eq!(resp.summarized_records, 8);
    assert_eq!(recalled.len(), 3);
}

#[tokio::test]
async fn reindex_rebuilds_an_empty_in_process_index_from_the_stores() {
    let db = nightshift_testkit::sqlite_db();
    let sql: Arc<dyn MemoryStore> = Arc::new(nightshift_memory::SqlStore::connect(&db.url).await.expect("sqlite"));
    let make = || {
        let stores: HashMap<MemoryType, Arc<dyn MemoryStore>> =
            MemoryType::ALL.iter().map(|t| (*t, sql.clone())).collect();
        MemoryService::new(stores)
            .expect("service")
            .with_search(Arc::new(InProcessIndex::new(DIMS)), Arc::new(WordsEmbedder), [MemoryType::LongTerm])
            .expect("search")
    };
    let mut first = serve(make()).await;
    let mut records: Vec<_> =
        (0..299).map(|i| rec(pb::MemoryType::LongTerm, "a1", &format!("fact number {i}"), &[])).collect();
    records.insert(150, rec(pb::MemoryType::LongTerm, "a1", "the deploy key lives in the vault", &[]));
    first.client.store(pb::StoreMemoryRequest { records }).await.expect("store");
    first.stop().await;

    // A restart: same stores, empty index.
    let second = make();
    assert_eq!(second.reindex().await.expect("reindex"), 300);
    let mut run = serve(second).await;
    let hits = run
        .client
        .search(pb::SearchMemoryRequest {
            scope: scope("a1"),
            query: "deploy key vault".into(),
            top_k: 1,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .hits;
    assert_eq!(hits[0].record.as_ref().map(|r| r.content.as_str()), Some("the deploy key lives in the vault"));
    run.stop().await;
}
