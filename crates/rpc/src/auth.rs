//! Authentication and authorization of every call, as one tower layer around a server's routes:
//! the path names the permission ([`nightshift_core::auth::permission_for`]), the bearer
//! credential names the caller ([`Authenticator`]), the caller's role must hold the permission.
//! Missing or refused credentials → UNAUTHENTICATED; a role without the permission →
//! PERMISSION_DENIED; a path without an entry in the table → PERMISSION_DENIED (fail closed).
//! Every mutating call is audited (who, role, what, result) as a structured log line and, where
//! the process has an audit sink, as an event.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nightshift_core::auth::{Permission, Principal, constant_time_eq, permission_for, secret_hash};
use nightshift_core::namespace::Visible;
use nightshift_core::{Namespace, Namespaces};
use tonic::Status;
use tonic::codegen::{Service, http};

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Refused (unknown, revoked, expired, malformed): the call fails UNAUTHENTICATED.
    #[error("{0}")]
    Refused(String),
    /// Could not be checked now (the verifying service is down): UNAVAILABLE, retryable.
    #[error("{0}")]
    Unavailable(String),
}

/// Verifies a credential presented to this server.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The principal behind `credential` (the bearer token as sent).
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure>;
}

/// The namespaces of a call's caller: its credential's, or every namespace when the server
/// runs without authentication (no principal on the request).
pub fn caller_namespaces<T>(req: &tonic::Request<T>) -> Namespaces {
    req.extensions().get::<Principal>().map_or(Namespaces::All, |p| p.namespaces.clone())
}

/// Who made a call, for the record (who approved what): its credential's name, or `anonymous`
/// when the server runs without authentication.
pub fn caller_name<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Principal>().map_or_else(|| "anonymous".to_owned(), |p| p.name.clone())
}

/// What a call asking for `requested` namespaces (empty = all the caller holds) may see;
/// PERMISSION_DENIED for a namespace the caller does not hold.
pub fn visible_namespaces(scope: &Namespaces, requested: &[Namespace]) -> Result<Visible, Status> {
    scope.visible(requested).map_err(|e| Status::permission_denied(e.to_string()))
}

/// What a call record says for audit.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Who called (key or token name).
    pub principal: String,
    /// Its role.
    pub role: String,
    /// The namespaces it acts in (`*` or names joined with ',').
    pub namespaces: String,
    /// The gRPC path.
    pub method: String,
    /// The gRPC status code of the answer.
    pub code: tonic::Code,
}

/// Where audit records go besides the log (the manager publishes them as events).
pub type AuditSink = Arc<dyn Fn(AuditRecord) + Send + Sync>;

/// How a server admits calls.
#[derive(Clone)]
pub enum Guard {
    /// No authentication: every caller is [`Principal::unauthenticated`]. Only for a server on
    /// loopback (`nightshift dev`); each role refuses it elsewhere unless told otherwise.
    Open,
    /// Every call but health and reflection needs a credential the authenticator accepts.
    Required(Arc<dyn Authenticator>),
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guard::Open => "Guard::Open",
            Guard::Required(_) => "Guard::Required",
        })
    }
}

/// The credential of a request: `authorization: Bearer <credential>`.
fn bearer<B>(req: &http::Request<B>) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim()).filter(|c| !c.is_empty())
}

/// Decides one call: the principal to run it as and the permission it needed, or the status to
/// refuse it with.
pub async fn admit(guard: &Guard, path: &str, credential: Option<&str>) -> Result<(Principal, Permission), Status> {
    let Some(permission) = permission_for(path) else {
        return Err(Status::permission_denied(format!("{path} is not in the permission table")));
    };
    if permission == Permission::Public {
        // Health and reflection read nothing a caller could abuse; they run as nobody.
        let anonymous = Principal {
            name: "anonymous".into(),
            role: nightshift_core::auth::Role::Viewer,
            namespaces: Namespaces::none(),
        };
        return Ok((anonymous, permission));
    }
    let authenticator = match guard {
        Guard::Open => return Ok((Principal::unauthenticated(), permission)),
        Guard::Required(a) => a,
    };
    let Some(credential) = credential else {
        return Err(Status::unauthenticated("missing credential: send 'authorization: Bearer <API key or token>'"));
    };
    if credential.len() > MAX_CREDENTIAL {
        return Err(Status::unauthenticated("invalid credential"));
    }
    let principal = match authenticator.authenticate(credential).await {
        Ok(p) => p,
        Err(AuthFailure::Refused(why)) => {
            tracing::info!(target: "nightshift::audit", method = path, reason = %why, "credential refused");
            return Err(Status::unauthenticated("invalid credential"));
        }
        Err(AuthFailure::Unavailable(why)) => {
            return Err(Status::unavailable(format!("cannot verify the credential now: {why}")));
        }
    };
    if !principal.role.allows(permission) {
        return Err(Status::permission_denied(format!(
            "role '{}' may not call {path} (needs {permission:?})",
            principal.role
        )));
    }
    Ok((principal, permission))
}

