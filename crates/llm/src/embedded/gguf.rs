//! Reading a GGUF chat model: the quantized llama-family weights (candle), and the tokenizer,
//! chat template and special tokens from the file's own metadata, so one file is the whole model.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde_json::json;
use tokenizers::Tokenizer;

use crate::LlmError;

/// Largest model whose weights are expanded to f32 at load (see [`expand_to_f32`]).
const EXPAND_LIMIT_BYTES: usize = 1 << 30;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Everything read from one GGUF file.
pub(crate) struct GgufModel {
    pub weights: ModelWeights,
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
    /// Whether the weights were expanded to f32.
    pub expanded: bool,
}

fn config(path: &Path, what: impl std::fmt::Display) -> LlmError {
    LlmError::Config(format!("model file {}: {what}", path.display()))
}

/// Loads the model at `path` onto the CPU.
pub(crate) fn load(path: &Path) -> Result<GgufModel, LlmError> {
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
    let context_length = (id("llama.context_length").unwrap_or(2048) as usize)
        .min(candle_transformers::models::quantized_llama::MAX_SEQ_LEN);
    let tokenizer = byte_level_bpe(&tokens, &merges, &special).map_err(|e| config(path, format!("tokenizer: {e}")))?;
    let f32_bytes: usize = content.tensor_infos.values().map(|t| t.shape.elem_count() * 4).sum();
    let expanded = f32_bytes <= EXPAND_LIMIT_BYTES;
    let weights = if expanded {
        expand_to_f32(content, &mut file)
            .and_then(|(content, mut f32_file)| ModelWeights::from_gguf(content, &mut f32_file, &Device::Cpu))
    } else {
        ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
    }
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
        expanded,
    })
}

/// The same model with every tensor in f32, as an in-memory GGUF.
///
/// Why: candle has no SIMD kernel for most quantized formats on x86 (Q4_1 runs scalar), while
/// its f32 matrix products use the CPU's vector units, chosen at run time. Measured on SmolLM2-135M
/// Q4_1 (2 cores): quantized, ~30 ms per prompt token and ~40 ms per generated token; f32, ~5.5 ms
/// and ~110 ms. Agent calls are long prompts with short JSON answers, so f32 is about twice as
/// fast per call, for 4-5× the memory; models beyond [`EXPAND_LIMIT_BYTES`] in f32 stay quantized.
fn expand_to_f32(
    content: Content,
    file: &mut std::fs::File,
) -> candle_core::Result<(Content, std::io::Cursor<Vec<u8>>)> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let q = content.tensor(file, name, &Device::Cpu)?;
        let f32 = QTensor::quantize(&q.dequantize(&Device::Cpu)?, GgmlDType::F32)?;
        tensors.push((name.clone(), f32));
    }
    let metadata: Vec<(&str, &Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut buffer = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs)?;
    drop(tensors);
    buffer.set_position(0);
    let expanded = Content::read(&mut buffer)?;
    Ok((expanded, buffer))
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
