//! OpenAI-compatible chat completions: OpenAI, Ollama, vLLM, llama.cpp, any `base_url`.
use async_trait::async_trait;
use nightshift_core::ModelConfig;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::CallDefaults;
use crate::http::{AuthStyle, Transport};
use crate::names::ToolNames;
use crate::structured::{self, ResponseSchema, TextTurn};
use crate::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message, ResponseMode, RetryPolicy, ToolCall, Usage,
};

/// An OpenAI-compatible chat completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    transport: Transport,
    defaults: CallDefaults,
}

impl OpenAiChat {
    /// Base URL used when the config names none.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    /// A provider for `cfg` (`model.base_url` or [`Self::DEFAULT_BASE_URL`], then
    /// `/chat/completions`). The key, if any, is sent as `Authorization: Bearer`.
    pub fn from_config(cfg: &ModelConfig) -> Result<Self, LlmError> {
        Self::from_config_with(cfg, None)
    }

    /// [`OpenAiChat::from_config`] connecting only where `egress` allows.
    pub fn from_config_with(cfg: &ModelConfig, egress: Option<&nightshift_egress::Egress>) -> Result<Self, LlmError> {
        let base = cfg.base_url.as_deref().unwrap_or(Self::DEFAULT_BASE_URL).trim_end_matches('/');
        let transport = Transport::new(
            &format!("{base}/chat/completions"),
            cfg.api_key.clone(),
            AuthStyle::Bearer,
            HeaderMap::new(),
            cfg.request_timeout,
            egress,
        )?;
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
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        let (tools, response_format) = match mode {
            ResponseMode::NativeTools => {
                if let Some(system) = req.system.as_deref().filter(|s| !s.trim().is_empty()) {
                    messages.push(json!({"role": "system", "content": system}));
                }
                messages.extend(req.messages.iter().map(|m| native_message(m, names)));
                let tools: Vec<Value> = req
                    .tools
                    .iter()
                    .map(|t| {
                        json!({"type": "function", "function": {
                            "name": names.wire(&t.name),
                            "description": t.description,
                            "parameters": t.parameters_or_object(),
                        }})
                    })
                    .collect();
                ((!tools.is_empty()).then_some(tools), None)
            }
            ResponseMode::Structured => {
                let (system, turns) = structured::render(req);
                messages.push(json!({"role": "system", "content": system}));
                messages.extend(turns.into_iter().map(|t| match t {
                    TextTurn::User(c) => json!({"role": "user", "content": c}),
                    TextTurn::Assistant(c) => json!({"role": "assistant", "content": c}),
                }));
                let format = ResponseFormat {
                    ty: "json_schema",
                    json_schema: JsonSchemaFormat {
                        name: structured::SCHEMA_NAME,
                        schema: structured::response_schema(req.offered_tools()),
                    },
                };
                (None, Some(format))
            }
        };
        let tool_choice = (req.final_only && tools.is_some()).then_some("none");
        Body {
            model: &self.defaults.model,
            messages,
            tools,
            tool_choice,
            temperature,
            max_tokens,
            top_p: self.defaults.sampling.top_p,
            seed: self.defaults.sampling.seed,
            stop: &self.defaults.sampling.stop,
            response_format,
            stream: false,
        }
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    #[tracing::instrument(name = "llm.chat", skip_all, fields(provider = "openai", model = %self.defaults.model))]
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let names = ToolNames::for_request(req);
        let body = self.body(req, &names);
        let mode = self.defaults.settings(req).2;
        let posted = self.transport.post_json("openai.chat_completions", &body).await?;
        let mut resp = parse_completion(posted.body, &names, &self.defaults.model)?;
        if mode == ResponseMode::Structured {
            resp = structured::into_response(resp, req)?;
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
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    // `max_tokens` rather than `max_completion_tokens`: every compatible server knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
    stream: bool,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    ty: &'static str,
    json_schema: JsonSchemaFormat,
}

#[derive(Serialize)]
struct JsonSchemaFormat {
    name: &'static str,
    schema: ResponseSchema,
}

fn native_message(m: &Message, names: &ToolNames) -> Value {
    match m {
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant { content, tool_calls } if tool_calls.is_empty() => {
            json!({"role": "assistant", "content": content})
        }
        Message::Assistant { content, tool_calls } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function", "function": {
                        "name": names.wire(&c.name),
                        // The API expects the argument text; an empty one is not valid JSON.
                        "arguments": if c.arguments.trim().is_empty() { "{}" } else { c.arguments.as_str() },
                    }})
                })
                .collect();
            // `null` content with tool calls is what OpenAI itself returns; some servers reject "".
            let content = if content.is_empty() { Value::Null } else { Value::String(content.clone()) };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        // The protocol has no error flag: say it in the text, or the model takes it as output.
        Message::Tool { call_id, content, is_error, .. } => json!({
            "role": "tool",
            "tool_call_id": call_id,
            "content": if *is_error { format!("error: {content}") } else { content.clone() },
        }),
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<CompletionUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    /// A string, `null`, or (some servers) an array of `{type: text, text}` parts.
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// A JSON string per the API; Ollama has been seen sending an object.
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn parse_completion(body: Value, names: &ToolNames, requested_model: &str) -> Result<ChatResponse, LlmError> {
    if body.get("choices").is_none()
        && let Some(err) = body.get("error")
    {
        let msg = err.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| err.to_string());
        return Err(LlmError::InvalidResponse(format!(
            "provider returned an error: {}",
            crate::http::excerpt(msg.as_bytes(), None)
        )));
    }
    let completion: Completion =
        serde_json::from_value(body).map_err(|e| LlmError::InvalidResponse(format!("not a chat completion: {e}")))?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(LlmError::InvalidResponse("chat completion has no choices".into()));
    };
    let content = match choice.message.content {
        Value::String(s) => s,
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    };
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let arguments = match c.function.arguments {
                Value::String(s) => s,
                Value::Null => "{}".to_owned(),
                other => other.to_string(),
            };
            let id = c.id.filter(|id| !id.is_empty()).unwrap_or_else(crate::types::generated_call_id);
            ToolCall { id, name: names.original(&c.function.name), arguments }
        })
        .collect();
    let mut finish_reason = FinishReason::parse(choice.finish_reason.as_deref().unwrap_or(""));
    // Some servers (Ollama) report `stop` together with tool calls.
    if !tool_calls.is_empty() && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    let usage = completion
        .usage
        .map(|u| Usage {
            input_tokens: u.prompt_tokens.unwrap_or(0),
            output_tokens: u.completion_tokens.unwrap_or(0),
            cached_input_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        content,
        tool_calls,
        usage,
        finish_reason,
        model: completion.model.filter(|m| !m.is_empty()).unwrap_or_else(|| requested_model.to_owned()),
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

    fn cfg() -> ModelConfig {
        ModelConfig {
            provider: ModelProvider::OpenAi,
            model: "gpt-test".into(),
            base_url: Some("http://127.0.0.1:9/v1/".into()),
            api_key: None,
            temperature: Some(0.2),
            max_tokens: Some(100),
            request_timeout: Duration::from_secs(5),
            tool_call_mode: ToolCallMode::Native,
            sampling: Default::default(),
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::user("hi"),
                Message::assistant("", vec![ToolCall::new("c1", "fs.read", "")]),
                Message::tool_error("c1", "fs.read", "no such file"),
            ],
            tools: vec![ToolSpec::new("fs.read", "Reads.", json!({"type": "object"}))],
            max_tokens: Some(7),
            ..ChatRequest::default()
        }
    }

    #[test]
    fn native_body() {
        let p = OpenAiChat::from_config(&cfg()).unwrap();
        let b = p.request_body(&request());
        assert_eq!(b["model"], "gpt-test");
        assert_eq!(b["temperature"], 0.2);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream"], false);
        assert_eq!(b["tools"][0]["function"]["name"], "fs_read");
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "sys"}));
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(b["messages"][2]["tool_calls"][0]["function"], json!({"name": "fs_read", "arguments": "{}"}));
        assert_eq!(b["messages"][3], json!({"role": "tool", "tool_call_id": "c1", "content": "error: no such file"}));
        assert!(b.get("response_format").is_none());
        assert!(b.get("top_p").is_none() && b.get("seed").is_none() && b.get("stop").is_none(), "{b}");
    }

    #[test]
    fn sampling_settings_are_sent_when_set() {
        let sampling = nightshift_core::Sampling { top_p: Some(0.9), seed: Some(42), stop: vec!["END".into()] };
        let p = OpenAiChat::from_config(&ModelConfig { sampling, ..cfg() }).unwrap();
        let b = p.request_body(&request());
        assert_eq!((&b["top_p"], &b["seed"], &b["stop"]), (&json!(0.9), &json!(42), &json!(["END"])));
    }

    #[test]
    fn final_only_turns_forbid_tool_calls() {
        let p = OpenAiChat::from_config(&cfg()).unwrap();
        let b = p.request_body(&ChatRequest { final_only: true, ..request() });
        assert_eq!(b["tool_choice"], "none");
        assert_eq!(b["tools"][0]["function"]["name"], "fs_read", "the history's tools stay declared");
        assert!(p.request_body(&request()).get("tool_choice").is_none());
        let p = OpenAiChat::from_config(&ModelConfig { tool_call_mode: ToolCallMode::Structured, ..cfg() }).unwrap();
        let b = p.request_body(&ChatRequest { final_only: true, ..request() });
        assert_eq!(b["response_format"]["json_schema"]["schema"]["required"], json!(["final"]));
        // The system prompt is the one of the other turns (a prompt cache reuses it); the last
        // turn says that no more calls are allowed.
        let other = p.request_body(&request());
        assert_eq!(b["messages"][0], other["messages"][0]);
        let last = b["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_owned();
        assert!(last.ends_with(structured::FINAL_ONLY_NOTE), "{last}");
    }

    #[test]
    fn structured_body() {
        let p = OpenAiChat::from_config(&ModelConfig { tool_call_mode: ToolCallMode::Structured, ..cfg() }).unwrap();
        let b = p.request_body(&request());
        assert!(b.get("tools").is_none());
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["name"], "agent_step");
        assert_eq!(b["response_format"]["json_schema"]["schema"]["oneOf"][0]["properties"]["tool"]["const"], "fs.read");
        assert!(b["messages"][0]["content"].as_str().unwrap().starts_with("sys\n\n"));
        assert_eq!(b["messages"][2], json!({"role": "assistant", "content": r#"{"tool":"fs.read","arguments":{}}"#}));
        assert_eq!(b["messages"][3]["role"], "user");
        // The request's mode wins over the config's.
        let b = p.request_body(&request().with_mode(ResponseMode::NativeTools));
        assert!(b.get("response_format").is_none());
    }

    #[test]
    fn completion_parsing() {
        let names = ToolNames::for_request(&request());
        let r = parse_completion(
            json!({
                "model": "served-model",
                "choices": [{"message": {"content": null, "tool_calls": [
                    {"id": "x", "type": "function", "function": {"name": "fs_read", "arguments": "{\"p\":1}"}},
                    {"function": {"name": "other", "arguments": {"a": 2}}}
                ]}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
                          "prompt_tokens_details": {"cached_tokens": 8}}
            }),
            &names,
            "gpt-test",
        )
        .unwrap();
        assert_eq!(r.model, "served-model");
        assert_eq!(r.content, "");
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage, Usage { input_tokens: 11, output_tokens: 4, cached_input_tokens: 8 });
        assert_eq!(r.tool_calls[0], ToolCall::new("x", "fs.read", r#"{"p":1}"#));
        assert_eq!(r.tool_calls[1].name, "other");
        assert_eq!(r.tool_calls[1].arguments, r#"{"a":2}"#);
        assert!(r.tool_calls[1].id.starts_with("call_"));

        let r = parse_completion(
            json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}),
            &names,
            "gpt-test",
        )
        .unwrap();
        assert_eq!((r.content.as_str(), r.model.as_str(), r.usage.total()), ("ab", "gpt-test", 0));

        for bad in [json!({"choices": []}), json!({"id": 1}), json!({"error": {"message": "boom"}})] {
            assert!(matches!(parse_completion(bad, &names, "m"), Err(LlmError::InvalidResponse(_))));
        }
    }
}
