//! One contract for every [`MemoryStore`] backend, run against the in-memory store, real Redis
//! on one server and on a 3-master Redis Cluster (unique key prefix per test), SQLite (fresh file) and Postgres (fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::sync::Arc;

use chrono::Duration;
use common::{meta, record, t0};
use nightshift_core::ManualClock;
use nightshift_memory::{InMemoryStore, MemoryStore, MemoryType, RecallQuery, RedisStore, Scope, SqlStore};

/// What a backend needs cleaned up after a test.
enum Guard {
    None,
    Sqlite(#[allow(dead_code)] nightshift_testkit::SqliteDb),
    /// The server or cluster URL and the key prefix.
    Redis(String, String),
}

impl Guard {
    async fn cleanup(self) {
        if let Guard::Redis(url, prefix) = self {
            nightshift_testkit::redis_delete_prefix(&url, &prefix).await;
        }
    }
}

type Made = (Box<dyn MemoryStore>, ManualClock, Guard);

async fn memory() -> Made {
    let clock = ManualClock::new(t0());
    (Box::new(InMemoryStore::with_clock(Arc::new(clock.clone()))), clock, Guard::None)
}

async fn redis() -> Made {
    redis_at(common::redis_url()).await
}

async fn redis_cluster() -> Made {
    redis_at(nightshift_testkit::redis_cluster_url()).await
}

async fn redis_at(server: String) -> Made {
    let clock = ManualClock::new(t0());
    let prefix = common::unique_prefix();
    let url = format!("{server}?prefix={prefix}");
    let store = RedisStore::connect_with_clock(&url, Arc::new(clock.clone()))
        .await
        .unwrap_or_else(|e| panic!("Redis at {server} is required for this test (scripts/services.sh starts it): {e}"));
    (Box::new(store), clock, Guard::Redis(server, prefix))
}

async fn sqlite() -> Made {
    let clock = ManualClock::new(t0());
    let db = nightshift_testkit::sqlite_db();
    let store = SqlStore::connect_with_clock(&db.url, Arc::new(clock.clone())).await.expect("sqlite store");
    (Box::new(store), clock, Guard::Sqlite(db))
}

async fn postgres() -> Made {
    let clock = ManualClock::new(t0());
    let url = nightshift_testkit::postgres_url().await;
    let store = SqlStore::connect_with_clock(&url, Arc::new(clock.clone())).await.expect("postgres store");
    (Box::new(store), clock, Guard::None)
}

fn scope() -> Scope {
    Scope::new("agent-1", "agent")
}

fn ids(records: &[nightshift_memory::MemoryRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

mod cases {
    use super::*;

    pub async fn put_and_get(s: &dyn MemoryStore, _c: &ManualClock) {
        let other = Scope::new("agent-2", "agent");
        let mut a = record("a", MemoryType::Episodic, &scope(), 0, "first");
        a.metadata = meta(&[("topic", "x")]);
        a.summary = true;
        let b = record("b", MemoryType::LongTerm, &scope(), 1, "second");
        let c = record("c", MemoryType::Episodic, &other, 2, "third");
        s.put(&[a.clone(), b.clone(), c]).await.unwrap();
        let got = s.get(&scope(), &["b".into(), "a".into(), "nope".into(), "c".into()]).await.unwrap();
        assert_eq!(got, vec![b, a], "ids in the caller's order, other scopes and unknown ids skipped");
        assert!(s.get(&scope(), &[]).await.unwrap().is_empty());
    }

    pub async fn recent_is_newest_first_with_limit_and_paging(s: &dyn MemoryStore, _c: &ManualClock) {
        let recs: Vec<_> =
            (0..5).map(|i| record(&format!("r{i}"), MemoryType::Episodic, &scope(), i * 1000, "x")).collect();
        s.put(&recs).await.unwrap();
        let page = s.recent(&RecallQuery::new(scope(), MemoryType::Episodic, 3)).await.unwrap();
        assert_eq!(ids(&page), ["r4", "r3", "r2"]);
        let mut q = RecallQuery::new(scope(), MemoryType::Episodic, 3);
        q.before = Some(page[2].created_at);
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["r1", "r0"], "before is exclusive");
        assert!(s.recent(&RecallQuery::new(scope(), MemoryType::Episodic, 0)).await.unwrap().is_empty());
    }

    pub async fn ties_order_by_id_descending(s: &dyn MemoryStore, _c: &ManualClock) {
        let recs: Vec<_> = ["m", "z", "a"].iter().map(|id| record(id, MemoryType::Working, &scope(), 5, "x")).collect();
        s.put(&recs).await.unwrap();
        let got = s.recent(&RecallQuery::new(scope(), MemoryType::Working, 10)).await.unwrap();
        assert_eq!(ids(&got), ["z", "m", "a"]);
    }

    pub async fn scopes_and_types_are_separate(s: &dyn MemoryStore, _c: &ManualClock) {
        // Colons in ids must not make two scopes collide.
        let s1 = Scope::new("a:b", "c");
        let s2 = Scope::new("a", "b:c");
        s.put(&[
            record("1", MemoryType::Episodic, &s1, 0, "x"),
            record("2", MemoryType::Episodic, &s2, 0, "x"),
            record("3", MemoryType::Procedural, &s1, 0, "x"),
        ])
        .await
        .unwrap();
        assert_eq!(ids(&s.recent(&RecallQuery::new(s1.clone(), MemoryType::Episodic, 10)).await.unwrap()), ["1"]);
        assert_eq!(ids(&s.recent(&RecallQuery::new(s2.clone(), MemoryType::Episodic, 10)).await.unwrap()), ["2"]);
        assert_eq!(ids(&s.recent(&RecallQuery::new(s1.clone(), MemoryType::Procedural, 10)).await.unwrap()), ["3"]);
        assert_eq!(s.count(Some(&s1), MemoryType::Episodic).await.unwrap(), 1);
        assert_eq!(s.count(None, MemoryType::Episodic).await.unwrap(), 2);
        assert_eq!(s.count(None, MemoryType::LongTerm).await.unwrap(), 0);
    }

    /// Several recalls at once (SQLite answers them in one read on its writer's own connection,
    /// which must see the writes of both of its lanes) answer each as alone: own
    /// scope, type, limit, order, paging, filter and archived records, in the queries' order.
    pub async fn recent_each_answers_each_query_as_alone(s: &dyn MemoryStore, _c: &ManualClock) {
        let other = Scope::new("agent-2", "agent");
        let mut recs: Vec<_> =
            (0..4).map(|i| record(&format!("e{i}"), MemoryType::Episodic, &scope(), i * 1000, "x")).collect();
        recs.push(record("p0", MemoryType::Procedural, &scope(), 500, "x"));
        recs.push(record("p1", MemoryType::Procedural, &scope(), 500, "x"));
        recs.push(record("o0", MemoryType::Episodic, &other, 9000, "x"));
        let mut tagged = record("e9", MemoryType::Episodic, &scope(), 100, "x");
        tagged.metadata = meta(&[("topic", "a")]);
        recs.push(tagged);
        s.put(&recs).await.unwrap();
        s.set_archived(&scope(), &["e3".into()], true).await.unwrap();

        let episodes = RecallQuery::new(scope(), MemoryType::Episodic, 2);
        let notes = RecallQuery::new(scope(), MemoryType::Procedural, 10);
        let mut filtered = RecallQuery::new(scope(), MemoryType::Episodic, 10);
        filtered.metadata = meta(&[("topic", "a")]);
        let mut paged = RecallQuery::new(scope(), MemoryType::Episodic, 10);
        paged.before = Some(recs[2].created_at);
        paged.include_archived = true;
        let none = RecallQuery::new(other.clone(), MemoryType::Procedural, 10);
        let queries = [episodes, notes, filtered, paged, none];

        let each = s.recent_each(&queries).await.unwrap();
        let got: Vec<Vec<&str>> = each.iter().map(|r| ids(r)).collect();
        assert_eq!(got, [vec!["e2", "e1"], vec!["p1", "p0"], vec!["e9"], vec!["e1", "e9", "e0"], vec![]]);
        for (q, found) in queries.iter().zip(&each) {
            assert_eq!(found, &s.recent(q).await.unwrap(), "{q:?} alone");
        }
        assert!(s.recent_each(&[]).await.unwrap().is_empty());
    }

    pub async fn metadata_filters(s: &dyn MemoryStore, _c: &ManualClock) {
        let mut recs = Vec::new();
        for (i, (topic, lang)) in [("a", "en"), ("b", "en"), ("a", "fr"), ("a", "en")].iter().enumerate() {
            let mut r = record(&format!("m{i}"), MemoryType::LongTerm, &scope(), i as i64, "x");
            r.metadata = meta(&[("topic", topic), ("lang", lang)]);
            recs.push(r);
        }
        s.put(&recs).await.unwrap();
        let mut q = RecallQuery::new(scope(), MemoryType::LongTerm, 10);
        q.metadata = meta(&[("topic", "a")]);
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["m3", "m2", "m0"]);
        q.metadata = meta(&[("topic", "a"), ("lang", "en")]);
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["m3", "m0"]);
        q.limit = 1;
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["m3"]);
        q.metadata = meta(&[("topic", "zzz")]);
        assert!(s.recent(&q).await.unwrap().is_empty());

