//! Reading a GGUF chat model: the quantized llama-family weights (candle), and the tokenizer,
//! chat template and special tokens from the file's own metadata, so one file is the whole model.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use tokenizers::Tokenizer;

use super::WeightFormat;
use super::llama::{self, Llama, Weights};
use crate::LlmError;

/// Largest model (in f32) that [`WeightFormat::Auto`] holds as [`Weights::Dual`].
const DUAL_LIMIT_BYTES: usize = 1 << 30;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Everything read from one GGUF file.
pub(crate) struct GgufModel {
    pub weights: Llama,
    pub tokenizer: Tokenizer,
    /// Each token's text as the tokenizer stores it (GPT-2 byte-level form for BPE models).
    pub tokens: Vec<String>,
    /// Which tokens are control tokens (never sampled as text).
    pub special: Vec<bool>,
    pub chat_template: String,
    pub bos: Option<String>,
    pub eos_id: u32,
    pub eos: String,
    pub context_length: usize,
    pub architecture: String,
    /// How the matrices are held.
    pub format: Weights,
}

fn config(path: &Path, what: impl std::fmt::Display) -> LlmError {
    LlmError::Config(format!("model file {}: {what}", path.display()))
}

/// Loads the model at `path` onto the CPU.
pub(crate) fn load(path: &Path, format: WeightFormat) -> Result<GgufModel, LlmError> {
    let mut file = std::fs::File::open(path).map_err(|e| config(path, format!("cannot be opened ({e})")))?;
    let content = Content::read(&mut file).map_err(|e| config(path, format!("is not a GGUF file ({e})")))?;
    let md = &content.metadata;
    let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
    let architecture = text("general.architecture").unwrap_or_default();
    if architecture != "llama" {
        return Err(config(
            path,
            format!("architecture '{architecture}' is not supported (llama family: SmolLM2, Llama 3.2)"),
        ));
    }
    let tokenizer_model = text("tokenizer.ggml.model").unwrap_or_default();
    if tokenizer_model != "gpt2" {
        return Err(config(path, format!("tokenizer '{tokenizer_model}' is not supported (byte-level BPE, 'gpt2')")));
    }
    let strings = |key: &str| -> Result<Vec<String>, LlmError> {
        let v = md.get(key).ok_or_else(|| config(path, format!("has no {key}")))?;
        let items = v.to_vec().map_err(|e| config(path, format!("{key}: {e}")))?;
        items.iter().map(|i| i.to_string().cloned().map_err(|e| config(path, format!("{key}: {e}")))).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type").map(Value::to_vec) {
        Some(Ok(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let special: Vec<bool> = (0..tokens.len()).map(|i| types.get(i) == Some(&TOKEN_TYPE_CONTROL)).collect();
    let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let eos_id = id("tokenizer.ggml.eos_token_id").ok_or_else(|| config(path, "has no tokenizer.ggml.eos_token_id"))?;
    let eos = tokens.get(eos_id as usize).cloned().ok_or_else(|| config(path, "eos token id out of range"))?;
    let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let bos = id("tokenizer.ggml.bos_token_id").and_then(|b| tokens.get(b as usize).cloned()).filter(|_| add_bos);
    let chat_template =
        text("tokenizer.chat_template").ok_or_else(|| config(path, "has no tokenizer.chat_template"))?;
    // candle precomputes rotary embeddings for MAX_SEQ_LEN positions: no longer context.
    let context_length = (id("llama.context_length").unwrap_or(2048) as usize).min(llama::MAX_SEQ_LEN);
    let tokenizer = byte_level_bpe(&tokens, &merges, &special).map_err(|e| config(path, format!("tokenizer: {e}")))?;
    let f32_bytes: usize = content.tensor_infos.values().map(|t| t.shape.elem_count() * 4).sum();
    let format = match format {
        WeightFormat::Auto if f32_bytes <= DUAL_LIMIT_BYTES => Weights::Dual,
        WeightFormat::Auto | WeightFormat::Q8_0 => Weights::Q8,
        WeightFormat::Dual => Weights::Dual,
        WeightFormat::Stored => Weights::Stored,
    };
    let weights = Llama::load(&content, &mut file, format)
        .map_err(|e| config(path, format!("weights cannot be loaded ({e})")))?;
    Ok(GgufModel {
        weights,
        tokenizer,
        tokens,
        special,
        chat_template,
        bos,
        eos_id,
        eos,
        context_length,
        architecture,
        format,
    })
}

/// The byte-level BPE tokenizer the GGUF describes, built as a `tokenizer.json` document (the
/// one stable construction API of the tokenizers crate): the vocabulary and merges, control
/// tokens as special added tokens, digits split one by one before the byte-level split (the
/// SmolLM / StarCoder pre-tokenizer).
fn byte_level_bpe(tokens: &[String], merges: &[String], special: &[bool]) -> Result<Tokenizer, String> {
    let vocab: BTreeMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| special[*i])
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    doc.to_string().parse::<Tokenizer>().map_err(|e| e.to_string())
}
