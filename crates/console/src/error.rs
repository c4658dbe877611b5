//! How a page fails: the service's gRPC status becomes the HTTP status of the page, a
//! credential the services no longer accept sends the user back to the sign-in page.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A service endpoint or the TLS material is unusable.
    #[error(transparent)]
    Endpoint(#[from] nightshift_rpc::BadEndpoint),
    /// The `[auth]` or `[tls]` section cannot be used.
    #[error(transparent)]
    Auth(#[from] nightshift_rpc::AuthConfigError),
    /// A setting out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A page that cannot be shown.
#[derive(Debug)]
pub(crate) enum PageError {
    /// A service refused or failed the call.
    Service(tonic::Status),
    /// The request itself is wrong (a form field, a filter).
    BadRequest(String),
    /// The action needs what the session lacks (a CSRF token, the same origin).
    Forbidden(String),
    /// No such page.
    NotFound(String),
    /// No session, or one the services no longer accept: sign in again.
    SignIn,
}

impl From<tonic::Status> for PageError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::Unauthenticated { PageError::SignIn } else { PageError::Service(s) }
    }
}

fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted | FailedPrecondition => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            PageError::SignIn => return Redirect::to("/login").into_response(),
            PageError::Service(s) => (http_status(s.code()), format!("{:?}", s.code()), s.message().to_owned()),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request".into(), m),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden".into(), m),
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found".into(), m),
        };
        let body = crate::view::bare(
            &title,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.error { (detail) }
                p { a href="/agents" { "Agents" } " · " a href="/runs" { "Runs" } }
            },
        );
        (status, body).into_response()
    }
}
