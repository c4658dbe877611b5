//! `provider: embedded`: a GGUF chat model run in-process on the CPU with candle.
//!
//! - [`catalog`]: model names, the cache directory, `pull` (download + SHA-256).
//! - `gguf`: weights, tokenizer, chat template and special tokens from the one file.
//! - `engine`: a loaded model and its dedicated inference threads (never the tokio workers).
//! - `constraint`: the answer's JSON schema compiled by llguidance and enforced while sampling.
//!
//! Tool calls use the [structured protocol](crate::structured) — one JSON object
//! `{"tool", "arguments"}` or `{"final"}` — and the schema is enforced token by token, so a call
//! is always valid JSON matching the tool's argument schema, even from a 135M-parameter model.
//! A request that declares no tools (a summary, an agent without tools) is answered in plain
//! text: wrapping it in `{"final"}` would only cost tokens, and a cut-off answer stays usable.
//! Each model file is loaded once per process, on its first call, and shared by every agent
//! that names it; it stays loaded for the life of the process.
pub mod catalog;
mod constraint;
mod engine;
mod gguf;
mod llama;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use nightshift_core::ModelConfig;
use tokio::sync::OnceCell;

use crate::config::CallDefaults;
use crate::structured::{self, TextTurn};
use crate::{ChatModel, ChatRequest, ChatResponse, LlmError, Usage};
use engine::{Engine, Job};
use template::TemplateMessage;

/// Answer tokens when neither the request nor the model config sets a limit.
const DEFAULT_MAX_TOKENS: u32 = 512;
/// How the matrices of a loaded model are held in memory (`embedded.weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// `dual` when the model is at most 1 GiB in f32, else `q8_0`.
    #[default]
    Auto,
    /// f32 for reading prompts and Q8_0 for generating (fastest; ~1.25× the f32 size:
    /// ~690 MB for SmolLM2-135M).
    Dual,
    /// Q8_0 only: a quarter of f32, prompts read ~2.5× slower than `dual`.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// As the file stores them (the smallest; candle has SIMD kernels for Q4_0, Q8_0 and the
    /// K-quants, not for Q4_1).
    Stored,
}

/// How this process runs embedded models: the `[embedded]` section of the worker's config.
/// Set once per process ([`configure`]), before the first model loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedOptions {
    /// Generations at a time per loaded model (1 to 64). One generation already uses every
    /// core for its matrix products: more only queues inside the CPU.
    pub concurrency: usize,
    /// How the weights are held.
    pub weights: WeightFormat,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { concurrency: 1, weights: WeightFormat::Auto }
    }
}

/// Most generations at a time per model.
pub const MAX_CONCURRENCY: usize = 64;

static OPTIONS: std::sync::OnceLock<EmbeddedOptions> = std::sync::OnceLock::new();

/// Sets how this process runs embedded models. The first call wins: a later one with other
/// options (a second role of `nightshift dev`) is refused, so the caller can say so.
pub fn configure(options: EmbeddedOptions) -> Result<(), LlmError> {
    if !(1..=MAX_CONCURRENCY).contains(&options.concurrency) {
        return Err(LlmError::Config(format!(
            "embedded.concurrency: {} is out of range (1 to {MAX_CONCURRENCY})",
            options.concurrency
        )));
    }
    let set = *OPTIONS.get_or_init(|| options);
    if set != options {
        return Err(LlmError::Config(format!(
            "embedded options {options:?} conflict with {set:?}, set earlier in this process"
        )));
    }
    Ok(())
}

fn options() -> EmbeddedOptions {
    OPTIONS.get().copied().unwrap_or_default()
}

/// A model file's engine, loaded by the first call that needs it.
type EngineSlot = Arc<OnceCell<Arc<Engine>>>;

/// Loaded models by file, each loaded once per process.
static ENGINES: LazyLock<Mutex<HashMap<PathBuf, EngineSlot>>> = LazyLock::new(Default::default);

async fn engine_for(path: &Path) -> Result<Arc<Engine>, LlmError> {
    let cell = {
        let mut engines = ENGINES.lock().map_err(|_| LlmError::Engine("model registry poisoned".into()))?;
        engines.entry(path.to_owned()).or_default().clone()
    };
    cell.get_or_try_init(|| async {
        if !path.is_file() {
            let name = path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
            let hint = if catalog::find(name).is_some() {
                format!("; fetch it with `nightshift models pull {name}`")
            } else {
                String::new()
            };
            return Err(LlmError::Config(format!("model file {} does not exist{hint}", path.display())));
        }
        let path = path.to_owned();
        let options = options();
        tokio::task::spawn_blocking(move || Engine::load(&path, options).map(Arc::new))
            .await
            .map_err(|e| LlmError::Engine(format!("loading the model: {e}")))?
    })
    .await
    .cloned()
}

