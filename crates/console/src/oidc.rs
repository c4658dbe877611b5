//! Signing in through an OpenID Connect provider: the authorization-code flow with PKCE. The
//! console sends the browser to the provider with a random `state`, `nonce` and code challenge,
//! takes the code back at `/login/oidc/callback`, exchanges it for an ID token, checks the nonce,
//! and asks the manager who the token is (`WhoAmI`): the services verify its signature, issuer,
//! audience and expiry, and the token becomes the session's credential.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::OidcLogin;
use crate::error::{ConsoleError, PageError};
use crate::view::encode;

/// How long a user may take at the provider.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress kept at most (a flood of started sign-ins cannot grow memory).
const MAX_PENDING: usize = 10_000;
/// The provider's discovery document is read again after this.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Clone, Deserialize)]
struct Discovery {
    authorization_endpoint: String,
    token_endpoint: String,
}

struct Pending {
    verifier: String,
    nonce: String,
    next: String,
    redirect: String,
    at: Instant,
}

/// The console's client of one provider.
pub(crate) struct OidcClient {
    cfg: OidcLogin,
    secret: Option<String>,
    http: reqwest::Client,
    discovery: Mutex<Option<(Discovery, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `url` may be used to reach the provider: HTTPS, or plain HTTP on loopback only.
fn acceptable(url: &str) -> bool {
    url.starts_with("https://")
        || ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])))
}

fn unavailable(why: impl std::fmt::Display) -> PageError {
    PageError::Service(tonic::Status::unavailable(format!("the identity provider: {why}")))
}

