//! OIDC / JWT bearer tokens: signed by the identity provider, verified against its JWKS (a file,
//! or an `https://` URL fetched and cached), with issuer, audience and expiry checked and the role
//! read from a claim. The manager verifies them for every process (the others forward
//! credentials to `AuthService.VerifyCredential`), so only its `[auth.oidc]` needs setting.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use nightshift_core::Namespaces;
use nightshift_core::auth::{Principal, Role, check_namespaces, default_namespaces};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthFailure, Authenticator};

/// A fetched JWKS is used this long before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);
/// A token naming a key the cached set lacks refetches the set, at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(60);
/// Largest JWKS document read.
const MAX_JWKS: usize = 1 << 20;

/// The `[auth.oidc]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcOptions {
    /// The tokens' `iss`; empty = tokens are not accepted.
    pub issuer: String,
    /// The tokens' `aud` (this deployment's client id).
    pub audience: String,
    /// The provider's signing keys: a JWKS file, or its `https://` URL.
    pub jwks: String,
    /// The claim that holds the caller's role (`admin`, `operator`, `viewer`, …): a string, or
    /// an array whose first known role is taken.
    pub role_claim: String,
    /// The claim that holds the namespaces the caller acts in: an array of names (or `"*"`),
    /// or one string of names separated by spaces or commas. Absent: what the role gets by
    /// default (every namespace for admins, `default` for operators and viewers).
    pub namespace_claim: String,
}

impl Default for OidcOptions {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks: String::new(),
            role_claim: "nightshift_role".into(),
            namespace_claim: "nightshift_namespaces".into(),
        }
    }
}

/// Why `[auth.oidc]` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.oidc: {0}")]
pub struct OidcConfigError(String);

/// Verifies JWT bearer tokens.
pub struct Oidc {
    options: OidcOptions,
    keys: Mutex<Option<(JwkSet, Instant)>>,
    http: reqwest::Client,
}

impl Oidc {
    /// `None` when `options.issuer` is empty; an error when the rest is incomplete.
    pub fn new(options: &OidcOptions) -> Result<Option<Self>, OidcConfigError> {
        if options.issuer.is_empty() {
            return Ok(None);
        }
        if options.audience.is_empty() || options.jwks.is_empty() || options.role_claim.is_empty() {
            return Err(OidcConfigError("issuer needs audience, jwks and role_claim".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcConfigError(e.to_string()))?;
        Ok(Some(Self { options: options.clone(), keys: Mutex::new(None), http }))
    }

    /// Whether `credential` has the shape of a JWT (three dot-separated parts).
    pub fn is_token(credential: &str) -> bool {
        credential.split('.').count() == 3
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let text = if self.options.jwks.starts_with("https://") {
            let resp = self.http.get(&self.options.jwks).send().await.map_err(|e| e.to_string())?;
            let body = resp.error_for_status().map_err(|e| e.to_string())?.bytes().await.map_err(|e| e.to_string())?;
            if body.len() > MAX_JWKS {
                return Err("the JWKS document is too large".into());
            }
            body.to_vec()
        } else {
            std::fs::read(&self.options.jwks).map_err(|e| format!("{}: {e}", self.options.jwks))?
        };
        serde_json::from_slice(&text).map_err(|e| format!("the JWKS is not valid: {e}"))
    }

    /// The cached key set, fetched when missing, stale, or (at most once a minute) lacking `kid`.
    async fn keys(&self, kid: &str) -> Result<JwkSet, AuthFailure> {
        let cached = self.keys.lock().ok().and_then(|k| k.clone());
        if let Some((set, at)) = &cached {
            let fresh = at.elapsed() < JWKS_TTL;
            let may_refetch = at.elapsed() >= REFETCH_AFTER;
            if fresh && (set.find(kid).is_some() || !may_refetch) {
                return Ok(set.clone());
            }
        }
        match self.load().await {
            Ok(set) => {
                if let Ok(mut k) = self.keys.lock() {
                    *k = Some((set.clone(), Instant::now()));
                }
                Ok(set)
            }
            // A provider that is down must not lock everyone out while a recent set is known.
            Err(e) => cached.map(|(set, _)| set).ok_or(AuthFailure::Unavailable(format!("JWKS: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl Authenticator for Oidc {
    async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        let refused = |why: String| AuthFailure::Refused(format!("token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(e.to_string()))?;
        let kid = header.kid.clone().ok_or_else(|| refused("no kid in its header".into()))?;
        let set = self.keys(&kid).await?;
        let jwk = set.find(&kid).ok_or_else(|| refused(format!("unknown signing key '{kid}'")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| refused(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.options.issuer]);
        validation.set_audience(&[&self.options.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| refused(e.to_string()))?
            .claims;
        let roles: Vec<&str> = match claims.get(&self.options.role_claim) {
            Some(serde_json::Value::String(r)) => vec![r.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        let role = roles
            .iter()
            .find_map(|r| r.parse::<Role>().ok())
            .ok_or_else(|| refused(format!("no known role in claim '{}'", self.options.role_claim)))?;
        let namespaces = match claims.get(&self.options.namespace_claim) {
            None => default_namespaces(role),
            Some(v) => {
                let names: Vec<&str> = match v {
                    serde_json::Value::String(s) => s.split([' ', ',']).filter(|s| !s.is_empty()).collect(),
                    serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
                    _ => Vec::new(),
                };
                let field = self.options.namespace_claim.as_str();
                let namespaces = if names.is_empty() {
                    Namespaces::none()
                } else {
                    Namespaces::parse(field, &names).map_err(|e| refused(e.to_string()))?
                };
                check_namespaces(role, &namespaces).map_err(refused)?;
                namespaces
            }
        };
        let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or_default();
        Ok(Principal { name: format!("oidc:{sub}"), role, namespaces })
    }
}

/// Tokens to the OIDC verifier (when configured), everything else to `rest`.
pub struct WithOidc<A> {
    /// The token verifier.
    pub oidc: Option<Oidc>,
    /// API keys.
    pub rest: A,
}

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for WithOidc<A> {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        match &self.oidc {
            Some(oidc) if Oidc::is_token(credential) => oidc.authenticate(credential).await,
            _ => self.rest.authenticate(credential).await,
        }
    }
}