        // More keys than one SQL statement takes (64): all stored, all filterable.
        let mut wide = record("wide", MemoryType::LongTerm, &scope(), 10, "x");
        wide.metadata = (0..150).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        s.put(std::slice::from_ref(&wide)).await.unwrap();
        assert_eq!(s.get(&scope(), &["wide".into()]).await.unwrap(), [wide]);
        q.metadata = meta(&[("k149", "v149"), ("k0", "v0")]);
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["wide"]);
    }

    pub async fn put_replaces_by_id(s: &dyn MemoryStore, _c: &ManualClock) {
        let mut r = record("same", MemoryType::Episodic, &scope(), 0, "old");
        r.metadata = meta(&[("v", "1")]);
        s.put(std::slice::from_ref(&r)).await.unwrap();
        r.content = "new".into();
        r.metadata = meta(&[("v", "2")]);
        s.put(std::slice::from_ref(&r)).await.unwrap();
        let mut q = RecallQuery::new(scope(), MemoryType::Episodic, 10);
        assert_eq!(s.recent(&q).await.unwrap(), vec![r.clone()]);
        q.metadata = meta(&[("v", "1")]);
        assert!(s.recent(&q).await.unwrap().is_empty(), "old metadata is gone");
        // Moving a record to another type leaves nothing behind in the old list.
        r.kind = MemoryType::Procedural;
        s.put(std::slice::from_ref(&r)).await.unwrap();
        assert!(s.recent(&RecallQuery::new(scope(), MemoryType::Episodic, 10)).await.unwrap().is_empty());
        assert_eq!(s.count(Some(&scope()), MemoryType::Procedural).await.unwrap(), 1);
    }

    pub async fn ttl_hides_and_purges(s: &dyn MemoryStore, c: &ManualClock) {
        let mut short = record("short", MemoryType::Working, &scope(), 0, "x");
        short.expires_at = Some(t0() + Duration::seconds(10));
        let long = record("long", MemoryType::Working, &scope(), 1, "y");
        s.put(&[short.clone(), long]).await.unwrap();
        assert_eq!(s.count(Some(&scope()), MemoryType::Working).await.unwrap(), 2);
        assert_eq!(s.get(&scope(), &["short".into()]).await.unwrap(), vec![short]);
        c.advance(Duration::seconds(10));
        assert_eq!(s.purge_expired().await.unwrap(), 1);
        assert!(s.get(&scope(), &["short".into()]).await.unwrap().is_empty());
        assert_eq!(ids(&s.recent(&RecallQuery::new(scope(), MemoryType::Working, 10)).await.unwrap()), ["long"]);
        assert_eq!(s.count(Some(&scope()), MemoryType::Working).await.unwrap(), 1);
        assert_eq!(s.count(None, MemoryType::Working).await.unwrap(), 1);
    }

    pub async fn expired_records_are_invisible_before_purge(s: &dyn MemoryStore, c: &ManualClock) {
        let mut r = record("e", MemoryType::Episodic, &scope(), 0, "x");
        r.expires_at = Some(t0() + Duration::seconds(1));
        s.put(&[r]).await.unwrap();
        c.advance(Duration::seconds(2));
        assert!(s.recent(&RecallQuery::new(scope(), MemoryType::Episodic, 10)).await.unwrap().is_empty());
        assert!(s.get(&scope(), &["e".into()]).await.unwrap().is_empty());
        assert_eq!(s.count(None, MemoryType::Episodic).await.unwrap(), 0);
        assert_eq!(s.delete(&scope(), None, &[]).await.unwrap(), 0, "expired records do not count as deleted");
    }

    pub async fn delete_by_ids_type_and_scope(s: &dyn MemoryStore, _c: &ManualClock) {
        let other = Scope::new("agent-1", "run:r9");
        s.put(&[
            record("e1", MemoryType::Episodic, &scope(), 0, "x"),
            record("e2", MemoryType::Episodic, &scope(), 1, "x"),
            record("l1", MemoryType::LongTerm, &scope(), 2, "x"),
            record("p1", MemoryType::Procedural, &scope(), 3, "x"),
            record("o1", MemoryType::Episodic, &other, 4, "x"),
        ])
        .await
        .unwrap();
        assert_eq!(s.delete(&scope(), None, &["e1".into(), "o1".into(), "nope".into()]).await.unwrap(), 1);
        assert_eq!(s.delete(&scope(), Some(MemoryType::LongTerm), &["e2".into()]).await.unwrap(), 0);
        assert_eq!(s.delete(&scope(), Some(MemoryType::Episodic), &[]).await.unwrap(), 1);
        assert_eq!(s.delete(&scope(), None, &[]).await.unwrap(), 2);
        for k in MemoryType::ALL {
            assert_eq!(s.count(Some(&scope()), k).await.unwrap(), 0);
        }
        assert_eq!(s.count(Some(&other), MemoryType::Episodic).await.unwrap(), 1, "other scope untouched");
    }

    pub async fn archive_hides_from_recall_only(s: &dyn MemoryStore, _c: &ManualClock) {
        s.put(&[
            record("a1", MemoryType::Episodic, &scope(), 0, "x"),
            record("a2", MemoryType::Episodic, &scope(), 1, "x"),
        ])
        .await
        .unwrap();
        assert_eq!(s.set_archived(&scope(), &["a1".into(), "zz".into()], true).await.unwrap(), 1);
        assert_eq!(s.set_archived(&scope(), &["a1".into()], true).await.unwrap(), 0, "already archived");
        let mut q = RecallQuery::new(scope(), MemoryType::Episodic, 10);
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["a2"]);
        q.include_archived = true;
        assert_eq!(ids(&s.recent(&q).await.unwrap()), ["a2", "a1"]);
        let got = s.get(&scope(), &["a1".into()]).await.unwrap();
        assert!(got[0].archived);
        assert_eq!(s.count(Some(&scope()), MemoryType::Episodic).await.unwrap(), 2);
    }

    pub async fn scan_pages_by_id_across_scopes(s: &dyn MemoryStore, c: &ManualClock) {
        let other = Scope::new("agent-2", "fixed:shared");
        let mut recs = Vec::new();
        for i in 0..7 {
            let sc = if i % 2 == 0 { scope() } else { other.clone() };
            recs.push(record(&format!("s{i}"), MemoryType::LongTerm, &sc, i, "x"));
        }
        recs.push(record("e0", MemoryType::Episodic, &scope(), 0, "other type"));
        let mut expiring = record("s9", MemoryType::LongTerm, &scope(), 0, "expires");
        expiring.expires_at = Some(t0() + Duration::seconds(1));
        recs.push(expiring);
        s.put(&recs).await.unwrap();
        s.set_archived(&scope(), &["s0".into()], true).await.unwrap();
        c.advance(Duration::seconds(2));
        let first = s.scan(MemoryType::LongTerm, None, 3).await.unwrap();
        assert_eq!(ids(&first), ["s0", "s1", "s2"], "archived included, id order");
        let rest = s.scan(MemoryType::LongTerm, Some("s2"), 10).await.unwrap();
        assert_eq!(ids(&rest), ["s3", "s4", "s5", "s6"], "expired s9 skipped");
        assert!(s.scan(MemoryType::LongTerm, Some("s6"), 10).await.unwrap().is_empty());
        assert_eq!(ids(&s.scan(MemoryType::Episodic, None, 10).await.unwrap()), ["e0"]);
    }

    pub async fn large_recall_spans_batches(s: &dyn MemoryStore, _c: &ManualClock) {
        // More records than one Redis scan batch, most filtered out.
        let recs: Vec<_> = (0..300)
            .map(|i| {
                let mut r = record(&format!("b{i:03}"), MemoryType::Episodic, &scope(), i, "x");
                r.metadata = meta(&[("even", if i % 2 == 0 { "yes" } else { "no" })]);
                r
            })
            .collect();
        s.put(&recs).await.unwrap();
        let mut q = RecallQuery::new(scope(), MemoryType::Episodic, 200);
        q.metadata = meta(&[("even", "yes")]);
        let got = s.recent(&q).await.unwrap();
        assert_eq!(got.len(), 150);
        assert_eq!(got[0].id, "b298");
        assert_eq!(got[149].id, "b000");
    }
}

macro_rules! contract {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, clock, guard) = super::$backend().await;
                    super::cases::$case(&*store, &clock).await;
                    guard.cleanup().await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        contract!(memory: $($case),*);
        contract!(redis: $($case),*);
        contract!(redis_cluster: $($case),*);
        contract!(sqlite: $($case),*);
        contract!(postgres: $($case),*);
    };
}

all_backends!(
    put_and_get,
    recent_is_newest_first_with_limit_and_paging,
    ties_order_by_id_descending,
    scopes_and_types_are_separate,
    recent_each_answers_each_query_as_alone,
    metadata_filters,
    put_replaces_by_id,
    ttl_hides_and_purges,
    expired_records_are_invisible_before_purge,
    delete_by_ids_type_and_scope,
    archive_hides_from_recall_only,
    scan_pages_by_id_across_scopes,
    large_recall_spans_batches,
);
