//! The llama-family forward pass (SmolLM2, Llama 3.2), with each matrix held the way each phase
//! of a generation reads it fastest on a CPU, and the KV cache apart from the weights.
//!
//! Why not candle's `quantized_llama`: its matrices have one format for both phases, and its KV
//! cache lives inside the weights. Measured on SmolLM2-135M Q4_1 (2 cores, `nightshift-bench
//! llm-embedded`, llama.cpp beside it at ~370 prompt tokens/s and ~9.5 ms per token):
//!
//! | matrices | prompt processing | decode |
//! |---|---|---|
//! | Q4_1 as stored (candle has no SIMD kernel for it) | ~35 tokens/s | ~40 ms/token |
//! | f32 | ~450 tokens/s | ~40 ms/token |
//! | Q8_0 | ~170 tokens/s | ~16 ms/token |
//!
//! A prompt is a batch: f32 matrix products (gemm, vectorized) win. A generated token is a
//! vector: reading 4× fewer bytes wins, and candle's Q8_0 dot product uses AVX2. So
//! [`Weights::Dual`] keeps both (prompt in f32, tokens in Q8_0), and the KV cache is a value of
//! its own ([`KvCache`]) that the prompt cache clones without touching the weights.
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

/// Positions of the precomputed rotary embeddings: the longest context.
pub(crate) const MAX_SEQ_LEN: usize = 4096;

/// How the matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weights {
    /// f32 for prompts and Q8_0 for generated tokens (~1.25× the f32 size).
    Dual,
    /// Q8_0 only (~1/4 of f32).
    Q8,
    /// As the file stores them.
    Stored,
}

/// One weight matrix, `[out, in]`.
struct Matrix {
    /// For batches of rows (the prompt), when kept.
    dense: Option<Tensor>,
    /// For single rows (generated tokens), and for batches without `dense`.
    quant: QMatMul,
}

impl Matrix {
    fn new(q: QTensor, weights: Weights) -> Result<Self> {
        if weights == Weights::Stored {
            return Ok(Self { dense: None, quant: QMatMul::from_qtensor(q)? });
        }
        let f = q.dequantize(&Device::Cpu)?;
        let cols = q.shape().dims().last().copied().unwrap_or(0);
        if cols % GgmlDType::Q8_0.block_size() != 0 {
            // Rows that do not split into Q8_0 blocks: f32 for both phases.
            return Ok(Self { dense: None, quant: QMatMul::Tensor(f) });
        }
        let quant = QMatMul::from_qtensor(QTensor::quantize(&f, GgmlDType::Q8_0)?)?;
        Ok(Self { dense: (weights == Weights::Dual).then_some(f), quant })
    }

    /// `x` is `[batch, rows, in]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.dense {
            Some(w) if x.dim(1)? > 1 => x.broadcast_matmul(&w.t()?),
            _ => self.quant.forward(x),
        }
    }
}

struct Layer {
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
}

