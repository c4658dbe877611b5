//! Errors of a chat call, classified so that a caller can decide between retrying and failing.
//!
//! No variant ever holds an API key: messages taken from provider responses pass through
//! [`crate::http::redact`] with the key that was sent, and transport errors are stripped of URLs
//! with query strings or user info.
use std::time::Duration;

/// A failed chat call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// No complete answer within the per-call timeout (`model.request_timeout`).
    #[error("LLM call timed out after {0:?}")]
    Timeout(Duration),
    /// HTTP 429 from the provider (retries already spent, or the wait it asked for was too long).
    #[error("rate limited by the LLM provider (HTTP 429){}: {message}", fmt_retry_after(*retry_after))]
    RateLimited {
        /// The provider's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// Provider's message.
        message: String,
    },
    /// HTTP 5xx (and 408 / 409, which providers use for transient conditions).
    #[error("LLM provider error (HTTP {status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
        /// The provider's `Retry-After`, if it sent one (e.g. with 503).
        retry_after: Option<Duration>,
    },
    /// The provider could not be reached or the connection broke.
    #[error("could not reach the LLM provider: {0}")]
    Connection(String),
    /// HTTP 4xx other than auth and rate limits: the request itself is wrong (unknown model,
    /// context too long, invalid schema, ...). Retrying the same request will not help.
    #[error("LLM provider rejected the request (HTTP {status}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
    },
    /// HTTP 401 / 403: the key is missing, wrong or lacks permission.
    #[error("LLM provider refused the credentials (HTTP {status}): {message}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// Provider's message (redacted).
        message: String,
    },
    /// The answer could not be understood: not JSON, no choices, or (structured mode) not a valid
    /// `{tool, arguments}` / `{final}` object. Sampling again may well succeed.
    #[error("invalid LLM response: {0}")]
    InvalidResponse(String),
    /// Local configuration problem: unset key variable, bad base URL, client set-up, a model file
    /// that is missing or unreadable.
    #[error("LLM configuration error: {0}")]
    Config(String),
    /// The prompt does not fit the embedded model's context window (permanent for this request).
    #[error("the prompt has {tokens} tokens; the model's context holds {limit} (with room for the answer)")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// What fits.
        limit: usize,
    },
    /// The embedded model failed while generating (a tensor error, its thread pool gone).
    #[error("embedded model failed: {0}")]
    Engine(String),
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    d.map(|d| format!(", retry after {d:?}")).unwrap_or_default()
}

/// Coarse class of an [`LlmError`], e.g. for metrics labels and run events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlmErrorKind {
    /// [`LlmError::Timeout`].
    Timeout,
    /// [`LlmError::RateLimited`].
    RateLimited,
    /// [`LlmError::Server`].
    Server,
    /// [`LlmError::Connection`].
    Connection,
    /// [`LlmError::BadRequest`].
    BadRequest,
    /// [`LlmError::Auth`].
    Auth,
    /// [`LlmError::InvalidResponse`].
    InvalidResponse,
    /// [`LlmError::Config`].
    Config,
    /// [`LlmError::PromptTooLong`].
    PromptTooLong,
    /// [`LlmError::Engine`].
    Engine,
}

impl LlmErrorKind {
    /// Stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::Server => "server",
            Self::Connection => "connection",
            Self::BadRequest => "bad_request",
            Self::Auth => "auth",
            Self::InvalidResponse => "invalid_response",
            Self::Config => "config",
            Self::PromptTooLong => "prompt_too_long",
            Self::Engine => "engine",
        }
    }
}

impl LlmError {
    /// The error's class.
    pub fn kind(&self) -> LlmErrorKind {
        match self {
            Self::Timeout(_) => LlmErrorKind::Timeout,
            Self::RateLimited { .. } => LlmErrorKind::RateLimited,
            Self::Server { .. } => LlmErrorKind::Server,
            Self::Connection(_) => LlmErrorKind::Connection,
            Self::BadRequest { .. } => LlmErrorKind::BadRequest,
            Self::Auth { .. } => LlmErrorKind::Auth,
            Self::InvalidResponse(_) => LlmErrorKind::InvalidResponse,
            Self::Config(_) => LlmErrorKind::Config,
            Self::PromptTooLong { .. } => LlmErrorKind::PromptTooLong,
            Self::Engine(_) => LlmErrorKind::Engine,
        }
    }

    /// Whether a later attempt of the same call may succeed (the agent loop's retry decision).
    /// Bad requests, auth and configuration errors are permanent.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            LlmErrorKind::Timeout
                | LlmErrorKind::RateLimited
                | LlmErrorKind::Server
                | LlmErrorKind::Connection
                | LlmErrorKind::InvalidResponse
                | LlmErrorKind::Engine
        )
    }

    /// Whether the provider's own retry loop repeats the HTTP request at once (with backoff):
    /// only transport-level transient failures. Timeouts are not (a hung model would multiply the
    /// call's duration by the attempts) and invalid answers are left to the agent loop.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.kind(), LlmErrorKind::RateLimited | LlmErrorKind::Server | LlmErrorKind::Connection)
    }

    /// The provider's requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
