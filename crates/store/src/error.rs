//! Store errors; each maps to one gRPC status code in the services.
use sqlx::error::ErrorKind;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named entity does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique key is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Optimistic concurrency: the expected version is not the stored one.
    #[error("version conflict: {0}")]
    VersionConflict(String),
    /// A fenced call with a stale token, or on a run that is no longer running.
    #[error("{0}")]
    Fenced(String),
    /// The operation does not apply in the entity's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request value the store cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// Stored data that no longer decodes or validates.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// True if `e` is a unique-key violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == ErrorKind::UniqueViolation)
}
