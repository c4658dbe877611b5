//! One loaded model and the threads that run it.
//!
//! Inference is CPU-bound and long (tens of milliseconds per token), so it never runs on the
//! tokio workers: each [`Engine`] owns `concurrency` dedicated threads that take generation jobs
//! from a bounded queue. The weights are loaded once and shared (the quantized tensors are
//! reference-counted); each generation clones the model handle to get its own KV cache.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use super::constraint::Grammars;
use super::llama::{KvCache, Llama};
use super::template::{ChatTemplate, TemplateMessage};
use super::{EmbeddedOptions, gguf};
use crate::{FinishReason, LlmError};

/// Generated tokens looked back on by the repetition penalty.
const REPEAT_WINDOW: usize = 64;
/// Divides the scores of recently generated tokens: small models decoding greedily otherwise
/// repeat a phrase until the token limit.
const REPEAT_PENALTY: f32 = 1.1;

/// Prompt states kept for reuse (see [`PrefixCache`]), at most this many...
const PREFIX_CACHE_ENTRIES: usize = 8;
/// ...and this many tokens in all (their KV caches: ~380 MB for SmolLM2-135M).
const PREFIX_CACHE_TOKENS: usize = 8192;

/// Jobs that may wait for a thread, per thread; beyond that a call fails at once (retryable)
/// instead of queueing without bound.
const QUEUE_PER_THREAD: usize = 64;

/// What one generation is asked to do.
pub(crate) struct Job {
    pub messages: Vec<TemplateMessage>,
    /// Constrains the answer to this JSON schema.
    pub schema: Option<serde_json::Value>,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Set when the caller gave up (timeout, cancelled run): the generation stops at the next token.
    pub abandoned: Arc<AtomicBool>,
    /// Gets the answer's text piece by piece as it is generated (plain-text answers only).
    pub on_text: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// What one generation produced.
#[derive(Debug)]
pub(crate) struct Generated {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
}

type Reply = tokio::sync::oneshot::Sender<Result<Generated, LlmError>>;

/// A loaded model with its threads.
pub(crate) struct Engine {
    queue: SyncSender<(Job, Reply)>,
}

/// The model's state after recent prompts (their KV cache), to skip re-reading a prompt's
/// beginning: an agent's next call repeats the whole conversation so far and adds a little, so
/// the previous call's prompt is a prefix of the next one's. Each entry is a KV cache (about
/// 46 KB per token for SmolLM2-135M); the weights are not copied.
struct PrefixCache {
    /// Most recently used last.
    entries: Mutex<Vec<(Vec<u32>, KvCache)>>,
}

impl PrefixCache {
    /// The state of the longest cached prompt that is a proper prefix of `ids`.
    fn longest_prefix(&self, ids: &[u32]) -> Option<(usize, KvCache)> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .filter(|(cached, _)| cached.len() < ids.len() && ids.starts_with(cached))
            .max_by_key(|(cached, _)| cached.len())
            .map(|(cached, state)| (cached.len(), state.clone()))
    }

    fn store(&self, ids: &[u32], state: &KvCache) {
        let Ok(mut entries) = self.entries.lock() else { return };
        entries.retain(|(cached, _)| cached.as_slice() != ids);
        if ids.len() > PREFIX_CACHE_TOKENS {
            return;
        }
        // Oldest first out, until the new entry fits both bounds.
        while entries.len() >= PREFIX_CACHE_ENTRIES
            || entries.iter().map(|(cached, _)| cached.len()).sum::<usize>() + ids.len() > PREFIX_CACHE_TOKENS
        {
            entries.remove(0);
        }
        entries.push((ids.to_vec(), state.clone()));
    }
}

struct Model {
    weights: Llama,
    prefix_cache: PrefixCache,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    grammars: Grammars,
    eos_id: u32,
    context_length: usize,
}

impl Engine {
    /// Loads `path` (blocking: call it off the async runtime) and starts its threads.
    pub(crate) fn load(path: &Path, options: EmbeddedOptions) -> Result<Self, LlmError> {
        let started = Instant::now();
        let g = gguf::load(path, options.weights)?;
        let concurrency = options.concurrency;
        let grammars = Grammars::new(&g.tokens, &g.special, g.eos_id, g.tokenizer.clone())?;
        let model = Arc::new(Model {
            template: ChatTemplate::new(g.chat_template, g.bos, g.eos)?,
            weights: g.weights,
            prefix_cache: PrefixCache { entries: Mutex::new(Vec::new()) },
            tokenizer: g.tokenizer,
            grammars,
            eos_id: g.eos_id,
            context_length: g.context_length,
        });
        let concurrency = concurrency.max(1);
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE_PER_THREAD * concurrency);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..concurrency {
            let (model, jobs) = (model.clone(), jobs.clone());
            std::thread::Builder::new()
                .name(format!("nightshift-llm-{i}"))
                .spawn(move || serve(&model, &jobs))
                .map_err(|e| LlmError::Engine(format!("cannot start an inference thread: {e}")))?;
        }
        tracing::info!(
            model = %path.display(), architecture = %g.architecture, threads = concurrency, weights = ?g.format,
            load_ms = started.elapsed().as_millis() as u64, "embedded model loaded"
        );
        Ok(Self { queue })
    }

    /// Queues `job`; the answer arrives on the returned receiver.
    pub(crate) fn submit(
        &self,
        job: Job,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Generated, LlmError>>, LlmError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.queue.try_send((job, tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                Err(LlmError::Engine("the embedded model's queue is full; try again later".into()))
            }
            Err(TrySendError::Disconnected(_)) => Err(LlmError::Engine("the embedded model's threads are gone".into())),
        }
    }
}

