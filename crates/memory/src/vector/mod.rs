//! The [`VectorIndex`] trait (upsert, delete, top-k cosine with metadata filters) and its
//! backends.
use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::MemoryError;

pub mod chroma;
pub mod inprocess;
pub mod pgvector;
pub mod qdrant;

/// One vector with its id and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorItem {
    /// Unique id (the memory record's id).
    pub id: String,
    /// The embedding; its length must equal the index's dimensions.
    pub vector: Vec<f32>,
    /// Labels usable as exact-match filters.
    pub metadata: BTreeMap<String, String>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    /// Id of the item.
    pub id: String,
    /// Cosine similarity in [-1, 1].
    pub score: f32,
    /// The item's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Similarity search over embeddings.
///
/// Every backend behaves the same (see `tests/vector_contract.rs`): `upsert` replaces an item
/// with the same id, scores are cosine similarities (vectors need not be normalised), hits come
/// best first, and a filter keeps only items carrying every pair.
#[async_trait]
pub trait VectorIndex: Send + Sync + std::fmt::Debug {
    /// Backend name for stats and logs (`inprocess`, `chroma`).
    fn backend(&self) -> &'static str;

    /// Dimensions of every vector in the index.
    fn dims(&self) -> usize;

    /// Inserts or replaces items.
    async fn upsert(&self, items: &[VectorItem]) -> Result<(), MemoryError>;

    /// Deletes items by id (unknown ids are ignored).
    async fn delete(&self, ids: &[String]) -> Result<(), MemoryError>;

    /// The `k` items most similar to `vector` among those matching `filter`, best first.
    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<VectorHit>, MemoryError>;

    /// Number of items.
    async fn count(&self) -> Result<u64, MemoryError>;
}

/// Checks a vector's length against the index's dimensions.
/// Validates the vectors of an upsert (every backend's first step); `false` when there is
/// nothing to write.
pub(crate) fn check_items(dims: usize, items: &[VectorItem]) -> Result<bool, MemoryError> {
    for (i, item) in items.iter().enumerate() {
        check_dims(dims, &format!("items[{i}].vector"), &item.vector)?;
    }
    Ok(!items.is_empty())
}

/// Validates a search (every backend's first step); `false` when `k` is 0 (no hits wanted).
pub(crate) fn check_query(dims: usize, vector: &[f32], k: usize) -> Result<bool, MemoryError> {
    check_dims(dims, "query vector", vector)?;
    Ok(k > 0)
}

fn check_dims(dims: usize, field: &str, v: &[f32]) -> Result<(), MemoryError> {
    if v.len() != dims {
        return Err(MemoryError::Invalid(format!("{field}: has {} dimensions, the index has {dims}", v.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(MemoryError::Invalid(format!("{field}: contains NaN or infinity")));
    }
    Ok(())
}