/// A loaded model: immutable, shared by every generation.
pub(crate) struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Matrix,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of every layer for the positions read so far.
#[derive(Clone, Default)]
pub(crate) struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl Llama {
    /// Reads the weights of a `llama` GGUF.
    pub(crate) fn load<R: std::io::Seek + std::io::Read>(ct: &Content, r: &mut R, weights: Weights) -> Result<Self> {
        let md = |key: &str| {
            ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no {key}")))
        };
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = md("llama.block_count")?.to_u32()? as usize;
        let hidden = md("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = md("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = f64::from(md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?);
        let freq_base = md("llama.rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        let (cos, sin) = rotary(rope_dim, freq_base)?;
        let cpu = &Device::Cpu;
        let mut tensor = |name: &str| ct.tensor(r, name, cpu);
        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = embeddings_q.dequantize(cpu)?;
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        // Tied embeddings when the file has no output matrix. Only ever read for one row (the
        // last position's logits), so held in the decode format alone.
        let output_q = tensor("output.weight").unwrap_or(embeddings_q);
        let output_weights = if weights == Weights::Dual { Weights::Q8 } else { weights };
        let output = Matrix::new(output_q, output_weights)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut m = |part: &str| Matrix::new(tensor(&format!("blk.{i}.{part}.weight"))?, weights);
            layers.push(Layer {
                wq: m("attn_q")?,
                wk: m("attn_k")?,
                wv: m("attn_v")?,
                wo: m("attn_output")?,
                gate: m("ffn_gate")?,
                up: m("ffn_up")?,
                down: m("ffn_down")?,
                attention_norm: RmsNorm::from_qtensor(tensor(&format!("blk.{i}.attn_norm.weight"))?, eps)?,
                ffn_norm: RmsNorm::from_qtensor(tensor(&format!("blk.{i}.ffn_norm.weight"))?, eps)?,
            });
        }
        Ok(Self { embeddings, layers, norm, output, n_head, n_kv_head, head_dim: hidden / n_head, cos, sin })
    }

    /// Reads `tokens` at positions `pos..` after what `cache` holds (which it extends); returns
    /// the logits of the last one.
    pub(crate) fn forward(&self, cache: &mut KvCache, tokens: &[u32], pos: usize) -> Result<Tensor> {
        let seq = tokens.len();
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embeddings.index_select(&ids, 0)?.unsqueeze(0)?;
        let mask = (seq > 1)
            .then(|| candle_transformers::utils::build_additive_causal_mask(seq, pos, None, &Device::Cpu, DType::F32))
            .transpose()?;
        cache.layers.resize(self.layers.len(), None);
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let attn = self.attention(layer, kv, &layer.attention_norm.forward(&x)?, mask.as_ref(), pos)?;
            x = (attn + &x)?;
            let h = layer.ffn_norm.forward(&x)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (layer.down.forward(&gated)? + &x)?;
        }
        let last = self.norm.forward(&x)?.i((.., seq - 1..seq, ..))?;
        self.output.forward(&last)?.squeeze(0)?.squeeze(0)
    }

    fn attention(
        &self,
        layer: &Layer,
        kv: &mut Option<(Tensor, Tensor)>,
        x: &Tensor,
        mask: Option<&Tensor>,
        pos: usize,
    ) -> Result<Tensor> {
        let (b, seq, hidden) = x.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((b, seq, n, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = self.rope(&heads(layer.wq.forward(x)?, self.n_head)?, pos)?;
        let k = self.rope(&heads(layer.wk.forward(x)?, self.n_kv_head)?, pos)?;
        let v = heads(layer.wv.forward(x)?, self.n_kv_head)?;
        let (k, v) = match kv.take() {
            Some((k0, v0)) if pos > 0 => (Tensor::cat(&[&k0, &k], 2)?, Tensor::cat(&[&v0, &v], 2)?),
            _ => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        // Grouped-query attention without copying keys and values per head: the query heads
        // that share a KV head (consecutive ones) become rows of one product with it.
        let groups = self.n_head / self.n_kv_head;
        let kv_len = k.dim(2)?;
        let q = q.reshape((b, self.n_kv_head, groups * seq, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(m) => scores.reshape((b, self.n_kv_head, groups, seq, kv_len))?.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, self.n_kv_head, groups * seq, kv_len))?;
        let y = probs.matmul(&v)?.reshape((b, self.n_head, seq, self.head_dim))?;
        layer.wo.forward(&y.transpose(1, 2)?.reshape((b, seq, hidden))?)
    }

    /// Interleaved rotary embedding (the llama convention).
    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        candle_nn::rotary_emb::rope_i(x, &self.cos.narrow(0, pos, seq)?, &self.sin.narrow(0, pos, seq)?)
    }
}

fn rotary(dim: usize, base: f32) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect();
    let theta = Tensor::new(theta.as_slice(), &Device::Cpu)?;
    let positions = Tensor::arange(0, MAX_SEQ_LEN as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
    let angles = positions.reshape((MAX_SEQ_LEN, 1))?.matmul(&theta.reshape((1, ()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn a_matrix_answers_the_same_for_a_batch_and_for_its_rows_in_both_formats() {
        let w = Tensor::randn(0f32, 1.0, (64, 96), &Device::Cpu).unwrap();
        let m = Matrix::new(QTensor::quantize(&w, GgmlDType::F32).unwrap(), Weights::Dual).unwrap();
        assert!(m.dense.is_some());
        let x = Tensor::randn(0f32, 1.0, (1, 3, 96), &Device::Cpu).unwrap();
        let batch = m.forward(&x).unwrap();
        let row = m.forward(&x.i((.., 2..3, ..)).unwrap()).unwrap();
        let exact = x.i((.., 2..3, ..)).unwrap().broadcast_matmul(&w.t().unwrap()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().max_keepdim(D::Minus1).unwrap().flatten_all().unwrap().max(0).unwrap()
        };
        let scalar = |t: Tensor| t.to_scalar::<f32>().unwrap();
        // The batch is f32 (exact); the row is Q8_0 (close: 8-bit weights and activations).
        assert!(scalar(diff(&batch.i((.., 2..3, ..)).unwrap(), &exact)) < 1e-4);
        assert!(scalar(diff(&row, &exact)) < 0.5, "Q8_0 row drifted: {}", scalar(diff(&row, &exact)));
    }
}
