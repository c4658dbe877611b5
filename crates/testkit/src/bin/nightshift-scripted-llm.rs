//! The scripted OpenAI-compatible LLM ([`nightshift_testkit::llm`]) as its own process, for
//! tests where the platform runs elsewhere: the compose test runs it in a container on the
//! stack's network. It stands in for a hosted model (unreachable here), so that tool-call paths
//! are deterministic. Each agent scripts itself: its task's `call NAME ARGS_JSON` lines are the
//! tools its first turn calls (none: `calculate_area`).
//!
//! Besides the chat route it serves `GET /slow?ms=N` (answers after N ms: a slow tool call for
//! `http_get`) and `GET /hits` (JSON counters: first and second turns, `/slow` requests), so that
//! a test can see from outside what reached it.
//!
//! Usage: `nightshift-scripted-llm [LISTEN]` (default `0.0.0.0:8080`).
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use nightshift_testkit::llm::{Script, router};
use serde_json::{Value, json};

#[derive(Default)]
struct Counters {
    script: Arc<Script>,
    slow: AtomicUsize,
}

/// At most this long, so that a stray request cannot hold a connection for ever.
const MAX_SLOW: Duration = Duration::from_secs(300);

async fn slow(State(c): State<Arc<Counters>>, RawQuery(query): RawQuery) -> String {
    c.slow.fetch_add(1, Ordering::SeqCst);
    let ms = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms=").and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
    format!("slow answer after {ms} ms")
}

async fn hits(State(c): State<Arc<Counters>>) -> Json<Value> {
    Json(json!({
        "first_turns": c.script.first_turns.load(Ordering::SeqCst),
        "second_turns": c.script.second_turns.load(Ordering::SeqCst),
        "slow": c.slow.load(Ordering::SeqCst),
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "0.0.0.0:8080".into());
    let counters = Arc::new(Counters::default());
    counters.script.calls_from_task.store(true, Ordering::SeqCst);
    let extra = axum::Router::new()
        .route("/slow", axum::routing::get(slow))
        .route("/hits", axum::routing::get(hits))
        .with_state(counters.clone());
    let app = router(counters.script.clone()).merge(extra);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("scripted LLM on http://{}/v1", listener.local_addr()?);
    axum::serve(listener, app).await
}
