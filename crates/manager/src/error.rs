//! Mapping of store and validation errors to gRPC status codes.
use nightshift_core::{ValidationError, ValidationErrors};
use nightshift_store::StoreError;
use tonic::Status;

/// The gRPC status of a store error. Database failures are logged here and reported without
/// their details (which may contain connection strings).
pub fn status_from_store(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(format!("{m} not found")),
        StoreError::AlreadyExists(m) => Status::already_exists(format!("{m} already exists")),
        StoreError::VersionConflict(m) => Status::aborted(format!("version conflict: {m}")),
        StoreError::Fenced(m) | StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::Corrupt(m) => {
            tracing::error!(error = %m, "corrupt stored data");
            Status::internal("stored data is corrupt; see the manager's log")
        }
        StoreError::Database(e) => {
            tracing::error!(error = %e, "database error");
            match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                    Status::unavailable("database unavailable")
                }
                _ => Status::internal("database error; see the manager's log"),
            }
        }
        StoreError::Migrate(e) => {
            tracing::error!(error = %e, "migration error");
            Status::internal("database migration error")
        }
    }
}

/// INVALID_ARGUMENT naming every bad field.
pub fn status_from_validation(what: &str, e: ValidationErrors) -> Status {
    Status::invalid_argument(format!("invalid {what}: {e}"))
}

/// INVALID_ARGUMENT for one bad request field.
pub(crate) fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}
