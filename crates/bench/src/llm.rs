//! The instant scripted OpenAI-compatible LLM: answers every chat completion at once, so that
//! the platform, not a model, is what the scenarios measure. It runs in a child process (this
//! binary's hidden `scripted-llm` command) so that its CPU time is not counted as the platform's.
use std::process::Stdio;

use anyhow::Context;
use axum::Json;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

async fn chat(Json(_body): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "bench", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "done"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    }))
}

/// Serves the scripted LLM on `listen` and prints its base URL on stdout (first line).
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!("http://{addr}/v1");
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    axum::serve(listener, app).await?;
    Ok(())
}

/// A scripted LLM in a child process, killed when dropped.
pub struct ScriptedLlm {
    pub base_url: String,
    _child: tokio::process::Child,
}

impl ScriptedLlm {
    pub async fn spawn() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this binary to start the scripted LLM")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("scripted-llm")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the scripted LLM child process")?;
        let stdout = child.stdout.take().context("scripted LLM has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let base_url = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .context("the scripted LLM did not print its address within 10 s")??
            .context("the scripted LLM exited before printing its address")?;
        Ok(Self { base_url, _child: child })
    }
}
