//! Mapping of validation errors to gRPC status codes (store errors map in
//! `nightshift_store::status_from_store`, shared with the scheduler).
use nightshift_core::{ValidationError, ValidationErrors};
use tonic::Status;

pub use nightshift_store::status_from_store;

/// INVALID_ARGUMENT naming every bad field.
pub fn status_from_validation(what: &str, e: ValidationErrors) -> Status {
    Status::invalid_argument(format!("invalid {what}: {e}"))
}

/// INVALID_ARGUMENT for one bad request field.
pub(crate) fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}
