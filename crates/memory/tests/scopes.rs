//! Scopes over real gRPC: a `fixed:<id>` scope is shared by every agent naming it (Recall,
//! Search, Stats, Forget), whatever agent id a caller sends; other scopes stay apart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Duration;
use common::{DIMS, WordsEmbedder, serve};
use nightshift_core::{ManualClock, pb};
use nightshift_memory::{InMemoryStore, InProcessIndex, MemoryService, MemoryStore, MemoryType};

fn searchable_service(clock: &ManualClock) -> MemoryService {
    let clock: Arc<dyn nightshift_core::Clock> = Arc::new(clock.clone());
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryStore::with_clock(clock.clone()));
    let stores: HashMap<MemoryType, Arc<dyn MemoryStore>> =
        MemoryType::ALL.iter().map(|t| (*t, store.clone())).collect();
    MemoryService::new(stores)
        .expect("service")
        .with_clock(clock)
        .with_search(Arc::new(InProcessIndex::new(DIMS)), Arc::new(WordsEmbedder), [MemoryType::LongTerm])
        .expect("search")
}

fn scope(agent: &str, session: &str) -> Option<pb::MemoryScope> {
    Some(pb::MemoryScope { agent_id: agent.into(), session: session.into() })
}

fn rec(t: pb::MemoryType, agent: &str, session: &str, content: &str) -> pb::MemoryRecord {
    pb::MemoryRecord { r#type: t as i32, scope: scope(agent, session), content: content.into(), ..Default::default() }
}

#[tokio::test]
async fn a_fixed_scope_is_shared_by_every_agent_naming_it() {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(searchable_service(&clock)).await;
    let c = &mut run.client;
    let stored = [
        rec(pb::MemoryType::Episodic, "agent-a", "fixed:team", "a: the release branch is cut"),
        rec(pb::MemoryType::Episodic, "agent-b", "fixed:team", "b: release notes drafted"),
        rec(pb::MemoryType::Episodic, "agent-c", "fixed:other", "c: unrelated work"),
        rec(pb::MemoryType::Episodic, "agent-a", "agent", "a: private diary"),
        rec(pb::MemoryType::LongTerm, "agent-a", "fixed:team", "the staging database password rotates monthly"),
        rec(pb::MemoryType::LongTerm, "agent-c", "fixed:other", "the staging database lives in Frankfurt"),
        // A shared scope needs no agent id.
        rec(pb::MemoryType::Procedural, "", "fixed:team", "tag releases with vX.Y.Z"),
    ];
    for r in stored {
        clock.advance(Duration::seconds(1));
        c.store(pb::StoreMemoryRequest { records: vec![r] }).await.expect("store");
    }
    let recall = |agent: &str, session: &str, t: pb::MemoryType| pb::RecallRequest {
        scope: scope(agent, session),
        r#type: t as i32,
        limit: 10,
        ..Default::default()
    };
    let contents = |records: &[pb::MemoryRecord]| records.iter().map(|r| r.content.clone()).collect::<Vec<_>>();

    // Both agents naming fixed:team see both episodes, and so would any other agent.
    for reader in ["agent-a", "agent-b", "agent-z"] {
        let got = c.recall(recall(reader, "fixed:team", pb::MemoryType::Episodic)).await.unwrap().into_inner().records;
        assert_eq!(contents(&got), ["b: release notes drafted", "a: the release branch is cut"], "{reader}");
        for r in &got {
            let s = r.scope.as_ref().unwrap();
            assert_eq!((s.agent_id.as_str(), s.session.as_str()), ("", "fixed:team"), "no owning agent");
        }
        let notes =
            c.recall(recall(reader, "fixed:team", pb::MemoryType::Procedural)).await.unwrap().into_inner().records;
        assert_eq!(contents(&notes), ["tag releases with vX.Y.Z"]);
    }
    // Another fixed scope, and an agent's own scope, stay apart.
    let other = c.recall(recall("agent-a", "fixed:other", pb::MemoryType::Episodic)).await.unwrap().into_inner();
    assert_eq!(contents(&other.records), ["c: unrelated work"]);
    let own = c.recall(recall("agent-b", "agent", pb::MemoryType::Episodic)).await.unwrap().into_inner();
    assert!(own.records.is_empty(), "agent-a's private scope is not agent-b's: {:?}", own.records);
    let own = c.recall(recall("agent-a", "agent", pb::MemoryType::Episodic)).await.unwrap().into_inner();
    assert_eq!(contents(&own.records), ["a: private diary"]);

    // Search filters by the shared scope too: agent-b finds agent-a's fact, not fixed:other's.
    let search = |agent: &str, session: &str| pb::SearchMemoryRequest {
        scope: scope(agent, session),
        query: "staging database".into(),
        top_k: 5,
        ..Default::default()
    };
    let hits = c.search(search("agent-b", "fixed:team")).await.unwrap().into_inner().hits;
    let found: Vec<&str> = hits.iter().filter_map(|h| h.record.as_ref()).map(|r| r.content.as_str()).collect();
    assert_eq!(found, ["the staging database password rotates monthly"]);
    let hits = c.search(search("agent-c", "fixed:other")).await.unwrap().into_inner().hits;
    let found: Vec<&str> = hits.iter().filter_map(|h| h.record.as_ref()).map(|r| r.content.as_str()).collect();
    assert_eq!(found, ["the staging database lives in Frankfurt"]);

    let stats = c.stats(pb::MemoryStatsRequest { scope: scope("agent-z", "fixed:team") }).await.unwrap().into_inner();
    let count = |t: pb::MemoryType| stats.types.iter().find(|s| s.r#type == t as i32).map(|s| s.records);
    assert_eq!(count(pb::MemoryType::Episodic), Some(2));
    assert_eq!(count(pb::MemoryType::LongTerm), Some(1));

    // Shared means shared: any member may forget the scope's records.
    let forgot = c
        .forget(pb::ForgetRequest {
            scope: scope("agent-b", "fixed:team"),
            r#type: pb::MemoryType::Episodic as i32,
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgot.deleted, 2);
    let left = c.recall(recall("agent-a", "fixed:team", pb::MemoryType::Episodic)).await.unwrap().into_inner();
    assert!(left.records.is_empty());
    let other = c.recall(recall("agent-c", "fixed:other", pb::MemoryType::Episodic)).await.unwrap().into_inner();
    assert_eq!(other.records.len(), 1, "another fixed scope is untouched");
    run.stop().await;
}

#[tokio::test]
async fn an_agent_or_run_scope_still_needs_its_agent_id() {
    let clock = ManualClock::new(common::t0());
    let mut run = serve(searchable_service(&clock)).await;
    for session in ["agent", "run:r1"] {
        let e = run
            .client
            .store(pb::StoreMemoryRequest { records: vec![rec(pb::MemoryType::Episodic, "", session, "x")] })
            .await
            .expect_err("no agent id");
        assert!(e.message().starts_with("records[0].scope.agent_id:"), "{session}: {}", e.message());
    }
    run.stop().await;
}
