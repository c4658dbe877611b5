//! The Anthropic provider against a scripted Messages-API HTTP server (`common::ScriptedLlmServer`),
//! which stands in for the hosted Anthropic API: it is unreachable from the test machines. The
//! server returns scripted `tool_use` blocks, then a final answer, and records the requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::time::{Duration, Instant};

use common::{Reply, ScriptedLlmServer, config, fast_retries, set_env};
use nightshift_core::ModelProvider;
use nightshift_llm::{
    ChatRequest, FinishReason, LlmError, Message, ToolSpec, Usage, model_from_config, model_from_config_with_retry,
};
use serde_json::{Value, json};

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec::new("get_system_info", "Facts about the host.", json!({"type": "object", "properties": {}})),
        ToolSpec::new(
            "time.get_current_time",
            "Current time in a zone.",
            json!({
                "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]
            }),
        ),
    ]
}

fn message(content: Value, stop: &str, usage: Value) -> Value {
    json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-scripted",
        "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage
    })
}

#[tokio::test]
async fn tool_use_then_final_answer_with_tool_results_sent_back() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(message(
            json!([
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_system_info", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "time_get_current_time", "input": {"timezone": "UTC"}}
            ]),
            "tool_use",
            json!({"input_tokens": 300, "output_tokens": 40, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0}),
        )),
        Reply::json(message(
            json!([{"type": "text", "text": "Linux host, 12:00 UTC."}]),
            "end_turn",
            json!({"input_tokens": 400, "output_tokens": 12}),
        )),
    ])
    .await;
    set_env("NS_LLM_TEST_ANTHROPIC_KEY_FLOW", "sk-ant-flow-1");
    let model =
        model_from_config(&config(ModelProvider::Anthropic, &server.url, Some("NS_LLM_TEST_ANTHROPIC_KEY_FLOW")))
            .unwrap();

    let mut req = ChatRequest::new("You are an ops agent.", "Describe this host and the time.").with_tools(tools());
    let first = model.chat(&req).await.unwrap();
    assert_eq!(first.content, "Let me check.");
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    assert_eq!(first.tool_calls.len(), 2);
    assert_eq!(first.tool_calls[0].id, "toolu_1");
    assert_eq!(first.tool_calls[1].name, "time.get_current_time");
    assert_eq!(first.tool_calls[1].arguments_value().unwrap(), json!({"timezone": "UTC"}));
    assert_eq!(first.usage, Usage { input_tokens: 1300, output_tokens: 40, cached_input_tokens: 1000 });
    assert_eq!(first.model, "claude-scripted");

    req.messages.push(first.to_message());
    req.messages.push(Message::tool_result("toolu_1", "get_system_info", "{\"os\":\"linux\"}"));
    req.messages.push(Message::tool_error("toolu_2", "time.get_current_time", "interrupted"));
    let second = model.chat(&req).await.unwrap();
    assert!(second.is_final());
    assert_eq!(second.content, "Linux host, 12:00 UTC.");
    assert_eq!(second.finish_reason, FinishReason::Stop);

    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some("sk-ant-flow-1"));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.header("authorization"), None);
    }
    let body = &sent[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["system"], "You are an ops agent.");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Describe this host and the time."}]}])
    );
    assert_eq!(
        body["tools"][1],
        json!({
            "name": "time_get_current_time",
            "description": "Current time in a zone.",
            "input_schema": tools()[1].parameters,
        })
    );

    let msgs = sent[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        msgs[1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_system_info", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "time_get_current_time", "input": {"timezone": "UTC"}}
        ]})
    );
    // Both results in one user turn (the API wants alternating roles), the failure flagged.
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"os\":\"linux\"}"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "interrupted", "is_error": true}
        ]})
    );
}

#[tokio::test]
async fn overloaded_with_retry_after_is_retried() {
    let server = ScriptedLlmServer::start(vec![
        Reply::status(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            .header("retry-after", "1"),
        Reply::json(message(
            json!([{"type": "text", "text": "ok"}]),
            "end_turn",
            json!({"input_tokens": 1, "output_tokens": 1}),
        )),
    ])
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::Anthropic, &server.url, None), fast_retries(3)).unwrap();
    let started = Instant::now();
    let resp = model.chat(&ChatRequest::new("", "hi")).await.unwrap();
    assert_eq!((resp.content.as_str(), resp.attempts), ("ok", 2));
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test]
async fn rate_limits_are_retried_a_bounded_number_of_times() {
    let server = ScriptedLlmServer::start(
        (0..5)
            .map(|_| {
                Reply::status(
                    429,
                    json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Too many"}}),
                )
                .header("retry-after", "0")
            })
            .collect(),
    )
    .await;
    let model =
        model_from_config_with_retry(&config(ModelProvider::Anthropic, &server.url, None), fast_retries(2)).unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err, LlmError::RateLimited { retry_after: Some(Duration::ZERO), message: "Too many".into() });
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn auth_errors_never_contain_the_key() {
    let server = ScriptedLlmServer::start(vec![Reply::status(
        401,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key {key}"}}),
    )])
    .await;
    set_env("NS_LLM_TEST_ANTHROPIC_KEY_LEAK", "sk-ant-secret-999");
    let model =
        model_from_config(&config(ModelProvider::Anthropic, &server.url, Some("NS_LLM_TEST_ANTHROPIC_KEY_LEAK")))
            .unwrap();
    let err = model.chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 401, .. }));
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("sk-ant-secret-999"), "{text}");
        assert!(text.contains("invalid x-api-key [REDACTED]"), "{text}");
    }
}

#[tokio::test]
async fn slow_answer_times_out() {
    let server = ScriptedLlmServer::start(vec![
        Reply::json(message(json!([]), "end_turn", json!({}))).delayed(Duration::from_secs(3)),
    ])
    .await;
    let cfg = nightshift_core::ModelConfig {
        request_timeout: Duration::from_millis(200),
        ..config(ModelProvider::Anthropic, &server.url, None)
    };
    let err = model_from_config(&cfg).unwrap().chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout(Duration::from_millis(200)));
}

#[tokio::test]
async fn structured_mode_parses_the_text_answer() {
    let server = ScriptedLlmServer::start(vec![Reply::json(message(
        json!([{"type": "text", "text": "{\"tool\": \"time.get_current_time\", \"arguments\": {\"timezone\": \"UTC\"}}"}]),
        "end_turn",
        json!({"input_tokens": 10, "output_tokens": 10}),
    ))])
    .await;
    let cfg = nightshift_core::ModelConfig {
        tool_call_mode: nightshift_core::ToolCallMode::Structured,
        sampling: Default::default(),
        ..config(ModelProvider::Anthropic, &server.url, None)
    };
    let resp =
        model_from_config(&cfg).unwrap().chat(&ChatRequest::new("sys", "time?").with_tools(tools())).await.unwrap();
    assert_eq!(resp.tool_calls.len(), 1);
    assert_eq!(resp.tool_calls[0].name, "time.get_current_time");
    let body = &server.requests()[0].body;
    assert!(body.get("tools").is_none());
    assert!(body["system"].as_str().unwrap().contains("{\"final\": \"<answer>\"}"));
}
