//! Errors of the event log and their gRPC status codes.
use tonic::Status;

/// Why an event log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// A cursor (or page token) that this log did not issue.
    #[error("'{0}' is not a cursor of this event log")]
    InvalidCursor(String),
    /// Events after `cursor` were removed by retention before they were read: resuming there
    /// would silently skip them, so the caller must decide (e.g. restart from the beginning).
    #[error("events after cursor {cursor} are no longer retained ({lost} event(s) expired); resume from the beginning")]
    CursorExpired {
        /// The cursor the read started after.
        cursor: String,
        /// How many events between `cursor` and the oldest retained one are gone.
        lost: u64,
    },
    /// An argument outside what the log accepts (other than a cursor).
    #[error("{0}")]
    Invalid(String),
    /// Invalid configuration (URL scheme, prefix, limits).
    #[error("invalid event log configuration: {0}")]
    Config(String),
    /// The backend is unreachable or refused the operation.
    #[error("event log backend error: {0}")]
    Backend(String),
    /// Stored data could not be decoded.
    #[error("undecodable stored event: {0}")]
    Corrupt(String),
    /// The log was closed (its owner shut down).
    #[error("the event log is closed")]
    Closed,
}

impl EventLogError {
    /// The gRPC status of this error. `field` names the request field a cursor came from (for
    /// INVALID_ARGUMENT). Backend details are logged, not returned, since they may carry
    /// connection strings.
    pub fn into_status(self, field: &str) -> Status {
        match self {
            Self::InvalidCursor(_) => Status::invalid_argument(format!("{field}: {self}")),
            Self::Invalid(m) => Status::invalid_argument(m),
            Self::CursorExpired { .. } => Status::out_of_range(format!("{field}: {self}")),
            Self::Config(m) => Status::failed_precondition(m),
            Self::Backend(m) => {
                tracing::warn!(error = %m, "event log backend error");
                Status::unavailable("event log backend unavailable; see the event service's log")
            }
            Self::Corrupt(m) => {
                tracing::error!(error = %m, "corrupt stored event");
                Status::internal("stored event is corrupt; see the event service's log")
            }
            Self::Closed => Status::unavailable("the event log is shutting down"),
        }
    }
}

pub(crate) use nightshift_core::redact_url;
