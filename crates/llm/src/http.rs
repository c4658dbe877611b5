//! The HTTP plumbing both providers share: one JSON POST with a timeout, the API key resolved per
//! attempt, status classification, `Retry-After`, redaction, and the retry loop around it.
use std::time::{Duration, Instant};

use chrono::Utc;
use nightshift_core::SecretRef;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

use crate::{LlmError, RetryPolicy, retry};

/// Largest response body read from a provider (a completion is a few KiB; 16 MiB leaves room
/// for any real one).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Longest excerpt of a provider's error body kept in an error message.
const MAX_EXCERPT: usize = 500;
/// Connection set-up gets at most this long (and never more than the whole call's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI-compatible servers).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
}

/// A configured endpoint of one provider instance.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    endpoint: Url,
    api_key: Option<SecretRef>,
    auth: AuthStyle,
    extra_headers: HeaderMap,
    timeout: Duration,
    retry: RetryPolicy,
}

/// A successful POST.
pub(crate) struct Posted {
    /// Parsed JSON body.
    pub body: Value,
    /// Attempts used.
    pub attempts: u32,
    /// Wall time including retries.
    pub latency: Duration,
}

impl Transport {
    /// Builds the client. `endpoint` is the full URL of the call.
    pub(crate) fn new(
        endpoint: &str,
        api_key: Option<SecretRef>,
        auth: AuthStyle,
        extra_headers: HeaderMap,
        timeout: Duration,
        egress: Option<&nightshift_egress::Egress>,
    ) -> Result<Self, LlmError> {
        // The message does not echo the URL: it may carry credentials in its user-info part.
        let endpoint = Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| LlmError::Config("model.base_url is not a valid http(s) URL".into()))?;
        let client = match egress {
            Some(egress) => {
                egress.check_literal(&endpoint).map_err(|e| LlmError::Config(format!("model.base_url: {e}")))?;
                // The worker's one client: names are checked when they are resolved, on every
                // connection, and it follows no redirect.
                egress.http_client().map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?
            }
            None => reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT.min(timeout))
                // No redirects: a redirect to another host would carry our `x-api-key` header
                // along (reqwest strips only `Authorization` on cross-host redirects), and API
                // endpoints do not redirect POSTs anyway.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))?,
        };
        Ok(Self { client, endpoint, api_key, auth, extra_headers, timeout, retry: RetryPolicy::default() })
    }

    pub(crate) fn set_retry_policy(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    #[cfg(test)]
    pub(crate) fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// POSTs `body` with retries of transient failures.
    pub(crate) async fn post_json<B: Serialize + ?Sized>(&self, what: &str, body: &B) -> Result<Posted, LlmError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| LlmError::Config(format!("cannot serialize the request body: {e}")))?;
        let started = Instant::now();
        let (result, attempts) = self.retry.run(what, |_| self.post_once(bytes.clone())).await;
        result.map(|body| Posted { body, attempts, latency: started.elapsed() })
    }

    /// POSTs `body` asking for a stream of Server-Sent Events, with retries of transient
    /// failures; `on_event` sees each event's JSON as it arrives, and the result's body is the
    /// array of all of them (a retried attempt's events are seen again).
    pub(crate) async fn post_sse<B: Serialize + ?Sized>(
        &self,
        what: &str,
        body: &B,
        on_event: &(dyn Fn(&Value) + Send + Sync),
    ) -> Result<Posted, LlmError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| LlmError::Config(format!("cannot serialize the request body: {e}")))?;
        let started = Instant::now();
        let (result, attempts) = self.retry.run(what, |_| self.post_once_with(bytes.clone(), Some(on_event))).await;
        result.map(|body| Posted { body, attempts, latency: started.elapsed() })
    }

    /// One attempt. The key is resolved here, per attempt, so that a rotated variable takes
    /// effect without rebuilding the provider.
    async fn post_once(&self, body: Vec<u8>) -> Result<Value, LlmError> {
        self.post_once_with(body, None).await
    }

    /// One attempt; with `on_event`, the answer is an event stream (see [`Transport::post_sse`]).
    async fn post_once_with(
        &self,
        body: Vec<u8>,
        on_event: Option<&(dyn Fn(&Value) + Send + Sync)>,
    ) -> Result<Value, LlmError> {
        let key = self.resolve_key()?;
        let mut headers = self.extra_headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = key.as_deref() {
            let (name, value) = match self.auth {
                AuthStyle::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {key}")),
                AuthStyle::XApiKey => (HeaderName::from_static("x-api-key"), key.to_owned()),
            };
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| LlmError::Config("the API key contains characters not allowed in a header".into()))?;
            // Keeps the value out of `Debug` output of the request (and so out of any trace).
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let call = async {
            let resp = self
                .client
                .post(self.endpoint.clone())
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(|e| self.transport_error(&e))?;
            let status = resp.status();
            let retry_after = retry_after_from_headers(resp.headers());
            // Read in chunks against a cap: a server (or whatever the base URL reaches) that
            // streams without end must not fill the worker's memory.
            let mut resp = resp;
            let mut bytes = Vec::new();
            let mut events = Sse::default();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
                if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(LlmError::InvalidResponse(format!(
                        "the response body exceeds {} MiB",
                        MAX_RESPONSE_BYTES >> 20
                    )));
                }
                bytes.extend_from_slice(&chunk);
                if let Some(on_event) = on_event.filter(|_| status.is_success()) {
                    events.feed(&bytes, on_event)?;
                }
            }
            if !status.is_success() {
                return Err(status_error(status, retry_after, &bytes, key.as_deref()));
            }
            if on_event.is_some() {
                return Ok(Value::Array(events.all));
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                LlmError::InvalidResponse(format!("body is not JSON ({e}): {}", excerpt(&bytes, key.as_deref())))
            })
        };
        tokio::time::timeout(self.timeout, call).await.unwrap_or(Err(LlmError::Timeout(self.timeout)))
    }

    fn resolve_key(&self) -> Result<Option<String>, LlmError> {
        let Some(r) = &self.api_key else { return Ok(None) };
        // `resolve` names the variable, never its value.
        let key = r.resolve().map_err(|e| LlmError::Config(format!("model.api_key: {e}")))?;
        if key.trim().is_empty() {
            return Err(LlmError::Config(format!("model.api_key: {r} is empty")));
        }
        Ok(Some(key))
    }

    fn transport_error(&self, e: &reqwest::Error) -> LlmError {
        if e.is_timeout() {
            return LlmError::Timeout(self.timeout);
        }
        LlmError::Connection(format!("{}: {}", display_url(&self.endpoint), error_chain(e)))
    }
}

