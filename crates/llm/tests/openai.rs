//! The OpenAI-compatible provider against a scripted OpenAI-compatible HTTP server
//! (`common::ScriptedLlmServer`), which stands in for a hosted LLM: hosted APIs are unreachable
//! from the test machines. The server returns scripted tool calls, then a final answer, and
//! records the requests, so these tests check both what is sent and how answers are read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::time::{Duration, Instant};

use common::{Reply, ScriptedLlmServer, config, fast_retries, set_env};
use nightshift_core::{ModelProvider, ToolCallMode};
use nightshift_llm::{
    ChatRequest, FinishReason, LlmError, LlmErrorKind, Message, ResponseMode, ToolSpec, Usage, model_from_config,
    model_from_config_with_retry,
};
use nightshift_proto::v1 as pb;
use serde_json::{Value, json};

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec::new(
            "calculate_area",
            "Area of a circle or rectangle.",
            json!({
                "type": "object",
                "properties": {"shape": {"type": "string", "enum": ["circle", "rectangle"]}, "radius": {"type": "number"}},
                "required": ["shape"]
            }),
        ),
        // An MCP-style name: not a valid OpenAI tool name, so it travels under an alias.
        ToolSpec::new(
            "fs.read_file",
            "Reads a file.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        ),
    ]
}

fn completion(message: Value, finish: &str, usage: (u64, u64)) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "scripted-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    })
}

#[tokio::test]
async fn tool_calls_then_final_answer_with_tool_results_sent_back() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "calculate_area", "arguments": "{\"shape\":\"circle\",\"radius\":2}"}},
                {"id": "call_b", "type": "function", "function": {"name": "fs_read_file", "arguments": "{\"path\":\"/etc/hostname\"}"}}
            ]}),
            "tool_calls",
            (50, 20),
        )),
        Reply::json(completion(json!({"role": "assistant", "content": "The area is 12.57."}), "stop", (90, 8))),
    ])
    .await;
    set_env("NS_LLM_TEST_OPENAI_KEY_FLOW", "sk-flow-123");
    let model = model_from_config(&config(
        ModelProvider::OpenAi,
        &format!("{}/v1", server.url),
        Some("NS_LLM_TEST_OPENAI_KEY_FLOW"),
    ))
    .unwrap();

    let mut req =
        ChatRequest::new("You are a helpful agent.", "What is the area of a circle of radius 2?").with_tools(tools());
    let first = model.chat(&req).await.unwrap();
    assert!(!first.is_final());
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    assert_eq!(first.tool_calls.len(), 2);
    assert_eq!(first.tool_calls[0].name, "calculate_area");
    assert_eq!(first.tool_calls[0].arguments_value().unwrap(), json!({"shape": "circle", "radius": 2}));
    // The alias is mapped back to the agent's own name.
    assert_eq!(first.tool_calls[1].name, "fs.read_file");
    assert_eq!(first.usage, Usage::new(50, 20));
    assert_eq!(first.model, "scripted-model");
    assert_eq!(first.attempts, 1);

    req.messages.push(first.to_message());
    req.messages.push(Message::tool_result("call_a", "calculate_area", "12.566"));
    req.messages.push(Message::tool_error("call_b", "fs.read_file", "permission denied"));
    let second = model.chat(&req).await.unwrap();
    assert!(second.is_final());
    assert_eq!(second.content, "The area is 12.57.");
    assert_eq!(second.finish_reason, FinishReason::Stop);
    assert_eq!(second.usage.total(), 98);

    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.header("authorization"), Some("Bearer sk-flow-123"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let body = &sent[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are a helpful agent."},
            {"role": "user", "content": "What is the area of a circle of radius 2?"}
        ])
    );
    assert_eq!(
        body["tools"][0],
        json!({"type": "function", "function": {
            "name": "calculate_area",
            "description": "Area of a circle or rectangle.",
            "parameters": tools()[0].parameters,
        }})
    );
    assert_eq!(body["tools"][1]["function"]["name"], "fs_read_file");
    assert!(body.get("response_format").is_none());

    let msgs = sent[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "call_a");
    assert_eq!(msgs[2]["tool_calls"][1]["function"]["name"], "fs_read_file");
    assert_eq!(msgs[3], json!({"role": "tool", "tool_call_id": "call_a", "content": "12.566"}));
    assert_eq!(msgs[4], json!({"role": "tool", "tool_call_id": "call_b", "content": "error: permission denied"}));

    // The checkpoint form.
    let p = pb::LlmResponse::from(&first);
    assert_eq!(p.tool_calls[1].name, "fs.read_file");
    assert_eq!(p.finish_reason, "tool_calls");
    assert_eq!(p.usage, Some(pb::TokenUsage { input_tokens: 50, output_tokens: 20, cached_input_tokens: 0 }));
    assert!(p.latency.is_some());
}