impl OidcClient {
    /// `None` when no issuer is configured.
    pub fn new(cfg: &OidcLogin) -> Result<Option<Self>, ConsoleError> {
        if cfg.issuer.is_empty() {
            return Ok(None);
        }
        let bad = |m: &str| ConsoleError::Invalid(format!("oidc: {m}"));
        if !acceptable(&cfg.issuer) {
            return Err(bad("issuer must be https:// (plain http only on loopback)"));
        }
        if cfg.client_id.is_empty() {
            return Err(bad("client_id is required with an issuer"));
        }
        if !cfg.redirect_url.is_empty() && !cfg.redirect_url.ends_with("/login/oidc/callback") {
            return Err(bad("redirect_url must end with /login/oidc/callback"));
        }
        let secret = match cfg.client_secret_file.as_str() {
            "" => None,
            path => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| bad(&format!("client_secret_file {path}: {e}")))?
                    .trim()
                    .to_owned(),
            ),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Some(Self {
            cfg: cfg.clone(),
            secret,
            http,
            discovery: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        }))
    }

    /// The sign-in button's text.
    pub fn label(&self) -> String {
        if self.cfg.label.is_empty() { format!("Sign in with {}", self.cfg.issuer) } else { self.cfg.label.clone() }
    }

    async fn discover(&self) -> Result<Discovery, PageError> {
        if let Ok(cached) = self.discovery.lock()
            && let Some((d, at)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'));
        let d: Discovery = self.json(self.http.get(&url)).await?;
        if !acceptable(&d.authorization_endpoint) || !acceptable(&d.token_endpoint) {
            return Err(unavailable("its endpoints must be https://"));
        }
        if let Ok(mut cached) = self.discovery.lock() {
            *cached = Some((d.clone(), Instant::now()));
        }
        Ok(d)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, PageError> {
        let res = req.send().await.map_err(unavailable)?;
        let status = res.status();
        let body = res.bytes().await.map_err(unavailable)?;
        if body.len() > MAX_ANSWER {
            return Err(unavailable("answer too large"));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(unavailable(format!("HTTP {status}: {text}")));
        }
        serde_json::from_slice(&body).map_err(unavailable)
    }

    fn redirect_url(&self, own_base: &str) -> String {
        if self.cfg.redirect_url.is_empty() {
            format!("{own_base}/login/oidc/callback")
        } else {
            self.cfg.redirect_url.clone()
        }
    }

    /// Where to send the browser to sign in; afterwards it comes back to `next`. `own_base` is
    /// this console's `scheme://host` as the browser reached it.
    pub async fn start(&self, next: &str, own_base: &str) -> Result<String, PageError> {
        let d = self.discover().await?;
        let (state, verifier, nonce) = (random(), random(), random());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let redirect = self.redirect_url(own_base);
        let scopes = if self.cfg.scopes.split_whitespace().any(|s| s == "openid") {
            self.cfg.scopes.clone()
        } else {
            format!("openid {}", self.cfg.scopes).trim().to_owned()
        };
        let url = format!(
            "{}{}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            d.authorization_endpoint,
            if d.authorization_endpoint.contains('?') { '&' } else { '?' },
            encode(&self.cfg.client_id),
            encode(&redirect),
            encode(&scopes),
            state,
            nonce,
            challenge,
        );
        if let Ok(mut pending) = self.pending.lock() {
            pending.retain(|_, p| p.at.elapsed() < PENDING_TTL);
            if pending.len() >= MAX_PENDING {
                return Err(unavailable("too many sign-ins in progress; try again shortly"));
            }
            let next = next.to_owned();
            pending.insert(state, Pending { verifier, nonce, next, redirect, at: Instant::now() });
        }
        Ok(url)
    }

    /// Exchanges the code the provider sent back for an ID token; returns it and where to go.
    pub async fn finish(&self, code: &str, state: &str) -> Result<(String, String), PageError> {
        let pending = self.pending.lock().ok().and_then(|mut p| p.remove(state));
        let Some(p) = pending.filter(|p| p.at.elapsed() < PENDING_TTL) else {
            return Err(PageError::BadRequest("this sign-in expired or was not started here; sign in again".into()));
        };
        let d = self.discover().await?;
        let mut form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&client_id={}&code_verifier={}",
            encode(code),
            encode(&p.redirect),
            encode(&self.cfg.client_id),
            p.verifier
        );
        if let Some(secret) = &self.secret {
            form.push_str(&format!("&client_secret={}", encode(secret)));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: String,
        }
        let req = self
            .http
            .post(&d.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form);
        let tokens: Tokens = self.json(req).await?;
        if token_nonce(&tokens.id_token).as_deref() != Some(p.nonce.as_str()) {
            return Err(PageError::Forbidden("refused: the ID token is not the answer to this sign-in (nonce)".into()));
        }
        Ok((tokens.id_token, p.next))
    }
}

/// The `nonce` claim of a JWT (read, not verified: the services verify the token itself).
fn token_nonce(jwt: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    claims.get("nonce")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_reached_over_https_or_loopback_only() {
        assert!(acceptable("https://id.example.com"));
        assert!(acceptable("http://127.0.0.1:8080/authorize"));
        assert!(acceptable("http://localhost"));
        assert!(!acceptable("http://id.example.com"));
        assert!(!acceptable("http://127.0.0.1.evil.example/"));
        assert!(!acceptable("http://localhost.evil.example"));
    }

    #[test]
    fn the_nonce_is_read_from_the_token() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","nonce":"n-1"}"#);
        assert_eq!(token_nonce(&format!("h.{payload}.s")).as_deref(), Some("n-1"));
        assert_eq!(token_nonce("not-a-jwt"), None);
    }

    #[test]
    fn a_configuration_without_a_client_is_refused() {
        let cfg = OidcLogin { issuer: "https://id.example.com".into(), ..OidcLogin::default() };
        assert!(OidcClient::new(&cfg).is_err());
        let cfg = OidcLogin { issuer: "http://id.example.com".into(), client_id: "c".into(), ..OidcLogin::default() };
        assert!(OidcClient::new(&cfg).is_err());
        assert!(OidcClient::new(&OidcLogin::default()).unwrap().is_none());
    }
}
