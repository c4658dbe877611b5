//! Store errors, and their one mapping to gRPC status codes (every service that serves store
//! data answers with it).
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

/// The SQLite group writer's own connection fails as sqlx would (`nightshift_sqlite::db_error`).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(nightshift_sqlite::db_error(e))
    }
}

/// True if `e` is a unique-key violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == ErrorKind::UniqueViolation)
}

/// The gRPC status of a store error. Database failures are logged here and reported without
/// their details (which may contain connection strings).
pub fn status_from_store(e: StoreError) -> tonic::Status {
    use tonic::Status;
    match e {
        StoreError::NotFound(m) => Status::not_found(format!("{m} not found")),
        StoreError::AlreadyExists(m) => Status::already_exists(format!("{m} already exists")),
        StoreError::VersionConflict(m) => Status::aborted(format!("version conflict: {m}")),
        StoreError::Fenced(m) | StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::Corrupt(m) => {
            tracing::error!(error = %m, "corrupt stored data");
            Status::internal("stored data is corrupt; see the server's log")
        }
        StoreError::Database(e) => {
            tracing::error!(error = %e, "database error");
            match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                    Status::unavailable("database unavailable")
                }
                _ => Status::internal("database error; see the server's log"),
            }
        }
        StoreError::Migrate(e) => {
            tracing::error!(error = %e, "migration error");
            Status::internal("database migration error")
        }
    }
}