/// A chat model running in this process.
#[derive(Debug, Clone)]
pub struct EmbeddedChat {
    path: PathBuf,
    defaults: CallDefaults,
    timeout: Duration,
}

impl EmbeddedChat {
    /// The model `cfg.model` names (a catalog name or a `.gguf` path). Nothing is loaded yet.
    pub fn from_config(cfg: &ModelConfig) -> Result<Self, LlmError> {
        let path = catalog::resolve(cfg.model.trim(), &catalog::cache_dir())?;
        Ok(Self { path, defaults: CallDefaults::from_config(cfg)?, timeout: cfg.request_timeout })
    }

    /// Loads the model now (it is otherwise loaded on the first call).
    pub async fn preload(&self) -> Result<(), LlmError> {
        engine_for(&self.path).await.map(|_| ())
    }
}

/// The conversation as chat-template messages: in the structured protocol, or as they are in
/// plain-text mode.
fn template_messages(req: &ChatRequest, plain: bool) -> Vec<TemplateMessage> {
    let (system, turns) = if plain {
        (req.system.clone().unwrap_or_default(), structured::render_history(&req.messages))
    } else {
        structured::render(req)
    };
    let mut out = Vec::new();
    if !system.is_empty() {
        out.push(TemplateMessage { role: "system", content: system });
    }
    out.extend(turns.into_iter().map(|t| match t {
        TextTurn::User(content) => TemplateMessage { role: "user", content },
        TextTurn::Assistant(content) => TemplateMessage { role: "assistant", content },
    }));
    out
}

#[async_trait::async_trait]
impl ChatModel for EmbeddedChat {
    #[tracing::instrument(name = "llm.chat", skip_all, fields(provider = "embedded", model = %self.defaults.model))]
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.answer(req, None).await
    }

    /// Plain-text answers stream as they are generated; a structured answer (JSON for the
    /// parser, when tools are declared) comes whole.
    #[tracing::instrument(name = "llm.chat", skip_all, fields(provider = "embedded", model = %self.defaults.model, stream = true))]
    async fn chat_streaming(
        &self,
        req: &ChatRequest,
        on_text: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<ChatResponse, LlmError> {
        self.answer(req, Some(on_text)).await
    }
}

impl EmbeddedChat {
    async fn answer(
        &self,
        req: &ChatRequest,
        on_text: Option<&(dyn for<'t> Fn(&'t str) + Send + Sync)>,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let engine = engine_for(&self.path).await?;
        let (temperature, max_tokens, _) = self.defaults.settings(req);
        // No tools declared (not merely none offered on a final-only turn, whose history holds
        // structured tool calls): plain text.
        let plain = req.tools.is_empty();
        let schema = if plain {
            None
        } else {
            let schema = structured::response_schema(req.offered_tools());
            Some(serde_json::to_value(schema).map_err(|e| LlmError::Engine(format!("response schema: {e}")))?)
        };
        let abandoned = Arc::new(AtomicBool::new(false));
        let job = Job {
            messages: template_messages(req, plain),
            schema,
            max_tokens: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize,
            temperature: temperature.unwrap_or(0.0),
            top_p: self.defaults.sampling.top_p,
            seed: self.defaults.sampling.seed.unwrap_or_else(rand::random),
            stop: self.defaults.sampling.stop.clone(),
            abandoned: abandoned.clone(),
            on_text: None,
        };
        let (pieces_tx, mut pieces) = tokio::sync::mpsc::unbounded_channel();
        let job = Job { on_text: (plain && on_text.is_some()).then_some(pieces_tx), ..job };
        let reply = engine.submit(job)?;
        // Dropped on timeout or when the run is cancelled: the thread stops at its next token.
        let _abandon = AbandonOnDrop(abandoned);
        let relay = async {
            while let Some(piece) = pieces.recv().await {
                if let Some(f) = on_text {
                    f(&piece);
                }
            }
        };
        // The pieces end when the job does (its sender goes with it); the answer comes after.
        let generated = match tokio::time::timeout(self.timeout, async { tokio::join!(relay, reply).1 }).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(LlmError::Engine("the inference thread stopped".into())),
            Err(_) => return Err(LlmError::Timeout(self.timeout)),
        };
        let resp = ChatResponse {
            content: generated.text,
            tool_calls: Vec::new(),
            usage: Usage::new(generated.prompt_tokens as u64, generated.completion_tokens as u64),
            finish_reason: generated.finish,
            model: self.defaults.model.clone(),
            latency: started.elapsed(),
            attempts: 1,
        };
        let resp = if plain { resp } else { structured::into_response(resp, req)? };
        tracing::debug!(
            input_tokens = resp.usage.input_tokens,
            output_tokens = resp.usage.output_tokens,
            latency_ms = resp.latency.as_millis() as u64,
            tool_calls = resp.tool_calls.len(),
            "LLM call done"
        );
        Ok(resp)
    }
}

struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
