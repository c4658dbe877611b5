//! Signing in with an API key (or an OIDC token the services accept), and out.
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use nightshift_core::auth::Role;
use nightshift_proto::v1 as pb;
use serde::Deserialize;

use super::{App, NoFields, Posted, back_to};
use crate::error::PageError;
use crate::session::{Session, clear_cookie, same_origin};

/// Longest credential accepted (the services' own bound).
const MAX_CREDENTIAL: usize = nightshift_rpc::MAX_CREDENTIAL;

/// Who the services say `credential` is: `Ok(None)` when they refuse it.
async fn who(app: &App, credential: Option<&str>) -> Result<Option<pb::Principal>, PageError> {
    match app.backends.auth(credential).who_am_i(pb::WhoAmIRequest {}).await {
        Ok(r) => Ok(r.into_inner().principal),
        Err(s) if s.code() == tonic::Code::Unauthenticated => Ok(None),
        Err(s) => Err(PageError::Service(s)),
    }
}

fn session_for(app: &App, credential: Option<String>, p: pb::Principal) -> Session {
    // A role the console does not know is treated as the least: a viewer.
    let role = p.role.parse().unwrap_or(Role::Viewer);
    app.sessions.create(credential, p.name, role, p.namespaces.join(","))
}

/// A session without sign-in when the services run without authentication; `None` when they
/// need a credential.
pub(super) async fn open_session(app: &App) -> Result<Option<Session>, PageError> {
    Ok(who(app, None).await?.map(|p| session_for(app, None, p)))
}

#[derive(Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

fn login_page(app: &App, next: &str, error: Option<&str>) -> Markup {
    crate::view::bare(
        "Sign in",
        html! {
            section.signin {
                h1 { "Sign in" }
                p.muted { "With an API key (" code { "nightshift auth key create" } ") or a token from your identity provider." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                @if let Some(oidc) = &app.oidc {
                    a.button #oidc href={ "/login/oidc?next=" (crate::view::encode(next)) } { (oidc.label()) }
                    p.muted { "or" }
                }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="credential" { "API key or token" }
                    input #credential type="password" name="credential" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// `GET /login`.
pub(super) async fn form(State(app): State<Arc<App>>, Query(q): Query<Next>) -> Markup {
    login_page(&app, q.next.as_deref().unwrap_or("/agents"), None)
}

#[derive(Deserialize)]
pub(super) struct Credentials {
    #[serde(default)]
    credential: String,
    next: Option<String>,
}

/// `POST /login`: the services check the credential (`WhoAmI`); a session holds it.
pub(super) async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    axum::Form(f): axum::Form<Credentials>,
) -> Result<Response, PageError> {
    // Login CSRF: only this console's own form may sign a browser in.
    if !same_origin(&headers, uri.authority().map(|a| a.as_str())) {
        return Err(PageError::Forbidden("refused: the request does not come from this console's pages".into()));
    }
    let next = f.next.as_deref().unwrap_or("/agents");
    let credential = f.credential.trim();
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Ok((axum::http::StatusCode::BAD_REQUEST, login_page(&app, next, Some("Enter an API key or token.")))
            .into_response());
    }
    let Some(principal) = who(&app, Some(credential)).await? else {
        tracing::info!(target: "nightshift::audit", "console sign-in refused");
        return Ok((
            axum::http::StatusCode::UNAUTHORIZED,
            login_page(&app, next, Some("That key or token is not accepted.")),
        )
            .into_response());
    };
    let session = session_for(&app, Some(credential.to_owned()), principal);
    tracing::info!(target: "nightshift::audit", principal = %session.name, role = %session.role, "console sign-in");
    let cookie = app.sessions.set_cookie(&session, app.secure);
    Ok(([(header::SET_COOKIE, cookie)], back_to(Some(next), "/agents")).into_response())
}

/// This console's `scheme://host` as the browser reached it.
fn own_base(app: &App, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<String, PageError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .ok_or_else(|| PageError::BadRequest("no Host header".into()))?;
    Ok(format!("{}://{host}", if app.secure { "https" } else { "http" }))
}

/// `GET /login/oidc?next=`: off to the provider.
pub(super) async fn oidc_start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<Next>,
) -> Result<Redirect, PageError> {
    let oidc = app.oidc.as_ref().ok_or_else(|| PageError::NotFound("no identity provider is configured".into()))?;
    let next = q.next.as_deref().filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or("/agents");
    Ok(Redirect::to(&oidc.start(next, &own_base(&app, &headers, &uri)?).await?))
}

#[derive(Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/oidc/callback`: the provider sends the browser back with a code.
pub(super) async fn oidc_callback(
    State(app): State<Arc<App>>,
    Query(c): Query<Callback>,
) -> Result<Response, PageError> {
    let oidc = app.oidc.as_ref().ok_or_else(|| PageError::NotFound("no identity provider is configured".into()))?;
    if let Some(error) = c.error {
        let why = format!("The identity provider refused: {error} {}", c.error_description.unwrap_or_default());
        return Ok(
            (axum::http::StatusCode::UNAUTHORIZED, login_page(&app, "/agents", Some(why.trim()))).into_response()
        );
    }
    let (Some(code), Some(state)) = (c.code, c.state) else {
        return Err(PageError::BadRequest("the provider sent neither a code nor an error".into()));
    };
    let (token, next) = oidc.finish(&code, &state).await?;
    let Some(principal) = who(&app, Some(&token)).await? else {
        tracing::info!(target: "nightshift::audit", "console sign-in through the identity provider refused by the services");
        let why = "The services do not accept this provider's token (check the manager's [auth.oidc]).";
        return Ok((axum::http::StatusCode::UNAUTHORIZED, login_page(&app, &next, Some(why))).into_response());
    };
    let session = session_for(&app, Some(token), principal);
    tracing::info!(target: "nightshift::audit", principal = %session.name, role = %session.role, "console sign-in (OIDC)");
    let cookie = app.sessions.set_cookie(&session, app.secure);
    // A page, not a redirect: the provider's navigation is cross-site, and a redirect would
    // carry that on, so the browser would not send the new SameSite=Strict cookie to `next`.
    // The page's own navigation is same-site.
    let target = super::back_to(Some(&next), "/agents");
    let href = target.location().to_owned();
    let page = crate::view::bare(
        "Signed in",
        html! {
            meta http-equiv="refresh" content={ "0;url=" (href) };
            p { "Signed in. " a href=(href) { "Continue" } }
        },
    );
    Ok(([(header::SET_COOKIE, cookie)], page).into_response())
}

/// `POST /logout`.
pub(super) async fn logout(State(app): State<Arc<App>>, posted: Posted<NoFields>) -> impl IntoResponse {
    app.sessions.remove(&posted.session.id);
    ([(header::SET_COOKIE, clear_cookie())], Redirect::to("/login"))
}