#[tokio::test]
async fn key_is_resolved_per_call_so_rotation_works() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(completion(json!({"content": "one"}), "stop", (1, 1))),
        Reply::json(completion(json!({"content": "two"}), "stop", (1, 1))),
    ])
    .await;
    let var = "NS_LLM_TEST_OPENAI_KEY_ROTATE";
    set_env(var, "sk-old");
    let model = model_from_config(&config(ModelProvider::OpenAi, &server.url, Some(var))).unwrap();
    model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    set_env(var, "sk-new");
    model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    let auth: Vec<_> = server.requests().iter().map(|r| r.header("authorization").unwrap().to_owned()).collect();
    assert_eq!(auth, ["Bearer sk-old", "Bearer sk-new"]);
    // No system message when the system prompt is empty.
    assert_eq!(server.requests()[0].body["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn missing_key_variable_is_a_config_error_naming_the_variable() {
    let server = ScriptedLlmServer::start(vec![]).await;
    let model =
        model_from_config(&config(ModelProvider::OpenAi, &server.url, Some("NS_LLM_TEST_NEVER_SET_VARIABLE"))).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err.kind(), LlmErrorKind::Config);
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("NS_LLM_TEST_NEVER_SET_VARIABLE"), "{err}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn no_key_means_no_authorization_header() {
    let server =
        ScriptedLlmServer::start(vec![Reply::json(completion(json!({"content": "ok"}), "stop", (1, 1)))]).await;
    let model = model_from_config(&config(ModelProvider::OpenAi, &server.url, None)).unwrap();
    model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn auth_errors_never_contain_the_key() {
    // Like OpenAI, the scripted server echoes the key it received in its 401 message.
    let server = ScriptedLlmServer::start(vec![Reply::status(
        401,
        json!({"error": {"message": "Incorrect API key provided: {key}.", "type": "invalid_request_error"}}),
    )])
    .await;
    set_env("NS_LLM_TEST_OPENAI_KEY_LEAK", "sk-very-secret-4242");
    let model = model_from_config_with_retry(
        &config(ModelProvider::OpenAi, &server.url, Some("NS_LLM_TEST_OPENAI_KEY_LEAK")),
        fast_retries(3),
    )
    .unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("sk-very-secret-4242"), "{text}");
        assert!(text.contains("Incorrect API key provided: [REDACTED]"), "{text}");
    }
    assert_eq!(server.requests().len(), 1, "auth errors are not retried");
}

