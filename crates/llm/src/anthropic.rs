//! Anthropic Messages API (`POST /v1/messages`) with `tool_use` / `tool_result` blocks.
use async_trait::async_trait;
use nightshift_core::ModelConfig;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::CallDefaults;
use crate::http::{AuthStyle, Transport};
use crate::names::ToolNames;
use crate::structured::{self, TextTurn};
use crate::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message, ResponseMode, RetryPolicy, ToolCall, Usage,
};

/// The Anthropic Messages API.
///
/// Structured mode is supported for symmetry (the protocol is explained in the system prompt and
/// the answer parsed the same way), but the Messages API cannot enforce the schema; Claude models
/// call tools natively, which is the mode to use with them.
#[derive(Debug, Clone)]
pub struct AnthropicChat {
    transport: Transport,
    defaults: CallDefaults,
}

impl AnthropicChat {
    /// Base URL used when the config names none.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    /// The `anthropic-version` header sent.
    pub const API_VERSION: &'static str = "2023-06-01";
    /// `max_tokens` is mandatory in this API; used when neither request nor config sets it.
    pub const DEFAULT_MAX_TOKENS: u32 = 4096;

    /// A provider for `cfg`: `{base_url}/v1/messages` (a base URL ending in `/v1` is accepted
    /// too), key in `x-api-key`.
    pub fn from_config(cfg: &ModelConfig) -> Result<Self, LlmError> {
        Self::from_config_with(cfg, None)
    }

    /// [`AnthropicChat::from_config`] connecting only where `egress` allows.
    pub fn from_config_with(cfg: &ModelConfig, egress: Option<&nightshift_egress::Egress>) -> Result<Self, LlmError> {
        let base = cfg.base_url.as_deref().unwrap_or(Self::DEFAULT_BASE_URL).trim_end_matches('/');
        let endpoint = if base.ends_with("/v1") { format!("{base}/messages") } else { format!("{base}/v1/messages") };
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(Self::API_VERSION));
        let transport =
            Transport::new(&endpoint, cfg.api_key.clone(), AuthStyle::XApiKey, headers, cfg.request_timeout, egress)?;
        Ok(Self { transport, defaults: CallDefaults::from_config(cfg)? })
    }

    /// Replaces the retry policy of transient failures.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.transport.set_retry_policy(retry);
        self
    }

    /// The request body for `req`, as it would be sent (for inspection and tests).
    pub fn request_body(&self, req: &ChatRequest) -> Value {
        let names = ToolNames::for_request(req);
        serde_json::to_value(self.body(req, &names)).unwrap_or(Value::Null)
    }

    fn body<'a>(&'a self, req: &ChatRequest, names: &ToolNames) -> Body<'a> {
        let (temperature, max_tokens, mode) = self.defaults.settings(req);
        // The API accepts 0..=1; specs allow up to 2 (the OpenAI range).
        let temperature = temperature.map(|t| t.clamp(0.0, 1.0));
        let mut turns = Turns::default();
        let (system, tools) = match mode {
            ResponseMode::NativeTools => {
                for m in &req.messages {
                    native_blocks(m, names, &mut turns);
                }
                let tools: Vec<Value> = req
                    .tools
                    .iter()
                    .map(|t| {
                        json!({"name": names.wire(&t.name), "description": t.description, "input_schema": t.parameters_or_object()})
                    })
                    .collect();
                (req.system.clone().filter(|s| !s.trim().is_empty()), (!tools.is_empty()).then_some(tools))
            }
            ResponseMode::Structured => {
                let (system, rendered) = structured::render(req);
                for t in rendered {
                    match t {
                        TextTurn::User(c) => turns.push("user", text_block(&c)),
                        TextTurn::Assistant(c) => turns.push("assistant", text_block(&c)),
                    }
                }
                (Some(system), None)
            }
        };
        Body {
            model: &self.defaults.model,
            max_tokens: max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS),
            system,
            messages: turns.0.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect(),
            tool_choice: (req.final_only && tools.is_some()).then(|| json!({"type": "none"})),
            tools,
            temperature,
            top_p: self.defaults.sampling.top_p,
            stop_sequences: &self.defaults.sampling.stop,
        }
    }
}

#[async_trait]
impl ChatModel for AnthropicChat {
    #[tracing::instrument(name = "llm.chat", skip_all, fields(provider = "anthropic", model = %self.defaults.model))]
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let names = ToolNames::for_request(req);
        let body = self.body(req, &names);
        let mode = self.defaults.settings(req).2;
        let posted = self.transport.post_json("anthropic.messages", &body).await?;
        let mut resp = parse_message(posted.body, &names, &self.defaults.model)?;
        if mode == ResponseMode::Structured {
            let answer = structured::parse_answer(&resp.content, &req.tools)?;
            let (content, tool_calls) = answer.into_parts();
            resp.finish_reason = if tool_calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls };
            resp.content = content;
            resp.tool_calls = tool_calls;
        }
        resp.latency = posted.latency;
        resp.attempts = posted.attempts;
        tracing::debug!(
            attempts = resp.attempts,
            input_tokens = resp.usage.input_tokens,
            output_tokens = resp.usage.output_tokens,
            latency_ms = resp.latency.as_millis() as u64,
            tool_calls = resp.tool_calls.len(),
            finish_reason = %resp.finish_reason,
            "LLM call done"
        );
        Ok(resp)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

/// Messages under construction. The API wants user and assistant turns to alternate, so
/// consecutive blocks of one role (several tool results, a tool result then a user note) are
/// merged into one message.
#[derive(Default)]
struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    fn push(&mut self, role: &'static str, block: Option<Value>) {
        let Some(block) = block else { return };
        match self.0.last_mut() {
            Some((r, blocks)) if *r == role => blocks.push(block),
            _ => self.0.push((role, vec![block])),
        }
    }
}

