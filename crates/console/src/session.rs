//! Signed-in sessions: a random id in an HttpOnly, SameSite=Strict cookie, the credential kept
//! here in the console's memory (never sent back to the browser), and a CSRF token that every
//! form carries and every action checks.
//!
//! Sessions live in the console process: a restart signs everyone out, and several console
//! replicas need session affinity. The credential is checked by the services on every call, so
//! a revoked key stops working in the console as everywhere else.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use nightshift_core::auth::{Role, constant_time_eq};
use rand::RngCore;

/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "nightshift_console";

/// One signed-in user.
#[derive(Clone)]
pub(crate) struct Session {
    /// The cookie value.
    pub id: String,
    /// The bearer credential the user signed in with; `None` when the services run without
    /// authentication (`nightshift dev` on loopback).
    pub credential: Option<String>,
    /// Who the services say the credential is.
    pub name: String,
    /// Its role: the pages offer only the actions it holds (the services enforce them anyway).
    pub role: Role,
    /// Its namespaces, as the services report them (`*` = all).
    pub namespaces: String,
    /// The token every form of this session carries.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether the role may write agents and control runs (pause, trigger, cancel, delete).
    pub fn may_control(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    /// Whether `token` is this session's CSRF token.
    pub fn csrf_ok(&self, token: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), token.as_bytes())
    }
}

/// The sessions of this console process.
pub(crate) struct Sessions {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Session>>,
}

/// 256 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max: max.max(1), entries: Mutex::new(HashMap::new()) }
    }

    /// Signs in: a new session for the credential and what the services said of it.
    pub fn create(&self, credential: Option<String>, name: String, role: Role, namespaces: String) -> Session {
        let session = Session {
            id: random_token(),
            credential,
            name,
            role,
            namespaces,
            csrf: random_token(),
            expires: Instant::now() + self.ttl,
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.max {
                let now = Instant::now();
                entries.retain(|_, s| s.expires > now);
            }
            while entries.len() >= self.max {
                // Still full of live sessions: the one closest to its end goes.
                let Some(oldest) = entries.values().min_by_key(|s| s.expires).map(|s| s.id.clone()) else { break };
                entries.remove(&oldest);
            }
            entries.insert(session.id.clone(), session.clone());
        }
        session
    }

    /// The live session named by the request's cookie.
    pub fn of_request(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut entries = self.entries.lock().ok()?;
        match entries.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                entries.remove(id);
                None
            }
            None => None,
        }
    }

    /// Signs out.
    pub fn remove(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }

    /// Drops expired sessions.
    pub fn purge(&self) {
        let now = Instant::now();
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, s| s.expires > now);
        }
    }

    /// The `Set-Cookie` value that carries `session` (`Secure` when the console serves HTTPS).
    pub fn set_cookie(&self, session: &Session, secure: bool) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            session.id,
            self.ttl.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a state-changing request comes from this console's own pages: an `Origin` (or,
/// without one, a `Referer`) naming the same host as `Host` (HTTP/2: the request's authority).
/// Browsers send `Origin` with every POST; a request with neither is refused too.
pub(crate) fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> bool {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).or(authority);
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .or_else(|| headers.get(axum::http::header::REFERER))
        .and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => {
            let rest = origin.split_once("://").map_or("", |(_, r)| r);
            rest.split('/').next() == Some(host)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires_or_is_removed() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let s = sessions.create(Some("key".into()), "alice".into(), Role::Viewer, "*".into());
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        let found = sessions.of_request(&headers(&[("cookie", &format!("a=b; {COOKIE}={}", s.id))])).unwrap();
        assert_eq!(found.name, "alice");
        assert!(!found.may_control());
        assert!(found.csrf_ok(&s.csrf) && !found.csrf_ok("nope"));
        assert!(sessions.of_request(&headers(&[("cookie", &format!("{COOKIE}=forged"))])).is_none());
        sessions.remove(&s.id);
        assert!(sessions.of_request(&headers(&[("cookie", &format!("{COOKIE}={}", s.id))])).is_none());
        let gone = Sessions::new(Duration::ZERO, 10).create(None, "x".into(), Role::Admin, "*".into());
        assert!(sessions.of_request(&headers(&[("cookie", &format!("{COOKIE}={}", gone.id))])).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), 3);
        let ids: Vec<_> = (0..5).map(|_| sessions.create(None, "u".into(), Role::Admin, "*".into()).id).collect();
        assert_eq!(sessions.entries.lock().unwrap().len(), 3);
        let last = headers(&[("cookie", &format!("{COOKIE}={}", ids[4]))]);
        assert!(sessions.of_request(&last).is_some());
    }

    #[test]
    fn only_same_origin_posts_pass() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:50051"), ("origin", "http://127.0.0.1:50051")]), None));
        assert!(same_origin(&headers(&[("host", "c.example"), ("referer", "https://c.example/agents?q=a")]), None));
        assert!(same_origin(&headers(&[("origin", "https://c.example")]), Some("c.example")));
        assert!(!same_origin(&headers(&[("host", "c.example"), ("origin", "https://evil.example")]), None));
        assert!(!same_origin(&headers(&[("host", "c.example"), ("origin", "https://c.example.evil.example")]), None));
        assert!(!same_origin(&headers(&[("host", "c.example")]), None));
    }
}