/// An event stream read so far: the events parsed from its complete lines.
#[derive(Default)]
struct Sse {
    /// Bytes of the body already split into lines.
    consumed: usize,
    all: Vec<Value>,
}

impl Sse {
    /// Parses the complete lines of `body` past what was read before; each `data:` line holds
    /// one JSON event (`[DONE]` ends the stream, other lines are comments or fields we ignore).
    fn feed(&mut self, body: &[u8], on_event: &(dyn Fn(&Value) + Send + Sync)) -> Result<(), LlmError> {
        while let Some(end) = body[self.consumed..].iter().position(|b| *b == b'\n') {
            let line = &body[self.consumed..self.consumed + end];
            self.consumed += end + 1;
            let line = String::from_utf8_lossy(line);
            let Some(data) = line.trim_end_matches('\r').strip_prefix("data:") else { continue };
            let data = data.trim();
            if data.is_empty() || data == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(data)
                .map_err(|e| LlmError::InvalidResponse(format!("a streamed event is not JSON ({e})")))?;
            on_event(&event);
            self.all.push(event);
        }
        Ok(())
    }
}

/// The URL without user info, query or fragment, for messages.
fn display_url(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// `e` and its sources, without the request URL (reqwest puts the full URL into its message).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let head = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else if e.is_request() {
        "sending the request failed"
    } else {
        "HTTP error"
    };
    if parts.is_empty() { head.to_owned() } else { format!("{head}: {}", parts.join(": ")) }
}

/// `retry-after-ms` (sent by OpenAI, more precise) or `Retry-After`.
pub(crate) fn retry_after_from_headers(h: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
    }
    text("retry-after").and_then(|v| retry::parse_retry_after(v, Utc::now()))
}

