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
            stream_options: None,
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

    /// Streams in native-tools mode (the text is the answer); structured mode's text is JSON
    /// for the parser, so it is answered whole.
    #[tracing::instrument(name = "llm.chat", skip_all, fields(provider = "openai", model = %self.defaults.model, stream = true))]
    async fn chat_streaming(
        &self,
        req: &ChatRequest,
        on_text: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<ChatResponse, LlmError> {
        if self.defaults.settings(req).2 == ResponseMode::Structured {
            return self.chat(req).await;
        }
        let names = ToolNames::for_request(req);
        let mut body = self.body(req, &names);
        body.stream = true;
        body.stream_options = Some(json!({"include_usage": true}));
        let on_event: &(dyn Fn(&Value) + Send + Sync) = &|e: &Value| {
            if let Some(text) = e.pointer("/choices/0/delta/content").and_then(Value::as_str).filter(|t| !t.is_empty())
            {
                on_text(text);
            }
        };
        let posted = self.transport.post_sse("openai.chat_completions", &body, on_event).await?;
        let events = posted.body.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut resp = parse_completion(assemble(events), &names, &self.defaults.model)?;
        resp.latency = posted.latency;
        resp.attempts = posted.attempts;
        Ok(resp)
    }
}

/// The completion a stream of chunks adds up to (the same shape as an answer sent whole):
/// content and each tool call's arguments concatenated, tool calls by their `index`, the last
/// finish reason, and the usage of the last event that reports one.
fn assemble(events: &[Value]) -> Value {
    let mut content = String::new();
    let mut calls: std::collections::BTreeMap<u64, (String, String, String)> = Default::default();
    let (mut finish, mut usage, mut model) = (Value::Null, Value::Null, Value::Null);
    for e in events {
        if let Some(err) = e.get("error") {
            return json!({"error": err});
        }
        if let Some(m) = e.get("model").filter(|m| m.is_string()) {
            model = m.clone();
        }
        if let Some(u) = e.get("usage").filter(|u| u.is_object()) {
            usage = u.clone();
        }
        let Some(choice) = e.pointer("/choices/0") else { continue };
        if let Some(t) = choice.pointer("/delta/content").and_then(Value::as_str) {
            content.push_str(t);
        }
        for c in choice.pointer("/delta/tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let entry = calls.entry(c["index"].as_u64().unwrap_or(0)).or_default();
            if let Some(id) = c["id"].as_str() {
                entry.0 = id.to_owned();
            }
            if let Some(name) = c.pointer("/function/name").and_then(Value::as_str) {
                entry.1.push_str(name);
            }
            if let Some(args) = c.pointer("/function/arguments").and_then(Value::as_str) {
                entry.2.push_str(args);
            }
        }
        if let Some(f) = choice.get("finish_reason").filter(|f| f.is_string()) {
            finish = f.clone();
        }
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .into_values()
            .map(
                |(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}),
            )
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    json!({"model": model, "choices": [{"index": 0, "finish_reason": finish, "message": message}], "usage": usage})
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
    /// `{"include_usage": true}` when streaming: the last event then reports the tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
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

    #[test]
    fn streamed_chunks_add_up_to_the_completion() {
        let chunk = |delta: Value, finish: Value| json!({"model": "m-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let events = [
            chunk(json!({"role": "assistant", "content": "The area"}), Value::Null),
            chunk(json!({"content": " is 12."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "area", "arguments": "{\"w\":"}}]}),
                Value::Null,
            ),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "3}"}}]}), json!("tool_calls")),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}),
        ];
        let names = ToolNames::for_request(&ChatRequest::default());
        let r = parse_completion(assemble(&events), &names, "asked").unwrap();
        assert_eq!((r.content.as_str(), r.model.as_str()), ("The area is 12.", "m-1"));
        assert_eq!((r.tool_calls[0].id.as_str(), r.tool_calls[0].name.as_str()), ("c1", "area"));
        assert_eq!(r.tool_calls[0].arguments, "{\"w\":3}");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (5, 7));
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        let failed = parse_completion(assemble(&[json!({"error": {"message": "overloaded"}})]), &names, "m");
        assert!(failed.unwrap_err().to_string().contains("overloaded"));
    }

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
