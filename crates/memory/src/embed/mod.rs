//! The [`Embedder`] trait: text to vectors, its implementations, and [`connect`], which builds
//! the configured one. Lives in this crate for now (nightshift-llm is another team's); it can
//! move there unchanged.
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{EmbedderConfig, EmbedderKind};
use crate::error::MemoryError;

pub mod cached;
pub mod minilm;
pub mod openai;
mod word_table;

/// Turns texts into embedding vectors of a fixed size.
#[async_trait]
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Name for logs and stats (e.g. `all-MiniLM-L6-v2`).
    fn name(&self) -> &str;

    /// Vector size.
    fn dims(&self) -> usize;

    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError>;
}

/// Builds the embedder `e` configures (loading the MiniLM model from disk), with its recent
/// vectors cached ([`cached::Cached`]); `None` for `kind = none`.
pub async fn connect(e: &EmbedderConfig) -> Result<Option<Arc<dyn Embedder>>, MemoryError> {
    let embedder = build(e).await?;
    Ok(embedder.map(|inner| Arc::new(cached::Cached::new(inner)) as Arc<dyn Embedder>))
}

async fn build(e: &EmbedderConfig) -> Result<Option<Arc<dyn Embedder>>, MemoryError> {
    match e.kind {
        EmbedderKind::None => Ok(None),
        EmbedderKind::MiniLm => {
            if e.model_path.is_empty() {
                return Err(MemoryError::Config(
                    "embedder.model_path is required for minilm (see crates/memory/scripts/fetch-model.sh)".into(),
                ));
            }
            let path = e.model_path.clone();
            let m = tokio::task::spawn_blocking(move || minilm::MiniLmEmbedder::load(path))
                .await
                .map_err(|err| MemoryError::Config(format!("loading the embedder: {err}")))??;
            Ok(Some(Arc::new(m)))
        }
        EmbedderKind::OpenAi => {
            if e.base_url.is_empty() || e.model.is_empty() || e.dims == 0 {
                return Err(MemoryError::Config("embedder: openai needs base_url, model and dims".into()));
            }
            let key =
                if e.api_key_env.is_empty() {
                    None
                } else {
                    Some(std::env::var(&e.api_key_env).map_err(|_| {
                        MemoryError::Config(format!("embedder.api_key_env: {} is not set", e.api_key_env))
                    })?)
                };
            Ok(Some(Arc::new(openai::OpenAiEmbedder::new(&e.base_url, &e.model, key, e.dims)?)))
        }
    }
}
