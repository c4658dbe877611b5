//! `http_get`: fetches a URL on the worker's allow-list, with size and time limits.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_args;
use nightshift_core::governance::Hints;

use crate::{Tool, ToolDef, ToolError, ToolSource, ToolsConfig};

/// Most redirects followed (each hop is checked against the allow-list).
const MAX_REDIRECTS: usize = 5;

/// One entry of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name or address; with `subdomains`, `*.host` also matches its subdomains.
    Host { host: String, subdomains: bool },
    /// A URL prefix: same scheme, host and port, and a path at or below `path`.
    Prefix { scheme: String, host: String, port: Option<u16>, path: String },
}

impl Rule {
    fn parse(entry: &str) -> Result<Self, String> {
        let e = entry.trim();
        if e.contains("://") {
            let u = Url::parse(e).map_err(|err| format!("http_allow entry '{e}' is not a valid URL: {err}"))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(format!("http_allow entry '{e}' must be an http or https URL"));
            }
            let host = u.host_str().ok_or_else(|| format!("http_allow entry '{e}' has no host"))?.to_owned();
            Ok(Self::Prefix {
                scheme: u.scheme().to_owned(),
                host,
                port: u.port_or_known_default(),
                path: u.path().to_owned(),
            })
        } else {
            let (host, subdomains) = match e.strip_prefix("*.") {
                Some(h) => (h, true),
                None => (e, false),
            };
            let valid = !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                && !host.starts_with('.');
            if !valid {
                return Err(format!("http_allow entry '{e}' is neither a host name nor an http(s) URL"));
            }
            Ok(Self::Host { host: host.to_ascii_lowercase(), subdomains })
        }
    }

    fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else { return false };
        match self {
            Self::Host { host: h, subdomains } => {
                host == h || (*subdomains && host.strip_suffix(h.as_str()).is_some_and(|rest| rest.ends_with('.')))
            }
            Self::Prefix { scheme, host: h, port, path } => {
                let p = url.path();
                // `/v1` allows `/v1` and `/v1/...` but not `/v10`.
                let path_ok = p == path
                    || (p.starts_with(path.as_str()) && (path.ends_with('/') || p[path.len()..].starts_with('/')));
                url.scheme() == scheme && host == h && url.port_or_known_default() == *port && path_ok
            }
        }
    }
}

/// The parsed allow-list.
#[derive(Debug, Clone)]
struct AllowList(Vec<Rule>);

impl AllowList {
    /// Why `url` may not be fetched, if it may not.
    fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("only http and https URLs can be fetched, not {}:", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("URLs with embedded credentials are not allowed".into());
        }
        if self.0.is_empty() {
            return Err("this worker allows no URLs for http_get (its allow-list is empty)".into());
        }
        if self.0.iter().any(|r| r.allows(url)) {
            Ok(())
        } else {
            Err(format!("{} is not on this worker's allow-list for http_get", redact(url)))
        }
    }
}

/// The URL without query and fragment, for messages: queries often carry tokens.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Fetches allow-listed URLs.
pub struct HttpGet {
    client: reqwest::Client,
    allow: Arc<AllowList>,
    max_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for HttpGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGet").field("allow", &self.allow).field("max_bytes", &self.max_bytes).finish()
    }
}

impl HttpGet {
    /// An `http_get` with `config`'s allow-list and limits. Fails on an invalid allow-list entry.
    pub fn new(config: &ToolsConfig) -> Result<Self, String> {
        let allow = Arc::new(AllowList(config.http_allow.iter().map(|e| Rule::parse(e)).collect::<Result<_, _>>()?));
        let policy_allow = allow.clone();
        // Every redirect hop is checked against the allow-list, so an allowed URL cannot bounce the
        // request to a forbidden one.
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match policy_allow.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("redirect refused: {why}")),
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout)
            .user_agent(concat!("nightshift-tools/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client, allow, max_bytes: config.http_max_bytes.max(1), timeout: config.http_timeout })
    }
}

#[derive(Deserialize)]
struct Args {
    url: String,
    max_bytes: Option<usize>,
}

