//! The [`Embedder`] trait: text to vectors. Lives in this crate for now (nightshift-llm is
//! another team's); it can move there unchanged.
use async_trait::async_trait;

use crate::error::MemoryError;

pub mod minilm;
pub mod openai;

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
