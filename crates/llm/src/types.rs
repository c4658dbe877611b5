//! Provider-neutral request and response types of one chat call.
use std::time::Duration;

use serde_json::Value;

/// How the model is asked for tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResponseMode {
    /// The provider's native tool calling (`tools` / `tool_calls`, `tool_use` blocks).
    #[default]
    NativeTools,
    /// A JSON answer `{"tool", "arguments"}` or `{"final"}` constrained by a JSON schema
    /// (`response_format`), for models without native tool calls. See [`crate::structured`].
    Structured,
}

impl From<nightshift_core::ToolCallMode> for ResponseMode {
    fn from(m: nightshift_core::ToolCallMode) -> Self {
        match m {
            nightshift_core::ToolCallMode::Native => Self::NativeTools,
            nightshift_core::ToolCallMode::Structured => Self::Structured,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Name as the agent loop knows it (e.g. `read_file` or `fs.read_file`). Providers that restrict
    /// tool names get a sanitized alias; responses carry this original name again.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    /// Creates a tool description.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self { name: name.into(), description: description.into(), parameters }
    }

    /// The parameter schema, with an empty/absent schema replaced by "any object" (providers reject
    /// `null` here).
    pub(crate) fn parameters_or_object(&self) -> Value {
        match &self.parameters {
            Value::Object(m) if !m.is_empty() => self.parameters.clone(),
            _ => serde_json::json!({"type": "object", "properties": {}}),
        }
    }
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Provider-assigned call id (generated for providers/modes that have none).
    pub id: String,
    /// Tool name (the original name from [`ToolSpec::name`]).
    pub name: String,
    /// Arguments as JSON object text, exactly as the model produced it (so that a malformed
    /// argument string can be reported back to the model as a tool error instead of failing the call).
    pub arguments: String,
}

impl ToolCall {
    /// Creates a tool call.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self { id: id.into(), name: name.into(), arguments: arguments.into() }
    }

    /// Parses [`Self::arguments`]. An empty string counts as `{}`.
    pub fn arguments_value(&self) -> Result<Value, serde_json::Error> {
        if self.arguments.trim().is_empty() {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        serde_json::from_str(&self.arguments)
    }
}

/// One message of the conversation (the system prompt is [`ChatRequest::system`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Text from the user (the task, recalled memory, ...).
    User {
        /// Text.
        content: String,
    },
    /// An earlier model turn: its text and the tool calls it asked for.
    Assistant {
        /// Text (may be empty when the turn only called tools).
        content: String,
        /// Tool calls of that turn.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// [`ToolCall::id`] this answers.
        call_id: String,
        /// Tool name (needed by structured mode, which renders results as text).
        name: String,
        /// Output text, or the error message when `is_error`.
        content: String,
        /// The call failed (Anthropic flags it; OpenAI gets an `error: ` prefix).
        is_error: bool,
    },
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::User { content: content.into() }
    }

    /// An assistant turn, e.g. rebuilt from a checkpointed [`ChatResponse`].
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self::Assistant { content: content.into(), tool_calls }
    }

    /// A successful tool result.
    pub fn tool_result(call_id: impl Into<String>, name: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Tool { call_id: call_id.into(), name: name.into(), content: content.into(), is_error: false }
    }

    /// A failed tool call (bad arguments, tool error, interrupted call, ...).
    pub fn tool_error(call_id: impl Into<String>, name: impl Into<String>, error: impl Into<String>) -> Self {
        Self::Tool { call_id: call_id.into(), name: name.into(), content: error.into(), is_error: true }
    }
}

/// One chat call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// System prompt (`None` or empty = none).
    pub system: Option<String>,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature; `None` = the model config's, else the server's default.
    pub temperature: Option<f64>,
    /// Completion token limit; `None` = the model config's, else the provider default.
    pub max_tokens: Option<u32>,
    /// Tool-call mode; `None` = the model config's `tool_call_mode`.
    pub mode: Option<ResponseMode>,
    /// The model must give its final answer now: the tools stay declared (a history with tool
    /// calls needs them) but may not be called (`tool_choice: none`; in structured mode the
    /// schema only allows `{"final"}`).
    pub final_only: bool,
}

impl ChatRequest {
    /// A request with a system prompt and a first user message.
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> Self {
        let system = system.into();
        Self { system: (!system.is_empty()).then_some(system), messages: vec![Message::user(user)], ..Self::default() }
    }

    /// Replaces the tools.
    pub fn with_tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }

    /// The tools the model may call in this turn: none on a final-only turn. (The declared
    /// [`Self::tools`] stay, since a history with tool calls needs them.)
    pub(crate) fn offered_tools(&self) -> &[ToolSpec] {
        if self.final_only { &[] } else { &self.tools }
    }

    /// Sets the tool-call mode.
    pub fn with_mode(mut self, mode: ResponseMode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// Tokens used by one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (for Anthropic including cache reads and writes).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache (OpenAI
    /// `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`).
    pub cached_input_tokens: u64,
}

impl Usage {
    /// A usage without cached prompt tokens.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self { input_tokens, output_tokens, cached_input_tokens: 0 }
    }

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens = self.input_tokens.saturating_add(rhs.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rhs.output_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(rhs.cached_input_tokens);
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A natural end (OpenAI `stop`, Anthropic `end_turn` / `stop_sequence`, structured `final`).
    Stop,
    /// The model asked for tool calls.
    ToolCalls,
    /// The token limit cut the answer.
    Length,
    /// The provider filtered or the model refused the answer.
    ContentFilter,
    /// Anything else, verbatim (empty when the provider did not say).
    Other(String),
}

impl FinishReason {
    /// Canonical text form, as stored in `LlmResponse.finish_reason`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::ToolCalls => "tool_calls",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::Other(s) => s,
        }
    }

    /// Parses the canonical form and the OpenAI / Anthropic spellings.
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" | "end_turn" | "stop_sequence" => Self::Stop,
            "tool_calls" | "tool_use" | "function_call" => Self::ToolCalls,
            "length" | "max_tokens" => Self::Length,
            "content_filter" | "refusal" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of one chat call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Text; the final answer when there are no tool calls.
    pub content: String,
    /// Tool calls the model asks for (empty = final answer).
    pub tool_calls: Vec<ToolCall>,
    /// Tokens of the successful attempt.
    pub usage: Usage,
    /// Why the model stopped.
    pub finish_reason: FinishReason,
    /// Model name as reported by the provider (the requested name if it reported none).
    pub model: String,
    /// Wall time of the call including retries and their waits.
    pub latency: Duration,
    /// HTTP attempts made (1 = no retry). Not part of the proto form.
    pub attempts: u32,
}

impl ChatResponse {
    /// True when the model gave a final answer instead of tool calls.
    pub fn is_final(&self) -> bool {
        self.tool_calls.is_empty()
    }

    /// This turn as a history message for the next request.
    pub fn to_message(&self) -> Message {
        Message::assistant(self.content.clone(), self.tool_calls.clone())
    }
}

/// A fresh call id for providers/modes that assign none (ids pair tool results with calls).
pub(crate) fn generated_call_id() -> String {
    use rand::Rng;
    format!("call_{:016x}", rand::rng().random::<u64>())
}