/// Classifies a non-success status.
pub(crate) fn status_error(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    key: Option<&str>,
) -> LlmError {
    let message = provider_message(body, key);
    let code = status.as_u16();
    match code {
        401 | 403 => LlmError::Auth { status: code, message },
        429 => LlmError::RateLimited { retry_after, message },
        // 408 (request timeout) and 409 (conflict/lock) are transient for these APIs; 529 is
        // Anthropic's "overloaded" and falls in 5xx.
        408 | 409 | 500..=599 => LlmError::Server { status: code, message, retry_after },
        _ => LlmError::BadRequest { status: code, message },
    }
}

/// The human part of an error body: `error.message` (OpenAI, Anthropic), `error` as text,
/// `message` or `detail` (other compatible servers), else an excerpt of the body.
fn provider_message(body: &[u8], key: Option<&str>) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let pick = |v: &Value| v.as_str().map(str::to_owned);
        v.pointer("/error/message")
            .and_then(pick)
            .or_else(|| v.get("error").and_then(pick))
            .or_else(|| v.get("message").and_then(pick))
            .or_else(|| v.get("detail").and_then(pick))
    });
    match from_json {
        Some(m) => excerpt(m.as_bytes(), key),
        None if body.is_empty() => "(empty body)".to_owned(),
        None => excerpt(body, key),
    }
}

/// At most [`MAX_EXCERPT`] characters of `bytes`, with `key` redacted.
pub(crate) fn excerpt(bytes: &[u8], key: Option<&str>) -> String {
    // Redact before cutting so that a key straddling the cut is not left half visible.
    let text = redact(&String::from_utf8_lossy(bytes), key);
    match text.char_indices().nth(MAX_EXCERPT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Replaces every occurrence of `key` in `text`. Providers echo keys (or parts of them) in auth
/// errors; an error message must never carry it into logs, events or checkpoints.
pub(crate) fn redact(text: &str, key: Option<&str>) -> String {
    match key.map(str::trim) {
        Some(k) if !k.is_empty() => text.replace(k, "[REDACTED]"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_parsed_line_by_line_across_chunks() {
        let seen = std::sync::Mutex::new(Vec::new());
        let on_event = |v: &Value| seen.lock().unwrap().push(v["n"].as_i64().unwrap_or(-1));
        let mut sse = Sse::default();
        let mut body = b": comment\ndata: {\"n\": 1}\n\ndata: {\"n\"".to_vec();
        sse.feed(&body, &on_event).unwrap();
        assert_eq!(*seen.lock().unwrap(), [1]);
        body.extend_from_slice(b": 2}\r\n\ndata: [DONE]\n\n");
        sse.feed(&body, &on_event).unwrap();
        assert_eq!(*seen.lock().unwrap(), [1, 2]);
        assert_eq!(sse.all.len(), 2);
        assert!(Sse::default().feed(b"data: nope\n", &on_event).is_err());
    }

    #[test]
    fn statuses_are_classified() {
        let k = |s: u16| status_error(StatusCode::from_u16(s).unwrap(), None, b"", None).kind().as_str();
        assert_eq!(k(400), "bad_request");
        assert_eq!(k(404), "bad_request");
        assert_eq!(k(422), "bad_request");
        assert_eq!(k(401), "auth");
        assert_eq!(k(403), "auth");
        assert_eq!(k(429), "rate_limited");
        assert_eq!(k(408), "server");
        assert_eq!(k(500), "server");
        assert_eq!(k(503), "server");
        assert_eq!(k(529), "server");
    }

    #[test]
    fn messages_are_extracted_and_redacted() {
        let key = Some("sk-secret-123");
        let m = provider_message(br#"{"error":{"message":"Incorrect API key provided: sk-secret-123"}}"#, key);
        assert_eq!(m, "Incorrect API key provided: [REDACTED]");
        assert_eq!(provider_message(br#"{"error":"model not loaded"}"#, None), "model not loaded");
        assert_eq!(provider_message(br#"{"detail":"nope"}"#, None), "nope");
        assert_eq!(provider_message(b"plain sk-secret-123 text", key), "plain [REDACTED] text");
        assert_eq!(provider_message(b"", None), "(empty body)");
        let long = "é".repeat(2 * MAX_EXCERPT);
        assert_eq!(excerpt(long.as_bytes(), None).chars().count(), MAX_EXCERPT + 1);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_from_headers(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_millis(250)));
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let u = Url::parse("https://user:pw@example.com/v1/chat/completions?key=abc#x").unwrap();
        assert_eq!(display_url(&u), "https://example.com/v1/chat/completions");
    }
}
