//! Building a [`ChatModel`] from the agent spec's [`ModelConfig`].
use std::sync::Arc;

use nightshift_core::{ModelConfig, ModelProvider};

use crate::{AnthropicChat, ChatModel, ChatRequest, EmbeddedChat, LlmError, OpenAiChat, ResponseMode, RetryPolicy};

/// The provider for `cfg` with the default [`RetryPolicy`]. The API key reference is resolved on
/// every HTTP attempt, not here, so a rotated environment variable is picked up by the next call
/// and a missing one fails the call (as [`LlmError::Config`]), not the construction.
pub fn model_from_config(cfg: &ModelConfig) -> Result<Arc<dyn ChatModel>, LlmError> {
    model_from_config_with_retry(cfg, RetryPolicy::default())
}

/// [`model_from_config`] with an explicit retry policy.
pub fn model_from_config_with_retry(cfg: &ModelConfig, retry: RetryPolicy) -> Result<Arc<dyn ChatModel>, LlmError> {
    model_with(cfg, retry, None)
}

/// The model of `cfg` as a worker builds it: its HTTP client connects only where `egress`
/// allows (checked after DNS resolution).
pub fn model_with(
    cfg: &ModelConfig,
    retry: RetryPolicy,
    egress: Option<&nightshift_egress::Egress>,
) -> Result<Arc<dyn ChatModel>, LlmError> {
    Ok(match cfg.provider {
        ModelProvider::OpenAi => Arc::new(OpenAiChat::from_config_with(cfg, egress)?.with_retry_policy(retry)),
        ModelProvider::Anthropic => Arc::new(AnthropicChat::from_config_with(cfg, egress)?.with_retry_policy(retry)),
        // In-process: there is no transport to retry.
        ModelProvider::Embedded => Arc::new(EmbeddedChat::from_config(cfg)?),
    })
}

/// Per-model defaults a request may override.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallDefaults {
    pub model: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub mode: ResponseMode,
    pub sampling: nightshift_core::Sampling,
}

impl CallDefaults {
    pub(crate) fn from_config(cfg: &ModelConfig) -> Result<Self, LlmError> {
        if cfg.model.trim().is_empty() {
            return Err(LlmError::Config("model.model is required".into()));
        }
        Ok(Self {
            model: cfg.model.clone(),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            mode: cfg.tool_call_mode.into(),
            sampling: cfg.sampling.clone(),
        })
    }

    /// Temperature, token limit and mode of `req`, falling back to these defaults.
    pub(crate) fn settings(&self, req: &ChatRequest) -> (Option<f64>, Option<u32>, ResponseMode) {
        // The structured protocol exists to carry tool calls: a request that declares no tools
        // (a summary, an agent without tools) is plain text in every mode, and an answer cut
        // off by the token limit stays usable.
        let mode = if req.tools.is_empty() { ResponseMode::NativeTools } else { req.mode.unwrap_or(self.mode) };
        (req.temperature.or(self.temperature), req.max_tokens.or(self.max_tokens), mode)
    }
}
