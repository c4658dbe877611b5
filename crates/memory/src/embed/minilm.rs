//! The embedded all-MiniLM-L6-v2 sentence embedder: BERT through candle (CPU) and the model's
//! own `tokenizer.json`, then mean pooling over the attention mask and L2 normalisation — the
//! same as sentence-transformers. Files come from `scripts/fetch-model.sh`.
//!
//! candle's `BertModel` is assembled here from its public encoder and the embedding layer's
//! parts, because its embedding layer holds the whole word-embedding table in memory; this one
//! reads the rows it needs from the model file ([`WordTable`]), with the same arithmetic in the
//! same order (the vectors are identical, a test compares them).
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{BertEncoder, Config};
use safetensors::SafeTensors;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::word_table::WordTable;
use crate::embed::Embedder;
use crate::error::MemoryError;

/// Longest input in tokens. The shipped tokenizer.json truncates at 128, but the model was
/// trained with 256 (sentence-transformers' `max_seq_length`): keep 256 to match it.
pub const MAX_TOKENS: usize = 256;
/// Texts embedded per forward pass.
const BATCH: usize = 32;

struct Model {
    words: WordTable,
    positions: Embedding,
    token_types: Embedding,
    layer_norm: LayerNorm,
    encoder: BertEncoder,
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
    open(dir, name).map(|(_, bytes)| bytes)
}

/// Opens `dir/name` and reads it whole through the handle it returns (so that what was read and
/// what the handle reads later are one file, even if another is renamed over the path meanwhile).
fn open(dir: &Path, name: &str) -> Result<(File, Vec<u8>), MemoryError> {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    File::open(&path).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| (file, bytes))).map_err(|e| {
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
        let mut tokenizer = Tokenizer::from_bytes(read(&dir, "tokenizer.json")?)
            .map_err(|e| MemoryError::Config(format!("{}/tokenizer.json: {e}", dir.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(model_err)?;
        // Pad to the longest text of a batch, not to a fixed 128: short texts stay fast.
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let model = Model::load(&dir, &config, tokenizer)?;
        tracing::info!(dir = %dir.display(), dims = model.dims, "all-MiniLM-L6-v2 loaded");
        Ok(Self { model: Arc::new(model), dir })
    }
}

impl Model {
    /// Loads every weight but the word-embedding table, which stays in the file.
    fn load(dir: &Path, config: &Config, tokenizer: Tokenizer) -> Result<Self, MemoryError> {
        let path = &dir.join("model.safetensors");
        let (handle, weights) = open(dir, "model.safetensors")?;
        let file =
            SafeTensors::deserialize(&weights).map_err(|e| MemoryError::Config(format!("{}: {e}", path.display())))?;
        // Some exports name the tensors `bert.embeddings.…` (candle's `BertModel::load` does the same).
        let prefix = if file.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let table = format!("{prefix}embeddings.word_embeddings.weight");
        let words = WordTable::locate(path, handle, &weights, &table, config.vocab_size, config.hidden_size)?;
        let tensors = file
            .tensors()
            .into_iter()
            .filter(|(name, _)| *name != table)
            .map(|(name, view)| Ok((name, view.load(&Device::Cpu)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()
            .map_err(model_err)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let vb = if prefix.is_empty() { vb } else { vb.pp("bert") };
        let (e, hidden) = (vb.pp("embeddings"), config.hidden_size);
        Ok(Self {
            words,
            positions: candle_nn::embedding(config.max_position_embeddings, hidden, e.pp("position_embeddings"))
                .map_err(model_err)?,
            token_types: candle_nn::embedding(config.type_vocab_size, hidden, e.pp("token_type_embeddings"))
                .map_err(model_err)?,
            layer_norm: candle_nn::layer_norm(hidden, config.layer_norm_eps, e.pp("LayerNorm")).map_err(model_err)?,
            encoder: BertEncoder::load(vb.pp("encoder"), config).map_err(model_err)?,
            tokenizer,
            dims: hidden,
        })
    }

    /// BERT's forward pass (candle's `BertModel::forward`, the same operations in the same
    /// order) with the word rows read from the file: the last hidden state, `rows × cols × hidden`.
    fn forward(&self, ids: &[u32], rows: usize, cols: usize, mask: &Tensor) -> candle_core::Result<Tensor> {
        let dev = &Device::Cpu;
        let words = self.words.gather(ids).map_err(candle_core::Error::wrap)?;
        let words = Tensor::from_vec(words, (rows, cols, self.dims), dev)?;
        let type_ids = Tensor::zeros((rows, cols), DType::U32, dev)?;
        let positions = Tensor::arange(0u32, cols as u32, dev)?;
        let embedded =
            (&words + self.token_types.forward(&type_ids)?)?.broadcast_add(&self.positions.forward(&positions)?)?;
        let embedded = self.layer_norm.forward(&embedded)?;
        // The attention mask as BERT adds it to the scores: 0 for a token, the lowest f32 for padding.
        let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(DType::F32)?;
        let mask = (mask.ones_like()? - &mask)?.broadcast_mul(&Tensor::new(f32::MIN, dev)?)?;
        self.encoder.forward(&embedded, &mask)
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(model_err)?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        let mask = Tensor::from_vec(mask, (rows, cols), &Device::Cpu).map_err(model_err)?;
        let hidden = self.forward(&ids, rows, cols, &mask).map_err(model_err)?;
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