/// A text block, or nothing for empty text (the API rejects empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn native_blocks(m: &Message, names: &ToolNames, turns: &mut Turns) {
    match m {
        Message::User { content } => turns.push("user", text_block(content)),
        Message::Assistant { content, tool_calls } => {
            turns.push("assistant", text_block(content));
            for c in tool_calls {
                // `input` must be an object; a malformed argument text (already answered by a
                // tool error) is sent as `{}`.
                let input = c.arguments_value().ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
                turns.push(
                    "assistant",
                    Some(json!({"type": "tool_use", "id": c.id, "name": names.wire(&c.name), "input": input})),
                );
            }
        }
        Message::Tool { call_id, content, is_error, .. } => {
            let mut block = json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
            if *is_error {
                block["is_error"] = Value::Bool(true);
            }
            turns.push("user", Some(block));
        }
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

fn parse_message(body: Value, names: &ToolNames, requested_model: &str) -> Result<ChatResponse, LlmError> {
    let msg: MessageResponse =
        serde_json::from_value(body).map_err(|e| LlmError::InvalidResponse(format!("not a Messages response: {e}")))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in &msg.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| LlmError::InvalidResponse("tool_use block without a name".into()))?;
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .unwrap_or_else(crate::types::generated_call_id);
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(ToolCall { id, name: names.original(name), arguments: input.to_string() });
            }
            // thinking, redacted_thinking, server tool blocks: not part of the answer.
            _ => {}
        }
    }
    let usage = msg
        .usage
        .map(|u| Usage {
            // `input_tokens` excludes cached prompt parts; all of them are prompt tokens.
            input_tokens: u.input_tokens.unwrap_or(0)
                + u.cache_creation_input_tokens.unwrap_or(0)
                + u.cache_read_input_tokens.unwrap_or(0),
            output_tokens: u.output_tokens.unwrap_or(0),
            // Cache writes are priced as input (Anthropic charges them a little more).
            cached_input_tokens: u.cache_read_input_tokens.unwrap_or(0),
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        content,
        tool_calls,
        usage,
        finish_reason: FinishReason::parse(msg.stop_reason.as_deref().unwrap_or("")),
        model: msg.model.filter(|m| !m.is_empty()).unwrap_or_else(|| requested_model.to_owned()),
        latency: Default::default(),
        attempts: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;
    use nightshift_core::{ModelProvider, ToolCallMode};
    use std::time::Duration;

    fn cfg(base: &str) -> ModelConfig {
        ModelConfig {
            provider: ModelProvider::Anthropic,
            model: "claude-test".into(),
            base_url: Some(base.into()),
            api_key: None,
            temperature: Some(1.5),
            max_tokens: None,
            request_timeout: Duration::from_secs(5),
            tool_call_mode: ToolCallMode::Native,
            sampling: Default::default(),
        }
    }

    #[test]
    fn body_merges_turns_and_maps_tools() {
        let p = AnthropicChat::from_config(&cfg("http://127.0.0.1:9")).unwrap();
        let req = ChatRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::user("hi"),
                Message::assistant(
                    "looking",
                    vec![ToolCall::new("a", "fs.read", "{}"), ToolCall::new("b", "t", "bad")],
                ),
                Message::tool_result("a", "fs.read", "text"),
                Message::tool_error("b", "t", "bad arguments"),
                Message::user(""),
            ],
            tools: vec![ToolSpec::new("fs.read", "Reads.", Value::Null)],
            ..ChatRequest::default()
        };
        let b = p.request_body(&req);
        assert!(b.get("tool_choice").is_none());
        let last = p.request_body(&ChatRequest { final_only: true, ..req.clone() });
        assert_eq!(last["tool_choice"], json!({"type": "none"}));
        assert_eq!(b["max_tokens"], 4096);
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(b["system"], "sys");
        assert_eq!(
            b["tools"][0],
            json!({"name": "fs_read", "description": "Reads.", "input_schema": {"type": "object", "properties": {}}})
        );
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["role"], "assistant");
        assert_eq!(msgs[1]["content"][1], json!({"type": "tool_use", "id": "a", "name": "fs_read", "input": {}}));
        assert_eq!(msgs[1]["content"][2]["input"], json!({}));
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "a", "content": "text"},
                {"type": "tool_result", "tool_use_id": "b", "content": "bad arguments", "is_error": true},
            ])
        );
    }

    #[test]
    fn endpoint_accepts_base_with_or_without_v1() {
        for base in ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"] {
            let p = AnthropicChat::from_config(&cfg(base)).unwrap();
            assert_eq!(p.transport.endpoint(), "http://h:1/v1/messages", "{base}");
        }
    }

    #[test]
    fn message_parsing() {
        let names = ToolNames::for_request(&ChatRequest {
            tools: vec![ToolSpec::new("fs.read", "", Value::Null)],
            ..ChatRequest::default()
        });
        let r = parse_message(
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [
                    {"type": "thinking", "thinking": "hmm"},
                    {"type": "text", "text": "Let me read."},
                    {"type": "tool_use", "id": "toolu_1", "name": "fs_read", "input": {"path": "/a"}}
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100}
            }),
            &names,
            "claude-test",
        )
        .unwrap();
        assert_eq!(r.content, "Let me read.");
        assert_eq!(r.tool_calls, [ToolCall::new("toolu_1", "fs.read", r#"{"path":"/a"}"#)]);
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage, Usage { input_tokens: 110, output_tokens: 5, cached_input_tokens: 100 });
        assert_eq!(r.model, "claude-x");
        assert!(parse_message(json!({"type": "message"}), &names, "m").is_err());
    }
}