/// A thread's loop: the threads share one receiver; the engine's drop ends them.
fn serve(model: &Model, jobs: &Mutex<Receiver<(Job, Reply)>>) {
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((job, reply)) = next else { return };
        if job.abandoned.load(Ordering::Relaxed) {
            continue;
        }
        // A panic inside the tensor code fails this call, not the thread (which would strand
        // every later call of the model).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| generate(model, &job)))
            .unwrap_or_else(|_| Err(LlmError::Engine("the model panicked while generating".into())));
        let _ = reply.send(result);
    }
}

/// The repetition penalty on the scores in place, once per distinct recent token (what
/// candle's `apply_repeat_penalty` does, without two more copies of the vocabulary per token).
fn penalize_repeats(scores: &mut [f32], recent: &[u32]) {
    let mut seen = std::collections::HashSet::with_capacity(recent.len());
    for &id in recent {
        if seen.insert(id)
            && let Some(score) = scores.get_mut(id as usize)
        {
            *score = if *score >= 0.0 { *score / REPEAT_PENALTY } else { *score * REPEAT_PENALTY };
        }
    }
}

fn engine_err(e: impl std::fmt::Display) -> LlmError {
    LlmError::Engine(e.to_string())
}

fn generate(model: &Model, job: &Job) -> Result<Generated, LlmError> {
    let prompt = model.template.render(&job.messages)?;
    let encoding = model.tokenizer.encode(prompt, false).map_err(engine_err)?;
    let prompt_ids = encoding.get_ids();
    let limit = model.context_length.saturating_sub(job.max_tokens);
    if prompt_ids.len() > limit {
        return Err(LlmError::PromptTooLong { tokens: prompt_ids.len(), limit });
    }
    let started = Instant::now();
    let mut constraint = job.schema.as_ref().map(|s| model.grammars.constraint(s)).transpose()?;
    let sampling = if job.temperature <= 0.0 {
        Sampling::ArgMax
    } else {
        match job.top_p {
            Some(p) if p < 1.0 => Sampling::TopP { p, temperature: job.temperature },
            _ => Sampling::All { temperature: job.temperature },
        }
    };
    let mut sampler = LogitsProcessor::from_sampling(job.seed, sampling);
    let (reused, mut cache) = model.prefix_cache.longest_prefix(prompt_ids).unwrap_or_default();
    let mut logits = model.weights.forward(&mut cache, &prompt_ids[reused..], reused).map_err(engine_err)?;
    model.prefix_cache.store(prompt_ids, &cache);
    let prefilled = started.elapsed();
    let mut out: Vec<u32> = Vec::new();
    // Bytes of the decoded answer already handed to `on_text`.
    let mut told = 0;
    let finish = loop {
        if job.abandoned.load(Ordering::Relaxed) {
            return Err(LlmError::Engine("abandoned by the caller".into()));
        }
        let mut scores: Vec<f32> =
            logits.to_dtype(candle_core::DType::F32).and_then(|l| l.to_vec1()).map_err(engine_err)?;
        if let Some(c) = constraint.as_mut() {
            let allowed = c.allowed()?;
            for (id, score) in scores.iter_mut().enumerate() {
                if id >= allowed.len() || !u32::try_from(id).is_ok_and(|id| allowed.is_allowed(id)) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
        if out.is_empty()
            && let Some(score) = scores.get_mut(model.eos_id as usize)
        {
            // An answer says something: no end of text before the first token (the schema's
            // `minLength` does the same for structured answers).
            *score = f32::NEG_INFINITY;
        }
        penalize_repeats(&mut scores, &out[out.len().saturating_sub(REPEAT_WINDOW)..]);
        let masked = Tensor::new(scores.as_slice(), &Device::Cpu).map_err(engine_err)?;
        let token = sampler.sample(&masked).map_err(engine_err)?;
        if token == model.eos_id {
            break FinishReason::Stop;
        }
        if let Some(c) = constraint.as_mut() {
            c.consume(token)?;
        }
        out.push(token);
        if let Some(tx) = job.on_text.as_ref().filter(|_| constraint.is_none()) {
            let text = model.tokenizer.decode(&out, true).map_err(engine_err)?;
            // A character split across tokens decodes as U+FFFD until its last byte arrives.
            if text.len() > told && !text.ends_with('\u{FFFD}') && text.is_char_boundary(told) {
                let _ = tx.send(text[told..].to_owned());
                told = text.len();
            }
        }
        if constraint.as_ref().is_some_and(|c| c.done()) {
            break FinishReason::Stop;
        }
        if !job.stop.is_empty() {
            let text = model.tokenizer.decode(&out, true).map_err(engine_err)?;
            if job.stop.iter().any(|s| text.contains(s.as_str())) {
                break FinishReason::Stop;
            }
        }
        if out.len() >= job.max_tokens {
            break FinishReason::Length;
        }
        let pos = prompt_ids.len() + out.len() - 1;
        logits = model.weights.forward(&mut cache, &[token], pos).map_err(engine_err)?;
    };
    tracing::debug!(
        prompt_tokens = prompt_ids.len(),
        reused_tokens = reused,
        completion_tokens = out.len(),
        prefill_ms = prefilled.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "embedded generation done"
    );
    let mut text = model.tokenizer.decode(&out, true).map_err(engine_err)?;
    if let Some(cut) = job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
    }
    Ok(Generated { text, prompt_tokens: prompt_ids.len(), completion_tokens: out.len(), finish })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recent_token_is_penalized_once_towards_zero() {
        let mut scores = [2.2f32, -1.1, 0.5, 3.0];
        penalize_repeats(&mut scores, &[0, 1, 0, 9]);
        let expected = [2.2 / REPEAT_PENALTY, -1.1 * REPEAT_PENALTY, 0.5, 3.0];
        assert!(scores.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{scores:?}");
    }
}