/// The layer that applies a [`Guard`] to a server's routes.
#[derive(Clone)]
pub(crate) struct AuthLayer {
    pub(crate) guard: Guard,
    pub(crate) audit: Option<AuditSink>,
    /// Web pages are mounted: their paths pass unauthenticated (they sign users in themselves).
    pub(crate) pages: bool,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorized<S>;
    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, guard: self.guard.clone(), audit: self.audit.clone(), pages: self.pages }
    }
}

#[derive(Clone)]
pub(crate) struct Authorized<S> {
    inner: S,
    guard: Guard,
    audit: Option<AuditSink>,
    pages: bool,
}

impl<S, B, R> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (guard, audit, pages) = (self.guard.clone(), self.audit.clone(), self.pages);
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            if pages && !crate::server::is_grpc_path(&path) {
                // Routed to the pages, never to a gRPC service (GrpcServer::pages).
                return inner.call(req).await;
            }
            let credential = bearer(&req).map(str::to_owned);
            let (principal, permission) = match admit(&guard, &path, credential.as_deref()).await {
                Ok(admitted) => admitted,
                Err(status) => return Ok(status.into_http()),
            };
            let who = permission
                .mutates()
                .then(|| (principal.name.clone(), principal.role, principal.namespaces.to_string()));
            req.extensions_mut().insert(principal);
            let res = inner.call(req).await;
            if let Some((name, role, namespaces)) = who {
                let code = match &res {
                    Ok(r) => crate::metrics::status_of(r.headers()),
                    Err(_) => tonic::Code::Internal,
                };
                tracing::info!(target: "nightshift::audit", principal = %name, role = %role, namespaces = %namespaces,
                    method = %path, code = ?code, "call");
                if let Some(sink) = &audit {
                    sink(AuditRecord { principal: name, role: role.to_string(), namespaces, method: path, code });
                }
            }
            res
        })
    }
}

/// An authenticator that remembers answers for a few seconds, so that a call with a known
/// credential costs a map lookup. A revoked key stops working within `ttl` (plus the
/// verifying service's own cache): the revocation bound docs/security.md states.
pub struct Cached<A> {
    inner: A,
    ttl: Duration,
    entries: Mutex<HashMap<String, Remembered>>,
}

/// Credentials up to this length are cached under themselves, longer ones under their hash.
const SHORT_CREDENTIAL: usize = 128;
/// Longer credentials are refused unread (a JWT with many claims stays well below).
pub const MAX_CREDENTIAL: usize = 8 * 1024;

/// An answer and when it was given.
type Remembered = (Instant, Result<Principal, AuthFailure>);

/// Entries beyond this are dropped (expired ones first): a flood of random credentials cannot
/// grow the cache without bound.
const CACHE_MAX: usize = 10_000;

impl<A: Authenticator> Cached<A> {
    /// Caches `inner`'s answers for `ttl`.
    pub fn new(inner: A, ttl: Duration) -> Self {
        Self { inner, ttl, entries: Mutex::new(HashMap::new()) }
    }
}

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for Cached<A> {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        let now = Instant::now();
        // API keys (81 characters) are their own cache key; longer credentials (JWTs) are
        // remembered by their hash, so that 10,000 entries stay small whatever callers send.
        let key = if credential.len() <= SHORT_CREDENTIAL { credential.to_owned() } else { secret_hash(credential) };
        if let Ok(entries) = self.entries.lock()
            && let Some((at, answer)) = entries.get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return answer.clone();
        }
        let answer = self.inner.authenticate(credential).await;
        // An unavailable verifier is not remembered: the next call asks again.
        if !matches!(answer, Err(AuthFailure::Unavailable(_)))
            && let Ok(mut entries) = self.entries.lock()
        {
            if entries.len() >= CACHE_MAX {
                let ttl = self.ttl;
                entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
                if entries.len() >= CACHE_MAX {
                    entries.clear();
                }
            }
            entries.insert(key, (now, answer.clone()));
        }
        answer
    }
}

/// Keys given to a process at start (the bootstrap admin key of a new deployment, from a
/// secret): compared by SHA-256, held only as hashes.
pub struct StaticKeys {
    keys: Vec<(String, Principal)>,
}

impl StaticKeys {
    /// Accepts each `(key, principal)`.
    pub fn new(keys: impl IntoIterator<Item = (String, Principal)>) -> Self {
        Self { keys: keys.into_iter().map(|(k, p)| (secret_hash(&k), p)).collect() }
    }

    /// The principal of `credential` if it is one of these keys.
    pub fn find(&self, credential: &str) -> Option<Principal> {
        let hash = secret_hash(credential);
        self.keys.iter().find(|(h, _)| constant_time_eq(h.as_bytes(), hash.as_bytes())).map(|(_, p)| p.clone())
    }
}

/// The static keys first, then `rest`.
pub struct WithStaticKeys<A> {
    /// Keys known at start.
    pub keys: StaticKeys,
    /// Everything else.
    pub rest: A,
}

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for WithStaticKeys<A> {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        match self.keys.find(credential) {
            Some(p) => Ok(p),
            None => self.rest.authenticate(credential).await,
        }
    }
}

#[async_trait::async_trait]
impl Authenticator for Arc<dyn Authenticator> {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        self.as_ref().authenticate(credential).await
    }
}
