//! An OpenAI-compatible `/v1/embeddings` client.
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::embed::Embedder;
use crate::error::{MemoryError, redact};

/// Embeddings from an OpenAI-compatible server (OpenAI, llama.cpp `--embedding`, vLLM, ...).
#[derive(Clone)]
pub struct OpenAiEmbedder {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    dims: usize,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("OpenAiEmbedder").field("url", &self.url).field("model", &self.model).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("embeddings", e)
}

impl OpenAiEmbedder {
    /// A client of `base_url` (e.g. `https://api.openai.com/v1`) for `model` producing
    /// `dims`-dimensional vectors.
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, dims: usize) -> Result<Self, MemoryError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(err)?;
        Ok(Self {
            http,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            dims,
        })
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.model
    }

    fn dims(&self) -> usize {
        self.dims
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut req = self.http.post(&self.url).json(&json!({ "model": self.model, "input": texts }));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| err(format!("{}: {e}", redact(&self.url))))?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
            return Err(err(format!("HTTP {status}: {body}")));
        }
        let mut r: Response = resp.json().await.map_err(err)?;
        r.data.sort_by_key(|i| i.index);
        if r.data.len() != texts.len() {
            return Err(err(format!("asked for {} embeddings, got {}", texts.len(), r.data.len())));
        }
        let out: Vec<Vec<f32>> = r.data.into_iter().map(|i| i.embedding).collect();
        if let Some(bad) = out.iter().find(|v| v.len() != self.dims) {
            return Err(err(format!("expected {} dimensions, got {}", self.dims, bad.len())));
        }
        Ok(out)
    }
}
