//! The [`VectorIndex`] trait (upsert, delete, top-k cosine with metadata filters), its
//! backends, and [`connect`], which opens one by URL.
use std::collections::BTreeMap;
use std::sync::Arc;

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

    /// True when the index knows, without a query, that no item matches `filter`; `false` when
    /// some may, or when it cannot tell without asking its server. A search of a scope that
    /// holds nothing then skips embedding its query and reading the record store.
    fn holds_none(&self, _filter: &BTreeMap<String, String>) -> bool {
        false
    }
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

/// Opens the vector index at `url` for vectors of `dims` dimensions: `inprocess://`,
/// `chroma://HOST:PORT/COLLECTION` (`chromas://` for HTTPS), `qdrant://HOST:PORT/COLLECTION`
/// (Qdrant's gRPC port, 6334 when omitted; `qdrants://` for TLS; API key from the variable
/// `api_key_env` unless empty) or `pgvector://USER@HOST/DB?table=NAME`.
pub async fn connect(url: &str, api_key_env: &str, dims: usize) -> Result<Arc<dyn VectorIndex>, MemoryError> {
    if url == "inprocess://" {
        return Ok(Arc::new(inprocess::InProcessIndex::new(dims)));
    }
    if let Some(rest) = url.strip_prefix("pgvector://") {
        let (db, table) = rest.split_once("?table=").unwrap_or((rest, "nightshift_memory_vectors"));
        return Ok(Arc::new(pgvector::PgVectorIndex::connect(&format!("postgres://{db}"), table, dims).await?));
    }
    if let Some((scheme, rest)) = url
        .strip_prefix("qdrant://")
        .map(|r| ("http", r))
        .or_else(|| url.strip_prefix("qdrants://").map(|r| ("https", r)))
    {
        let (host, collection) = rest.split_once('/').unwrap_or((rest, "nightshift_memory"));
        let collection = if collection.is_empty() { "nightshift_memory" } else { collection };
        let host = with_default_port(host, QDRANT_GRPC_PORT);
        let key = match api_key_env {
            "" => None,
            var => Some(
                std::env::var(var).map_err(|_| MemoryError::Config(format!("vector.api_key_env: {var} is not set")))?,
            ),
        };
        return Ok(Arc::new(qdrant::QdrantIndex::connect(&format!("{scheme}://{host}"), collection, dims, key).await?));
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("chroma://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("chromas://") {
        ("https", rest)
    } else {
        return Err(MemoryError::Config(
            "unsupported vector URL: use inprocess://, chroma://HOST:PORT/COLLECTION, \
             qdrant://HOST:6334/COLLECTION or pgvector://USER@HOST/DB?table=NAME"
                .into(),
        ));
    };
    let (host, collection) = rest.split_once('/').unwrap_or((rest, "nightshift_memory"));
    let collection = if collection.is_empty() { "nightshift_memory" } else { collection };
    Ok(Arc::new(chroma::ChromaIndex::connect(&format!("{scheme}://{host}"), collection, dims).await?))
}

/// Qdrant's default gRPC port (its REST port, 6333, does not speak gRPC).
const QDRANT_GRPC_PORT: u16 = 6334;

/// `host` with `:port` appended when it names none (`[v6]` and `[v6]:port` included).
fn with_default_port(host: &str, port: u16) -> String {
    let bare = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let has_port = match bare.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => bare.contains(':'),
    };
    if has_port { host.to_owned() } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn qdrant_urls_default_to_the_grpc_port() {
        assert_eq!(super::with_default_port("qdrant.data.svc", 6334), "qdrant.data.svc:6334");
        assert_eq!(super::with_default_port("q:7000", 6334), "q:7000");
        assert_eq!(super::with_default_port("u:p@q", 6334), "u:p@q:6334");
        assert_eq!(super::with_default_port("[::1]", 6334), "[::1]:6334");
        assert_eq!(super::with_default_port("[::1]:6335", 6334), "[::1]:6335");
    }
}