#[async_trait]
impl Tool for HttpGet {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "http_get".into(),
            description: format!(
                "Fetches a URL with HTTP GET and returns the status line, content type and body text (at most {} \
                 bytes; longer bodies are cut). Only URLs on the worker's allow-list can be fetched.",
                self.max_bytes
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "minLength": 1, "description": "an http or https URL"},
                    "max_bytes": {"type": "integer", "minimum": 1},
                },
                "required": ["url"],
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, open_world: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: Args = parse_args(args)?;
        let url = Url::parse(a.url.trim()).map_err(|e| ToolError::InvalidArguments(format!("'{}': {e}", a.url)))?;
        self.allow.check(&url).map_err(ToolError::Denied)?;
        let limit = a.max_bytes.unwrap_or(self.max_bytes).min(self.max_bytes);
        let mut resp = self.client.get(url.clone()).send().await.map_err(|e| {
            if e.is_timeout() {
                ToolError::Timeout(self.timeout)
            } else if e.is_redirect() {
                ToolError::Denied(nightshift_core::one_line(&e))
            } else {
                ToolError::Failed(format!("GET {} failed: {}", redact(&url), nightshift_core::one_line(&e)))
            }
        })?;
        let status = resp.status();
        let content_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        // From the header, before reading: reqwest's `content_length()` shrinks as the body is read.
        let declared_len = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = Vec::new();
        let mut truncated = false;
        // Read chunk by chunk and stop at the limit, so a huge body never sits in memory whole.
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    ToolError::Timeout(self.timeout)
                } else {
                    ToolError::Failed(nightshift_core::one_line(&e))
                }
            })?;
            let Some(chunk) = chunk else { break };
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let shown = body.len();
        let text = match String::from_utf8(body) {
            Ok(t) => t,
            Err(e) if truncated && e.utf8_error().error_len().is_none() => {
                let valid = e.utf8_error().valid_up_to();
                let mut b = e.into_bytes();
                b.truncate(valid);
                String::from_utf8_lossy(&b).into_owned()
            }
            Err(e) => format!("[binary body, {} bytes read, not shown]", e.into_bytes().len()),
        };
        let mut out = format!("HTTP {status}\ncontent-type: {content_type}\n\n{text}");
        if truncated {
            let total = declared_len.map(|n| format!(" of {n}")).unwrap_or_default();
            out.push_str(&format!("\n[truncated: showed the first {shown} bytes{total}]"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str], url: &str) -> bool {
        let list = AllowList(entries.iter().map(|e| Rule::parse(e).unwrap()).collect());
        list.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn host_rules() {
        assert!(allowed(&["example.com"], "https://example.com/x"));
        assert!(!allowed(&["example.com"], "https://api.example.com/x"));
        assert!(allowed(&["*.example.com"], "https://api.example.com/x"));
        assert!(allowed(&["*.example.com"], "https://example.com/x"));
        assert!(!allowed(&["*.example.com"], "https://badexample.com/x"));
        assert!(!allowed(&["example.com"], "https://example.com.evil.net/"));
        assert!(!allowed(&["example.com"], "ftp://example.com/"));
        assert!(!allowed(&["example.com"], "https://user:pw@example.com/"));
        assert!(!allowed(&[], "https://example.com/"));
    }

    #[test]
    fn prefix_rules() {
        let p = ["https://api.example.com/v1"];
        assert!(allowed(&p, "https://api.example.com/v1"));
        assert!(allowed(&p, "https://api.example.com/v1/users?x=1"));
        assert!(!allowed(&p, "https://api.example.com/v10"));
        assert!(!allowed(&p, "https://api.example.com/v1/../admin"));
        assert!(!allowed(&p, "http://api.example.com/v1/users"));
        assert!(!allowed(&p, "https://api.example.com:8443/v1/users"));
        assert!(!allowed(&p, "https://api.example.com.evil.net/v1/users"));
        assert!(allowed(&["http://127.0.0.1:8080/a/"], "http://127.0.0.1:8080/a/b"));
        assert!(!allowed(&["http://127.0.0.1:8080/a/"], "http://127.0.0.1:8081/a/b"));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(Rule::parse("ftp://x.com/").is_err());
        assert!(Rule::parse("exa mple.com").is_err());
        assert!(Rule::parse("").is_err());
    }
}
