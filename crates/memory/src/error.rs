//! Errors of the memory crate; the service maps each to one gRPC status code.

/// Why a memory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A request value the backend cannot accept (names the field).
    #[error("{0}")]
    Invalid(String),
    /// Configuration that cannot work (bad URL, missing model files); reported at start-up.
    #[error("configuration: {0}")]
    Config(String),
    /// The operation needs something that is not configured (e.g. Search without an embedder).
    #[error("{0}")]
    Unavailable(String),
    /// Stored data that no longer decodes.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A backend (database, Redis, vector server, model) failed.
    #[error("{backend}: {message}")]
    Backend {
        /// Backend name, e.g. `redis`, `sql`, `chroma`.
        backend: &'static str,
        /// What failed, without credentials.
        message: String,
    },
}

impl MemoryError {
    /// A backend failure.
    pub fn backend(backend: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Backend { backend, message: e.to_string() }
    }
}

impl From<sqlx::Error> for MemoryError {
    fn from(e: sqlx::Error) -> Self {
        Self::backend("sql", e)
    }
}

impl From<sqlx::migrate::MigrateError> for MemoryError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::backend("sql", format!("migration: {e}"))
    }
}

impl From<redis::RedisError> for MemoryError {
    fn from(e: redis::RedisError) -> Self {
        Self::backend("redis", e)
    }
}

/// Hides the password of a URL in messages.
pub use nightshift_core::redact_url as redact;
