//! LLM providers behind one trait, [`ChatModel`].
//!
//! - [`OpenAiChat`]: OpenAI-compatible chat completions (`POST {base_url}/chat/completions`), which
//!   covers OpenAI, Ollama, vLLM and llama.cpp's server.
//! - [`AnthropicChat`]: Anthropic Messages (`POST {base_url}/v1/messages`).
//! - [`EmbeddedChat`]: a GGUF chat model run in this process on the CPU ([`embedded`]), with
//!   tool calls constrained to their JSON schemas while sampling.
//!
//! Both support native tool calling and a [structured-output mode](structured) for models that
//! cannot call tools natively. Every HTTP attempt has a timeout (`model.request_timeout`, from
//! connecting until the whole body is read; a timed-out attempt is not repeated), transient
//! failures are retried by a [`RetryPolicy`] honouring `Retry-After`, and every response reports
//! its token [`Usage`]. [`model_from_config`] builds a provider from the agent spec; API keys are `env:NAME`
//! references resolved on each attempt and never logged or put into errors.
//!
//! [`ChatResponse`] converts to and from the checkpointed proto form
//! ([`nightshift_proto::v1::LlmResponse`]), see [`proto`].

mod anthropic;
mod config;
pub mod embedded;
mod error;
mod http;
mod names;
mod openai;
pub mod proto;
mod retry;
pub mod structured;
mod types;

pub use anthropic::AnthropicChat;
pub use config::{model_from_config, model_from_config_with_retry, model_with};
pub use embedded::EmbeddedChat;
pub use error::{LlmError, LlmErrorKind};
pub use openai::OpenAiChat;
pub use retry::{RetryPolicy, parse_retry_after};
pub use types::{ChatRequest, ChatResponse, FinishReason, Message, ResponseMode, ToolCall, ToolSpec, Usage};

/// A chat model: one request in, one answer (text and/or tool calls) out.
///
/// Implementations retry transient transport failures themselves; what they return as an error
/// is final for this call, and [`LlmError::is_retryable`] tells the caller whether calling again
/// later makes sense.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    /// Sends `req` and returns the model's answer.
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Like [`ChatModel::chat`], telling `on_text` each piece of the answer's text as the model
    /// produces it. A provider that cannot stream answers whole, without pieces (the default).
    async fn chat_streaming(
        &self,
        req: &ChatRequest,
        on_text: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<ChatResponse, LlmError> {
        let _ = on_text;
        self.chat(req).await
    }
}
