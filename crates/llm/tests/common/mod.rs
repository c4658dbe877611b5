//! Test support: a **scripted LLM HTTP server**.
//!
//! It stands in for a hosted LLM API (OpenAI, Anthropic), which is unreachable from the test
//! machines: it answers each POST with the next scripted reply (status, headers, body, delay) and
//! records every request (path, headers, JSON body) so tests can check exactly what the providers
//! send. It speaks no protocol itself; the scripts contain real-shaped API responses.
#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use nightshift_core::{ModelConfig, ModelProvider, SecretRef, ToolCallMode};
use nightshift_llm::RetryPolicy;
use serde_json::Value;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Body text; `{key}` is replaced by the API key the request carried (to test redaction of
    /// providers that echo keys in auth errors).
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: Value) -> Self {
        Self::status(200, body)
    }

    pub fn status(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self { status, headers: vec![], body: body.to_owned(), delay: Duration::ZERO }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
}

/// The running server; dropped with the test's runtime.
pub struct ScriptedLlmServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
}

impl ScriptedLlmServer {
    pub async fn start(script: Vec<Reply>) -> Self {
        let shared = Arc::new(Shared { script: Mutex::new(script.into()), requests: Mutex::default() });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, shared }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn remaining(&self) -> usize {
        self.shared.script.lock().unwrap().len()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = headers
        .get("x-api-key")
        .or_else(|| headers.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
        .unwrap_or_default();
    shared.requests.lock().unwrap().push(Recorded { path: uri.path().to_owned(), headers, body: json });
    let next = shared.script.lock().unwrap().pop_front();
    let Some(reply) = next else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response();
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut out = HeaderMap::new();
    for (name, value) in &reply.headers {
        out.insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
    }
    (StatusCode::from_u16(reply.status).unwrap(), out, reply.body.replace("{key}", &key)).into_response()
}

/// A model config pointing at `base_url`, key from `key_var` (an `env:` reference).
pub fn config(provider: ModelProvider, base_url: &str, key_var: Option<&str>) -> ModelConfig {
    ModelConfig {
        provider,
        model: "test-model".into(),
        base_url: Some(base_url.to_owned()),
        api_key: key_var.map(|v| SecretRef::Env(v.to_owned())),
        temperature: Some(0.0),
        max_tokens: Some(256),
        request_timeout: Duration::from_secs(10),
        tool_call_mode: ToolCallMode::Native,
        sampling: Default::default(),
    }
}

/// Fast retries so tests do not wait on backoff (Retry-After is still honoured).
pub fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

/// Sets an environment variable for this test binary.
///
/// Each test uses its own variable name. Setting variables while other threads run is only
/// sound because every reader here goes through `std::env`, which serializes access.
#[allow(unsafe_code)]
pub fn set_env(name: &str, value: &str) {
    // SAFETY: see above; the tests never read the environment through libc directly.
    unsafe { std::env::set_var(name, value) }
}
