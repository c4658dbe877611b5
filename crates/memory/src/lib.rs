//! The Nightshift memory service: working, episodic, long-term and procedural memory of agents.
//!
//! - [`MemoryStore`] keeps records (recency, metadata filters, TTL) in memory, Redis or SQL.
//! - [`VectorIndex`] keeps embeddings for semantic search (in-process exact search, ChromaDB, pgvector,
//!   Qdrant).
//! - [`Embedder`] turns text into vectors (embedded all-MiniLM-L6-v2, or an OpenAI-compatible API).

pub mod config;
pub mod convert;
pub mod embed;
pub mod error;
mod role;
pub mod service;
pub mod store;
pub mod types;
pub mod vector;

pub use config::{AutoRetention, EmbedderKind, MemoryConfig, SummarizerProvider};
pub use convert::status_from_memory;
pub use embed::Embedder;
pub use embed::minilm::MiniLmEmbedder;
pub use embed::openai::OpenAiEmbedder;
pub use error::MemoryError;
pub use role::MemoryRole;
pub use service::MemoryService;
pub use store::MemoryStore;
pub use store::memory::InMemoryStore;
pub use store::redis::RedisStore;
pub use store::sql::{SqlBackend, SqlStore};
pub use types::{MemoryRecord, MemoryType, RecallQuery, Scope};
pub use vector::chroma::ChromaIndex;
pub use vector::inprocess::InProcessIndex;
pub use vector::pgvector::PgVectorIndex;
pub use vector::qdrant::QdrantIndex;
pub use vector::{VectorHit, VectorIndex, VectorItem};

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::memory_service_server::SERVICE_NAME;
