//! A scripted OpenAI-compatible chat completions server for deterministic tests.
//!
//! It stands in for a hosted LLM, which is unreachable here: the first turn of a conversation
//! asks for the configured tool calls (by default `calculate_area` of a 3x4 rectangle), the turn
//! after tool results gives a final answer quoting the first tool output. Knobs let a test make
//! second turns hang (a worker dying mid-run), fail the first requests, or slow every answer.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// The script and its counters; shared with the server.
#[derive(Default)]
pub struct Script {
    /// Requests without a tool result yet (first turns).
    pub first_turns: AtomicUsize,
    /// Requests carrying a tool result (second turns).
    pub second_turns: AtomicUsize,
    /// While set, second turns hang (simulates a worker dying mid-run).
    pub hang_second_turn: AtomicBool,
    /// The first this-many requests fail, with HTTP [`Script::fail_status`].
    pub fail_first: AtomicUsize,
    /// The status of those failures; 0 = 400 (a request the provider refuses: permanent, not
    /// retried by the client or the run). 503 is transient: the client retries it first.
    pub fail_status: std::sync::atomic::AtomicU16,
    /// Every answer is delayed this long (ms).
    pub delay_ms: AtomicU64,
    /// Tools the first turn calls: (substring of the offered tool name, arguments JSON).
    pub calls: Mutex<Vec<(String, String)>>,
    /// Tools a second round calls, once the first round's results are all in (empty: the turn
    /// after the first round answers).
    pub then_calls: Mutex<Vec<(String, String)>>,
    /// The system message of every first turn, in arrival order (what the runtime put into the
    /// prompt, e.g. recalled memory).
    pub systems: Mutex<Vec<String>>,
    /// When set, a first turn whose task (last user message) has lines `call NAME ARGS_JSON`
    /// calls those tools instead of [`Script::calls`]: one server, several agents each with
    /// its own script (the compose test's container serves every agent of the stack).
    pub calls_from_task: AtomicBool,
    /// The model each request named, in arrival order.
    pub models: Mutex<Vec<String>>,
    /// A streamed answer's pieces come this far apart (ms).
    pub stream_gap_ms: AtomicU64,
    /// Requests that asked for a stream.
    pub streamed: AtomicUsize,
}

/// The `call NAME ARGS_JSON` lines of the conversation's last user message.
fn calls_in_task(body: &Value) -> Vec<(String, String)> {
    let task = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    task.lines()
        .filter_map(|l| l.trim().strip_prefix("call "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, args)| (name.to_owned(), args.trim().to_owned()))
        .collect()
}

/// A request that asks `stream: true` gets the same answer as Server-Sent Events, as OpenAI
/// sends them: the text a word at a time ([`Script::stream_gap_ms`] apart), tool calls in one
/// chunk, the finish reason, the usage, `[DONE]`.
async fn chat(State(s): State<Arc<Script>>, Json(body): Json<Value>) -> axum::response::Response {
    let stream = body["stream"] == true;
    let resp = answer(&s, body).await;
    if !stream || !resp.status().is_success() {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
    let whole: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    sse(&whole, Duration::from_millis(s.stream_gap_ms.load(Ordering::SeqCst)))
}

/// `whole` (a chat completion) as a stream of chunks.
fn sse(whole: &Value, gap: Duration) -> axum::response::Response {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": whole["id"], "object": "chat.completion.chunk", "model": whole["model"],
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let message = &whole["choices"][0]["message"];
    let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null)];
    let text = message["content"].as_str().unwrap_or_default();
    let mut piece = String::new();
    for c in text.chars() {
        piece.push(c);
        if c == ' ' {
            events.push(chunk(json!({"content": std::mem::take(&mut piece)}), Value::Null));
        }
    }
    if !piece.is_empty() {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"index": i, "id": c["id"], "type": "function", "function": c["function"]}))
            .collect();
        events.push(chunk(json!({"tool_calls": calls}), Value::Null));
    }
    events.push(chunk(json!({}), whole["choices"][0]["finish_reason"].clone()));
    events.push(json!({"id": whole["id"], "object": "chat.completion.chunk", "model": whole["model"], "choices": [], "usage": whole["usage"]}));
    let mut lines: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    lines.push("data: [DONE]\n\n".into());
    let stream = async_stream(lines, gap);
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_default()
}

