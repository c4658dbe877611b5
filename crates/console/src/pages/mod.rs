//! The console's routes: sign-in, the pages, the actions (POST, each checked for its session's
//! CSRF token and the same origin), the live streams and the embedded assets.
mod agent;
mod agents;
mod approvals;
mod auth;
mod events;
mod fleet;
mod memory;
mod overview;
mod runs;
mod versions;

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use nightshift_rpc::CancellationToken;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub(crate) use events::{Filter as EventsFilter, row as event_row};
pub(crate) use overview::Sources;
pub(crate) use runs::run_section;

use crate::backend::Backends;
use crate::error::PageError;
use crate::session::{Session, Sessions, same_origin};

/// What every handler shares.
pub(crate) struct App {
    pub backends: Backends,
    pub sessions: Sessions,
    /// The console serves HTTPS: cookies are `Secure`.
    pub secure: bool,
    /// `trace_url` of the configuration (`{run_id}` placeholder), empty = no trace links.
    pub trace_url: String,
    /// Cancelled when the process shuts down: live streams end, so that serving can stop.
    pub closing: CancellationToken,
    /// Signing in through an OIDC provider, when `[oidc]` names one.
    pub oidc: Option<crate::oidc::OidcClient>,
    /// Where the overview reads metrics, and its recent readings.
    pub metrics: overview::Sources,
}

pub(crate) type AppState = State<Arc<App>>;

/// Every route of the console.
pub(crate) fn router(app: Arc<App>) -> Router {
    let signed_in = Router::new()
        .route("/", get(overview::show))
        .route("/agents", get(agents::list))
        .route("/agents/{namespace}/{name}", get(agent::show))
        .route("/agents/{namespace}/{name}/diff", get(versions::diff))
        .route("/agents/{namespace}/{name}/memory", get(memory::show))
        .route("/agents/{namespace}/{name}/{action}", post(agents::act))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/live", get(crate::live::run))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}/{verb}", post(approvals::decide))
        .route("/events", get(events::show))
        .route("/events/live", get(crate::live::events))
        .route("/workers", get(fleet::show))
        .route("/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), require_session));
    Router::new()
        .merge(signed_in)
        .route("/login", get(auth::form).post(auth::login))
        .route("/login/oidc", get(auth::oidc_start))
        .route("/login/oidc/callback", get(auth::oidc_callback))
        .route(
            "/static/console.css",
            get(|| asset("text/css; charset=utf-8", include_str!("../../assets/console.css"))),
        )
        .route(
            "/static/console.js",
            get(|| asset("text/javascript; charset=utf-8", include_str!("../../assets/console.js"))),
        )
        .fallback(|| async { PageError::NotFound("no such page".into()) })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// What every answer carries: no script, style or frame from elsewhere, no sniffing, no
/// referrer outside the console.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Puts the request's session into its extensions, or signs in: without a session, a console
/// whose services run without authentication opens one at once (as the services' anonymous
/// principal); otherwise the user goes to the sign-in page and comes back afterwards.
async fn require_session(State(app): AppState, mut req: Request, next: Next) -> Response {
    if let Some(session) = app.sessions.of_request(req.headers()) {
        req.extensions_mut().insert(session);
        return next.run(req).await;
    }
    match auth::open_session(&app).await {
        Ok(Some(session)) => {
            let cookie = app.sessions.set_cookie(&session, app.secure);
            req.extensions_mut().insert(session);
            let mut res = next.run(req).await;
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Ok(None) => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            // Back to where the user was after signing in (a live stream's page, not the stream).
            let next = if req.method() == axum::http::Method::GET && !path.ends_with("/live") { path } else { "/" };
            Redirect::to(&format!("/login?next={}", crate::view::encode(next))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The session of a request that passed [`require_session`].
pub(crate) struct Signed(pub Session);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Signed {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, PageError> {
        parts.extensions.get::<Session>().cloned().map(Signed).ok_or(PageError::SignIn)
    }
}

/// A form posted by one of the console's own pages: same origin, with the session's CSRF token.
pub(crate) struct Posted<T> {
    pub session: Session,
    pub form: T,
}

#[derive(Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    rest: T,
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        let session = req.extensions().get::<Session>().cloned().ok_or(PageError::SignIn)?;
        if !same_origin(req.headers(), req.uri().authority().map(|a| a.as_str())) {
            return Err(PageError::Forbidden("refused: the request does not come from this console's pages".into()));
        }
        // Not a form at all: no token either, so refused like a forged one.
        let Form(f) = Form::<WithCsrf<T>>::from_request(req, state).await.map_err(|e| {
            PageError::Forbidden(format!("refused: not a form of this console's pages ({})", e.body_text()))
        })?;
        if !session.csrf_ok(&f.csrf) {
            return Err(PageError::Forbidden(
                "refused: the form's CSRF token is missing or stale; reload the page".into(),
            ));
        }
        Ok(Posted { session, form: f.rest })
    }
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub(crate) struct NoFields {}

/// Where to go after an action: the page it was pressed on when the form says so (a path of
/// this console only), else `fallback`.
pub(crate) fn back_to(to: Option<&str>, fallback: &str) -> Redirect {
    match to {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => Redirect::to(p),
        _ => Redirect::to(fallback),
    }
}
