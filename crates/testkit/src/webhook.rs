//! A webhook receiver for alert tests: a real HTTP server (axum on loopback) taking the
//! Slack-compatible POSTs (`{"text": …}`) the events role sends, as any receiver would.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;

/// The path the receiver answers on; the last segment stands for the credential an incoming
/// webhook URL carries, so tests can check that it is never printed.
const PATH: &str = "/hooks/T0/B0/secret";

#[derive(Default)]
struct State {
    fail_first: u32,
    calls: AtomicU32,
    texts: Mutex<Vec<String>>,
}

/// A running receiver, stopped on drop: answers 503 to its first `fail_first` requests and 200
/// afterwards, recording the `text` of the accepted ones in arrival order.
pub struct WebhookReceiver {
    /// The URL to configure as `webhook_url`.
    pub url: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl WebhookReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start(fail_first: u32) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook receiver");
        let url = format!("http://{}{PATH}", listener.local_addr().expect("its address"));
        let state = Arc::new(State { fail_first, ..State::default() });
        let handler = state.clone();
        let app = axum::Router::new().route(
            PATH,
            axum::routing::post(move |Json(body): Json<serde_json::Value>| {
                let state = handler.clone();
                async move {
                    if state.calls.fetch_add(1, Ordering::SeqCst) < state.fail_first {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let text = body["text"].as_str().unwrap_or_default().to_owned();
                    state.texts.lock().unwrap().push(text);
                    StatusCode::OK
                }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, server }
    }

    /// Requests received, refused ones included.
    pub fn calls(&self) -> u32 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The texts of the accepted requests so far, in arrival order.
    pub fn texts(&self) -> Vec<String> {
        self.state.texts.lock().unwrap().clone()
    }

    /// Waits (up to `deadline`) for an accepted text containing `needle` and returns every text
    /// accepted until then. Alerts are delivered one after the other in the order they were
    /// raised, so once a *sentinel* alert (raised last) arrived, every earlier one has too:
    /// counts taken then are final, without sleeping in the hope that nothing more comes.
    pub async fn wait_for(&self, needle: &str, deadline: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let texts = self.texts();
            if texts.iter().any(|t| t.contains(needle)) {
                return texts;
            }
            assert!(tokio::time::Instant::now() < until, "no webhook text contains {needle:?}: {texts:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
