//! The embedded all-MiniLM-L6-v2 sentence embedder: BERT through candle (CPU) and the model's
//! own `tokenizer.json`, then mean pooling over the attention mask and L2 normalisation — the
//! same as sentence-transformers. Files come from `scripts/fetch-model.sh`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::embed::Embedder;
use crate::error::MemoryError;

/// Longest input in tokens. The shipped tokenizer.json truncates at 128, but the model was
/// trained with 256 (sentence-transformers' `max_seq_length`): keep 256 to match it.
pub const MAX_TOKENS: usize = 256;
/// Texts embedded per forward pass.
const BATCH: usize = 32;

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    dims: usize,
}

/// all-MiniLM-L6-v2 running in-process (384 dimensions).
#[derive(Clone)]
pub struct MiniLmEmbedder {
    model: Arc<Model>,
    dir: PathBuf,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn model_err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("minilm", e)
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, MemoryError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| {
        MemoryError::Config(format!(
            "embedding model file {} cannot be read ({e}); fetch it with crates/memory/scripts/fetch-model.sh",
            path.display()
        ))
    })
}

impl MiniLmEmbedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Self, MemoryError> {
        let dir = dir.into();
        let config: Config = serde_json::from_slice(&read(&dir, "config.json")?)
            .map_err(|e| MemoryError::Config(format!("{}/config.json: {e}", dir.display())))?;
        let dims = serde_json::from_slice::<serde_json::Value>(&read(&dir, "config.json")?)
            .ok()
            .and_then(|v| v.get("hidden_size").and_then(|h| h.as_u64()))
            .unwrap_or(384) as usize;
        let mut tokenizer = Tokenizer::from_bytes(read(&dir, "tokenizer.json")?)
            .map_err(|e| MemoryError::Config(format!("{}/tokenizer.json: {e}", dir.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(model_err)?;
        // Pad to the longest text of a batch, not to a fixed 128: short texts stay fast.
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let weights = read(&dir, "model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).map_err(model_err)?;
        let bert = BertModel::load(vb, &config).map_err(model_err)?;
        tracing::info!(dir = %dir.display(), dims, "all-MiniLM-L6-v2 loaded");
        Ok(Self { model: Arc::new(Model { bert, tokenizer, dims }), dir })
    }
}

impl Model {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(model_err)?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        let dev = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (rows, cols), dev).map_err(model_err)?;
        let mask = Tensor::from_vec(mask, (rows, cols), dev).map_err(model_err)?;
        let type_ids = ids.zeros_like().map_err(model_err)?;
        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask)).map_err(model_err)?;
        // Mean pooling over real tokens: sum(hidden * mask) / sum(mask), then L2 normalise.
        let pooled = (|| {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })()
        .map_err(model_err)?;
        Ok(pooled)
    }
}

#[async_trait]
impl Embedder for MiniLmEmbedder {
    fn name(&self) -> &str {
        "all-MiniLM-L6-v2"
    }

    fn dims(&self) -> usize {
        self.model.dims
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model.clone();
        let texts = texts.to_vec();
        // CPU-bound: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(BATCH) {
                out.extend(model.embed_batch(chunk)?);
            }
            Ok(out)
        })
        .await
        .map_err(model_err)?
    }
}
