//! The model section of an agent spec: provider, sampling, and its validation.
use std::time::Duration;

use super::{SecretRef, check_url, opt_duration};
use crate::error::Errors;
use crate::{duration, pb};

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// LLM provider protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelProvider {
    /// Any OpenAI-compatible chat completions endpoint.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// A GGUF chat model run in-process by the worker (`model` is a catalog name or a `.gguf` path).
    Embedded,
}

/// How tool calls are requested from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ToolCallMode {
    /// Native tool calling.
    #[default]
    Native,
    /// JSON object `{tool, arguments}` | `{final}` constrained by a JSON schema.
    Structured,
}

/// The model an agent uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Protocol.
    pub provider: ModelProvider,
    /// Model name.
    pub model: String,
    /// API base URL (`None` = provider default).
    pub base_url: Option<String>,
    /// API key reference (`None` for servers without auth, e.g. a local llama.cpp).
    pub api_key: Option<SecretRef>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Per-call timeout.
    pub request_timeout: Duration,
    /// Native or structured tool calls.
    pub tool_call_mode: ToolCallMode,
    /// Top-p, seed and stop sequences.
    pub sampling: Sampling,
}

/// Sampling settings beyond the temperature.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sampling {
    /// Nucleus sampling threshold (0 < p <= 1); `None` = the provider's default.
    pub top_p: Option<f64>,
    /// Seed for reproducible sampling; `None` = random.
    pub seed: Option<u64>,
    /// Generation stops before any of these (at most [`MAX_STOP_SEQUENCES`]).
    pub stop: Vec<String>,
}

/// Most stop sequences a model config may have (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence in bytes.
pub const MAX_STOP_LEN: usize = 64;

impl ModelConfig {
    /// Validates the proto model section; every problem goes to `errs`, by field.
    pub(super) fn from_pb(errs: &mut Errors, m: Option<&pb::ModelConfig>) -> Option<ModelConfig> {
        let Some(m) = m else {
            errs.push("model", "is required");
            return None;
        };
        let provider = match m.provider() {
            pb::ModelProvider::Openai => Some(ModelProvider::OpenAi),
            pb::ModelProvider::Anthropic => Some(ModelProvider::Anthropic),
            pb::ModelProvider::Embedded => Some(ModelProvider::Embedded),
            pb::ModelProvider::Unspecified => {
                errs.push("model.provider", "is required (openai, anthropic or embedded)");
                None
            }
        };
        if provider == Some(ModelProvider::Embedded) {
            // The model runs inside the worker: a server URL or key would be silently ignored.
            if !m.base_url.is_empty() {
                errs.push("model.base_url", "is not used by the embedded provider (the model runs in the worker)");
            }
            if !m.api_key.is_empty() {
                errs.push("model.api_key", "is not used by the embedded provider (the model runs in the worker)");
            }
        }
        if let Some(p) = m.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            errs.push("model.top_p", format!("must be above 0 and at most 1 (got {p})"));
        }
        if m.stop.len() > MAX_STOP_SEQUENCES {
            errs.push("model.stop", format!("at most {MAX_STOP_SEQUENCES} sequences (got {})", m.stop.len()));
        }
        if m.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            errs.push("model.stop", format!("each sequence must be 1 to {MAX_STOP_LEN} bytes"));
        }
        if m.model.trim().is_empty() {
            errs.push("model.model", "is required");
        }
        let base_url = (!m.base_url.is_empty()).then(|| {
            check_url(errs, "model.base_url", &m.base_url);
            m.base_url.clone()
        });
        let api_key =
            (!m.api_key.is_empty()).then(|| errs.take(SecretRef::parse("model.api_key", &m.api_key))).flatten();
        if let Some(t) = m.temperature
            && !(0.0..=2.0).contains(&t)
        {
            errs.push("model.temperature", format!("must be between 0 and 2 (got {t})"));
        }
        if m.max_tokens == Some(0) {
            errs.push("model.max_tokens", "must be positive");
        }
        let request_timeout = opt_duration(errs, "model.request_timeout", &m.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            errs.push("model.request_timeout", "must be positive");
        }
        let tool_call_mode = match m.tool_call_mode() {
            pb::ToolCallMode::Unspecified | pb::ToolCallMode::Native => ToolCallMode::Native,
            pb::ToolCallMode::Structured => ToolCallMode::Structured,
        };
        Some(ModelConfig {
            provider: provider?,
            model: m.model.clone(),
            base_url,
            api_key,
            temperature: m.temperature,
            max_tokens: m.max_tokens,
            request_timeout,
            tool_call_mode,
            sampling: Sampling { top_p: m.top_p, seed: m.seed, stop: m.stop.clone() },
        })
    }

    /// The proto form.
    pub(super) fn to_pb(&self) -> pb::ModelConfig {
        pb::ModelConfig {
            provider: match self.provider {
                ModelProvider::OpenAi => pb::ModelProvider::Openai,
                ModelProvider::Anthropic => pb::ModelProvider::Anthropic,
                ModelProvider::Embedded => pb::ModelProvider::Embedded,
            } as i32,
            model: self.model.clone(),
            base_url: self.base_url.clone().unwrap_or_default(),
            api_key: self.api_key.as_ref().map(ToString::to_string).unwrap_or_default(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            request_timeout: Some(duration::to_pb(self.request_timeout)),
            tool_call_mode: match self.tool_call_mode {
                ToolCallMode::Native => pb::ToolCallMode::Native,
                ToolCallMode::Structured => pb::ToolCallMode::Structured,
            } as i32,
            top_p: self.sampling.top_p,
            seed: self.sampling.seed,
            stop: self.sampling.stop.clone(),
        }
    }
}