/// `lines`, one every `gap`.
fn async_stream(
    lines: Vec<String>,
    gap: Duration,
) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>> + Send {
    futures::stream::unfold(lines.into_iter(), move |mut rest| async move {
        let line = rest.next()?;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Some((Ok(line), rest))
    })
}

async fn answer(s: &Script, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.fail_first.load(Ordering::SeqCst) > 0 {
        s.fail_first.fetch_sub(1, Ordering::SeqCst);
        let status = match s.fail_status.load(Ordering::SeqCst) {
            0 => axum::http::StatusCode::BAD_REQUEST,
            code => axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        };
        let err = json!({"error": {"message": "scripted failure", "type": "invalid_request_error"}});
        return (status, Json(err)).into_response();
    }
    s.models.lock().unwrap().push(body["model"].as_str().unwrap_or_default().to_owned());
    if body["stream"] == true {
        s.streamed.fetch_add(1, Ordering::SeqCst);
    }
    let has_tool_result = body["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    if !has_tool_result {
        let system = body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "system"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        s.systems.lock().unwrap().push(system.to_owned());
        s.first_turns.fetch_add(1, Ordering::SeqCst);
        let mut wanted = s.calls.lock().unwrap().clone();
        if s.calls_from_task.load(Ordering::SeqCst) {
            wanted = calls_in_task(&body);
        }
        if wanted.is_empty() {
            wanted.push(("calculate_area".into(), r#"{"shape": "rectangle", "width": 3, "height": 4}"#.into()));
        }
        return tool_calls(&body, &wanted, 0);
    }
    s.second_turns.fetch_add(1, Ordering::SeqCst);
    while s.hang_second_turn.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = body["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count());
    let first_round = s.calls.lock().unwrap().len().max(1);
    let then = s.then_calls.lock().unwrap().clone();
    if results == first_round && !then.is_empty() {
        return tool_calls(&body, &then, first_round);
    }
    let tool_output = body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .map(|m| m["content"].to_string());
    Json(json!({
        "id": "c2", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": format!("The area is 12. Tool said: {}", tool_output.unwrap_or_default())}}],
        // The answer's prompt repeats the first turn's: a provider with a prompt cache reads part
        // of it from there.
        "usage": {"prompt_tokens": 80, "completion_tokens": 12, "total_tokens": 92,
                  "prompt_tokens_details": {"cached_tokens": 40}}
    }))
    .into_response()
}

/// An assistant turn calling `wanted` (tool name substring, arguments), with call ids from `first_id`.
fn tool_calls(body: &Value, wanted: &[(String, String)], first_id: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    let offered: Vec<String> = body["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let calls: Vec<Value> = wanted
        .iter()
        .enumerate()
        .map(|(i, (needle, args))| {
            let name = offered.iter().find(|n| n.contains(needle.as_str())).cloned().unwrap_or_else(|| needle.clone());
            let id = format!("call_{}", first_id + i);
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        })
        .collect();
    Json(json!({
        "id": "c1", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": calls}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
    }))
    .into_response()
}

/// The server's routes (`POST /v1/chat/completions`) over `script`.
pub fn router(script: Arc<Script>) -> axum::Router {
    axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat)).with_state(script)
}

/// Starts the server on 127.0.0.1:0; returns its base URL (`http://…/v1`) and the script.
pub async fn scripted_llm() -> (String, Arc<Script>) {
    let script = Arc::new(Script::default());
    let app = router(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), script)
}