#[tokio::test]
async fn rate_limit_retry_after_seconds_is_honoured() {
    let server = ScriptedLlmServer::start(vec![
        Reply::status(429, json!({"error": {"message": "Rate limit reached"}})).header("retry-after", "1"),
        Reply::json(completion(json!({"content": "finally"}), "stop", (3, 2))),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(3)).unwrap();
    let started = Instant::now();
    let resp = model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.content, "finally");
    assert_eq!(resp.attempts, 2);
    assert!(waited >= Duration::from_secs(1), "Retry-After: 1 was not honoured ({waited:?})");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(resp.latency >= Duration::from_secs(1));
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn rate_limit_retry_after_http_date_is_honoured() {
    // Three seconds ahead, in IMF-fixdate; whole seconds, so the real wait is in (2 s, 3 s] minus
    // the time until the client reads it (generous margin for a loaded machine).
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let server = ScriptedLlmServer::start(vec![
        Reply::status(429, json!({"error": {"message": "slow down"}}))
            .header("retry-after", at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        Reply::json(completion(json!({"content": "ok"}), "stop", (1, 1))),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(3)).unwrap();
    let started = Instant::now();
    model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn too_long_retry_after_fails_at_once_with_the_wait() {
    let server = ScriptedLlmServer::start(vec![
        Reply::status(429, json!({"error": {"message": "quota"}})).header("retry-after", "600"),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(3)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    assert!(err.is_retryable());
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let server = ScriptedLlmServer::start(
        (0..10).map(|_| Reply::status(500, json!({"error": {"message": "internal error"}}))).collect(),
    )
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(3)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Server { status: 500, message, .. } if message == "internal error"), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(server.requests().len(), 3);
    assert_eq!(server.remaining(), 7);
}

#[tokio::test]
async fn transient_server_error_then_success() {
    let server = ScriptedLlmServer::start(vec![
        Reply::text(503, "upstream unavailable"),
        Reply::text(502, ""),
        Reply::json(completion(json!({"content": "ok"}), "stop", (1, 1))),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(4)).unwrap();
    let resp = model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    assert_eq!((resp.content.as_str(), resp.attempts), ("ok", 3));
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let server = ScriptedLlmServer::start(vec![
        Reply::status(400, json!({"error": {"message": "context length exceeded"}})),
        Reply::json(completion(json!({"content": "never"}), "stop", (1, 1))),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::OpenAi, &server.url, None), fast_retries(3)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err, LlmError::BadRequest { status: 400, message: "context length exceeded".into() });
    assert!(!err.is_retryable());
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn slow_answer_times_out_and_is_not_retried_here() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(completion(json!({"content": "too late"}), "stop", (1, 1))).delayed(Duration::from_secs(3)),
        Reply::json(completion(json!({"content": "never"}), "stop", (1, 1))),
    ])
    .await;
    let cfg = nightshift_core::ModelConfig {
        request_timeout: Duration::from_millis(300),
        ..config(ModelProvider::OpenAi, &server.url, None)
    };
    let model = model_from_config_with_retry(&cfg, fast_retries(3)).unwrap();
    let started = Instant::now();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout(Duration::from_millis(300)));
    assert!(err.is_retryable(), "the agent loop may try again");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn unreachable_server_is_a_bounded_connection_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/v1?token=query-secret");
    let model = model_from_config_with_retry(&config(ModelProvider::OpenAi, &url, None), fast_retries(2)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err.kind(), LlmErrorKind::Connection, "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("query-secret"), "{text}");
}

#[tokio::test]
async fn non_json_body_is_an_invalid_response() {
    let server = ScriptedLlmServer::start(vec![Reply::text(200, "<html>proxy login</html>")]).await;
    let model = model_from_config(&config(ModelProvider::OpenAi, &server.url, None)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err.kind(), LlmErrorKind::InvalidResponse);
    assert!(err.to_string().contains("proxy login"), "{err}");
}

fn structured_config(url: &str) -> nightshift_core::ModelConfig {
    nightshift_core::ModelConfig {
        tool_call_mode: ToolCallMode::Structured,
        sampling: Default::default(),
        ..config(ModelProvider::OpenAi, url, None)
    }
}

#[tokio::test]
async fn structured_mode_tool_call_then_final() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(completion(
            json!({"role": "assistant", "content": "{\"tool\": \"calculate_area\", \"arguments\": {\"shape\": \"circle\", \"radius\": 2}}"}),
            "stop",
            (120, 18),
        )),
        Reply::json(completion(json!({"role": "assistant", "content": "{\"final\": \"About 12.57.\"}"}), "stop", (160, 9))),
    ])
    .await;
    let model = model_from_config(&structured_config(&server.url)).unwrap();
    let mut req = ChatRequest::new("You are a helpful agent.", "Area of a circle of radius 2?").with_tools(tools());

    let first = model.chat(&req).await.unwrap();
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    assert_eq!(first.content, "");
    assert_eq!(first.tool_calls.len(), 1);
    let call = first.tool_calls[0].clone();
    assert_eq!(call.name, "calculate_area");
    assert_eq!(call.arguments_value().unwrap(), json!({"shape": "circle", "radius": 2}));
    assert!(!call.id.is_empty());
    assert_eq!(first.usage, Usage::new(120, 18));

    req.messages.push(first.to_message());
    req.messages.push(Message::tool_result(call.id.clone(), "calculate_area", "12.566"));
    let second = model.chat(&req).await.unwrap();
    assert!(second.is_final());
    assert_eq!(second.content, "About 12.57.");
    assert_eq!(second.finish_reason, FinishReason::Stop);

    let sent = server.requests();
    let body = &sent[0].body;
    assert!(body.get("tools").is_none(), "structured mode sends no native tools");
    assert_eq!(body["response_format"]["type"], "json_schema");
    let schema = &body["response_format"]["json_schema"]["schema"];
    let branches = schema["oneOf"].as_array().unwrap();
    assert_eq!(branches.len(), 3);
    assert_eq!(branches[0]["properties"]["tool"]["const"], "calculate_area");
    // The strict form of the tool's schema: every key required, optional ones nullable.
    assert_eq!(
        branches[0]["properties"]["arguments"],
        nightshift_llm::structured::strict_arguments(&tools()[0].parameters)
    );
    // (In the order of the tool's own `properties`: serde_json keeps insertion order in this workspace.)
    assert_eq!(branches[0]["properties"]["arguments"]["required"], json!(["shape", "radius"]));
    assert_eq!(branches[1]["properties"]["tool"]["const"], "fs.read_file", "structured mode needs no aliases");
    assert_eq!(branches[2]["required"], json!(["final"]));
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are a helpful agent.\n\n"), "{system}");
    assert!(system.contains("calculate_area: Area of a circle or rectangle."), "{system}");

    let msgs = sent[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(
        serde_json::from_str::<Value>(msgs[2]["content"].as_str().unwrap()).unwrap(),
        json!({"tool": "calculate_area", "arguments": {"shape": "circle", "radius": 2}})
    );
    assert_eq!(msgs[3], json!({"role": "user", "content": "Result of tool calculate_area:\n12.566"}));
}

#[tokio::test]
async fn structured_mode_malformed_answers_are_invalid_responses() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(completion(json!({"content": "The area is 12.57"}), "stop", (1, 1))),
        Reply::json(completion(json!({"content": "{\"tool\": \"rm_rf\", \"arguments\": {}}"}), "stop", (1, 1))),
        Reply::json(completion(json!({"content": "{\"final\": \"cut"}), "length", (1, 1))),
    ])
    .await;
    let model = model_from_config_with_retry(&structured_config(&server.url), fast_retries(3)).unwrap();
    let req = ChatRequest::new("", "hi").with_tools(tools());
    let not_json = model.chat(&req).await.unwrap_err();
    assert_eq!(not_json.kind(), LlmErrorKind::InvalidResponse, "{not_json:?}");
    assert!(not_json.is_retryable(), "the loop may ask again");
    let unknown = model.chat(&req).await.unwrap_err();
    assert!(unknown.to_string().contains("unknown tool 'rm_rf'"), "{unknown}");
    let cut = model.chat(&req).await.unwrap_err();
    assert!(cut.to_string().contains("cut off by the token limit"), "{cut}");
    // Each malformed answer was one request: the provider does not resample by itself.
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn request_mode_overrides_the_config() {
    let server = ScriptedLlmServer::start(vec![Reply::json(completion(
        json!({"content": "{\"final\": \"x\"}"}),
        "stop",
        (1, 1),
    ))])
    .await;
    let model = model_from_config(&config(ModelProvider::OpenAi, &server.url, None)).unwrap();
    let req = ChatRequest::new("", "hi").with_tools(tools()).with_mode(ResponseMode::Structured);
    let resp = model.chat(&req).await.unwrap();
    assert_eq!(resp.content, "x");
    assert!(server.requests()[0].body.get("response_format").is_some());
}

/// The structured protocol carries tool calls: a request that declares none is plain text in
/// structured mode too (no `response_format`, the answer as the server wrote it).
#[tokio::test]
async fn a_request_without_tools_is_plain_text_in_structured_mode() {
    let server =
        ScriptedLlmServer::start(vec![Reply::json(completion(json!({"content": "a summary"}), "length", (1, 1)))])
            .await;
    let model = model_from_config(&structured_config(&server.url)).unwrap();
    let resp = model.chat(&ChatRequest::new("Summarize.", "entries")).await.unwrap();
    assert_eq!(resp.content, "a summary");
    assert_eq!(resp.finish_reason, nightshift_llm::FinishReason::Length);
    let body = &server.requests()[0].body;
    assert!(body.get("response_format").is_none() && body.get("tools").is_none(), "{body}");
    assert_eq!(body["messages"][0]["content"], "Summarize.", "the system prompt as given: {body}");
}
