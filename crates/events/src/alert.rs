//! The alert consumer: POSTs a Slack-compatible webhook (`{"text": …}`) when a run fails.
//!
//! Rules ([`AlertRules`], pure and clock-driven so they are testable without waiting):
//! - `on_task_error`: every `BACKGROUND_TASK_ERROR` alerts, at most once per agent per
//!   `min_interval` (further failures in the interval are counted and mentioned in the next
//!   alert);
//! - `consecutive_failures = N`: the N-th failure in a row of an agent (no
//!   `BACKGROUND_TASK_COMPLETED` in between) alerts once per streak, regardless of the rate limit;
//! - an event id seen before (one of the last `MAX_SEEN`, 10,000) is ignored, so an event
//!   delivered again (a resubscription from an older cursor, an id stored twice after the log's
//!   dedup window) neither alerts nor counts twice.
//!
//! Delivery ([`WebhookSender`]) retries connection errors, 429 and 5xx with doubling backoff;
//! other 4xx answers are final. [`AlertConsumer`] is what the events role runs (`[alerts]`): it
//! feeds the followed events to the rules and hands alerts to a bounded queue that
//! [`AlertDelivery`] drains, so a slow webhook never makes the subscription lag.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{Clock, EventType, backoff, pb};
use nightshift_events_client::{EventFilter, struct_to_json};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::consumer::{Consumer, ConsumerError};
use crate::log::to_chrono_duration;

/// Alerts waiting for delivery at most; more are dropped with a warning.
const QUEUE: usize = 256;

/// When and where to alert: the `[alerts]` section of the events options.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertPolicy {
    /// Slack-compatible incoming-webhook URL (`http://` or `https://`). A secret: prefer the
    /// variable `NIGHTSHIFT_EVENTS_ALERTS__WEBHOOK_URL` to a file.
    pub webhook_url: String,
    /// Alert on every failed run attempt (rate limited by `min_interval`).
    pub on_task_error: bool,
    /// Alert once when an agent failed this many runs in a row (0 = off).
    pub consecutive_failures: u32,
    /// Alert on every tool call that waits for a person's approval (not rate limited: each one
    /// needs someone).
    pub on_approval_requested: bool,
    /// At most one `on_task_error` alert per agent within this interval.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub min_interval: Duration,
    /// Delivery attempts per alert (connection errors, 429 and 5xx are retried).
    pub max_attempts: u32,
    /// Wait before the first retry (doubles per attempt, at most 60 s).
    #[serde(with = "nightshift_core::config::duration_text")]
    pub retry_backoff: Duration,
    /// Timeout of one POST.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub timeout: Duration,
}

// Incoming-webhook URLs carry their credential in the path: never print one.
impl std::fmt::Debug for AlertPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertPolicy")
            .field("webhook_url", &"<redacted>")
            .field("on_task_error", &self.on_task_error)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("on_approval_requested", &self.on_approval_requested)
            .field("min_interval", &self.min_interval)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            on_task_error: true,
            consecutive_failures: 3,
            on_approval_requested: true,
            min_interval: Duration::from_secs(300),
            max_attempts: 4,
            retry_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertReason {
    /// A run attempt failed.
    TaskError,
    /// This many runs failed in a row.
    ConsecutiveFailures(u32),
    /// A tool call waits for a person's approval.
    ApprovalRequested,
}

/// One alert to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Why.
    pub reason: AlertReason,
    /// The agent.
    pub agent_id: String,
    /// The failed run.
    pub run_id: String,
    /// The message (Slack `text`).
    pub text: String,
}

#[derive(Debug, Default)]
struct AgentTrack {
    streak: u32,
    last_alert: Option<DateTime<Utc>>,
    suppressed: u32,
}

/// The alert rules' state: per agent, the failure streak and the rate limit; the ids of the
/// events seen last.
#[derive(Debug)]
pub struct AlertRules {
    policy: AlertPolicy,
    clock: Arc<dyn Clock>,
    agents: HashMap<String, AgentTrack>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

/// Agents tracked at most; idle entries are forgotten first.
const MAX_TRACKED: usize = 10_000;
/// Event ids remembered for deduplication (failures and completions only), oldest forgotten
/// first.
const MAX_SEEN: usize = 10_000;
/// Longest wait between two delivery attempts of one alert.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

impl AlertRules {
    /// Rules of `policy`, rate limited by `clock`.
    pub fn new(policy: AlertPolicy, clock: Arc<dyn Clock>) -> Self {
        Self { policy, clock, agents: HashMap::new(), seen: HashSet::new(), seen_order: VecDeque::new() }
    }

    /// Feeds one event; returns the alert it raises, if any. An event whose id was fed before
    /// (among the last `MAX_SEEN`) is ignored.
    pub fn observe(&mut self, e: &pb::Event) -> Option<Alert> {
        let failed = match pb::EventType::try_from(e.r#type).ok().and_then(EventType::from_pb)? {
            EventType::BackgroundTaskError => true,
            EventType::BackgroundTaskCompleted => false,
            EventType::ApprovalRequested if self.policy.on_approval_requested => {
                return self.first_sight(&e.id).then(|| approval_requested(e));
            }
            _ => return None,
        };
        if !self.first_sight(&e.id) {
            return None;
        }
        if failed {
            return self.failure(e);
        }
        if let Some(t) = self.agents.get_mut(&e.agent_id) {
            t.streak = 0;
        }
        None
    }

    /// Records `id`; false if it was seen before. Events without an id cannot be told apart
    /// (the event service always assigns one).
    fn first_sight(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.seen_order.push_back(id.to_owned());
        if self.seen_order.len() > MAX_SEEN
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    fn failure(&mut self, e: &pb::Event) -> Option<Alert> {
        let now = self.clock.now();
        let interval = to_chrono_duration(self.policy.min_interval);
        if self.agents.len() >= MAX_TRACKED && !self.agents.contains_key(&e.agent_id) {
            self.agents.retain(|_, t| t.streak > 0 || t.last_alert.is_some_and(|l| now - l < interval));
        }
        let track = self.agents.entry(e.agent_id.clone()).or_default();
        track.streak += 1;
        let n = self.policy.consecutive_failures;
        let reason = if n > 0 && track.streak == n {
            AlertReason::ConsecutiveFailures(n)
        } else if self.policy.on_task_error {
            if track.last_alert.is_some_and(|l| now - l < interval) {
                track.suppressed += 1;
                return None;
            }
            AlertReason::TaskError
        } else {
            return None;
        };
        track.last_alert = Some(now);
        let suppressed = std::mem::take(&mut track.suppressed);
        let agent = if e.agent_name.is_empty() { &e.agent_id } else { &e.agent_name };
        let error = e
            .data
            .as_ref()
            .map(struct_to_json)
            .and_then(|d| d.get("error").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "no error message".into());
        let mut text = match reason {
            AlertReason::ConsecutiveFailures(n) => {
                format!(":rotating_light: Agent *{agent}* failed {n} runs in a row (last run `{}`: {error})", e.run_id)
            }
            _ => format!(":rotating_light: Agent *{agent}*: run `{}` failed: {error}", e.run_id),
        };
        if suppressed > 0 {
            text.push_str(&format!(" ({suppressed} more failure(s) since the last alert)"));
        }
        Some(Alert { reason, agent_id: e.agent_id.clone(), run_id: e.run_id.clone(), text })
    }
}

/// The alert for an `APPROVAL_REQUESTED` event: who waits for what, and the command that decides.
fn approval_requested(e: &pb::Event) -> Alert {
    let data = e.data.as_ref().map(struct_to_json).unwrap_or_default();
    let field = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let agent = if e.agent_name.is_empty() { &e.agent_id } else { &e.agent_name };
    let text = format!(
        ":raised_hand: Agent *{agent}*: run `{}` waits for approval of `{}` with `{}`. \
         `nightshift approvals approve {id}` or `nightshift approvals deny {id} --reason ...`",
        e.run_id,
        field("tool"),
        field("arguments"),
        id = field("approval_id"),
    );
    Alert { reason: AlertReason::ApprovalRequested, agent_id: e.agent_id.clone(), run_id: e.run_id.clone(), text }
}

/// Why an alert could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The webhook URL or client settings are unusable.
    #[error("alert webhook configuration: {0}")]
    Config(String),
    /// The receiver refused the alert (a 4xx other than 429).
    #[error("alert webhook refused the alert: HTTP {0}")]
    Rejected(u16),
    /// Every attempt failed.
    #[error("alert webhook unreachable after {attempts} attempt(s): {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// Posts alerts to the webhook with retries.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    url: reqwest::Url,
    max_attempts: u32,
    retry_backoff: Duration,
}

impl WebhookSender {
    /// A sender for `policy.webhook_url`, making `policy.max_attempts` attempts per alert
    /// (see [`crate::EventsConfig::validate`]: at least 1; with 0 every alert fails unsent).
    pub fn new(policy: &AlertPolicy) -> Result<Self, AlertError> {
        let url = parse_webhook_url(&policy.webhook_url).map_err(|e| AlertError::Config(format!("webhook_url {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AlertError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, url, max_attempts: policy.max_attempts, retry_backoff: policy.retry_backoff })
    }

    /// Delivers `alert`.
    pub async fn post(&self, alert: &Alert) -> Result<(), AlertError> {
        let body = serde_json::json!({ "text": alert.text });
        let mut last = String::new();
        for attempt in 1..=self.max_attempts {
            match self.client.post(self.url.clone()).json(&body).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    last = format!("HTTP {}", r.status().as_u16());
                }
                Ok(r) => return Err(AlertError::Rejected(r.status().as_u16())),
                // Without the URL (reqwest puts it in the message).
                Err(e) => last = e.without_url().to_string(),
            }
            tracing::debug!(attempt, error = last, "alert delivery failed");
            if attempt < self.max_attempts {
                tokio::time::sleep(backoff::exponential(self.retry_backoff, attempt - 1, MAX_RETRY_BACKOFF)).await;
            }
        }
        Err(AlertError::Unavailable { attempts: self.max_attempts, last })
    }
}

/// Parses an alert webhook URL: `http://` or `https://` with a host. The error says what is
/// wrong without echoing the URL (incoming-webhook URLs carry their credential).
pub(crate) fn parse_webhook_url(url: &str) -> Result<reqwest::Url, String> {
    if url.is_empty() {
        return Err("is required when [alerts] is present".into());
    }
    let url = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// The events the alert rules look at.
pub(crate) fn alert_filter() -> EventFilter {
    EventFilter {
        types: vec![EventType::BackgroundTaskError, EventType::BackgroundTaskCompleted, EventType::ApprovalRequested],
        ..Default::default()
    }
}

/// The alert consumer of the events role: applies the rules to the followed events and queues
/// the alerts for [`AlertDelivery`].
pub(crate) struct AlertConsumer {
    rules: AlertRules,
    queue: mpsc::Sender<Alert>,
}

/// Posts the queued alerts, one after the other, each with its retries.
pub(crate) struct AlertDelivery {
    sender: WebhookSender,
    queue: mpsc::Receiver<Alert>,
}

impl AlertConsumer {
    /// The consumer and its delivery for `policy`, rate limited by `clock`.
    pub(crate) fn new(policy: AlertPolicy, clock: Arc<dyn Clock>) -> Result<(Self, AlertDelivery), AlertError> {
        let sender = WebhookSender::new(&policy)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok((Self { rules: AlertRules::new(policy, clock), queue: tx }, AlertDelivery { sender, queue: rx }))
    }
}

#[async_trait::async_trait]
impl Consumer for AlertConsumer {
    fn name(&self) -> &'static str {
        "alerts"
    }

    async fn handle(&mut self, events: &[pb::Event]) -> Result<(), ConsumerError> {
        for e in events {
            if let Some(alert) = self.rules.observe(e)
                && self.queue.try_send(alert).is_err()
            {
                tracing::warn!(cursor = e.cursor, run = e.run_id, "alert queue full; alert dropped");
            }
        }
        Ok(())
    }
}

impl AlertDelivery {
    /// Delivers queued alerts until the [`AlertConsumer`] is dropped and the queue is empty.
    pub(crate) async fn run(mut self) {
        while let Some(alert) = self.queue.recv().await {
            match self.sender.post(&alert).await {
                Ok(()) => tracing::info!(agent = alert.agent_id, run = alert.run_id, "alert sent"),
                Err(e) => tracing::warn!(agent = alert.agent_id, run = alert.run_id, error = %e, "alert not delivered"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nightshift_core::ManualClock;

    use super::*;

    fn ev(ty: EventType, agent: &str, run: &str) -> pb::Event {
        pb::Event {
            r#type: ty.to_pb() as i32,
            agent_id: agent.into(),
            run_id: run.into(),
            data: Some(nightshift_events_client::json_to_struct(serde_json::json!({"error": "boom"}))),
            ..Default::default()
        }
    }

    #[test]
    fn rules_rate_limit_and_streaks() {
        let clock = ManualClock::new(Utc::now());
        let policy =
            AlertPolicy { consecutive_failures: 3, min_interval: Duration::from_secs(60), ..Default::default() };
        let mut rules = AlertRules::new(policy, Arc::new(clock.clone()));
        use EventType::*;
        let first = rules.observe(&ev(BackgroundTaskError, "a", "r1")).unwrap();
        assert_eq!(first.reason, AlertReason::TaskError);
        assert!(first.text.contains("boom") && first.text.contains("r1"), "{}", first.text);
        assert_eq!(rules.observe(&ev(BackgroundTaskError, "a", "r2")), None, "rate limited");
        let streak = rules.observe(&ev(BackgroundTaskError, "a", "r3")).unwrap();
        assert_eq!(streak.reason, AlertReason::ConsecutiveFailures(3));
        assert_eq!(rules.observe(&ev(BackgroundTaskError, "a", "r4")), None, "once per streak, then rate limited");
        // Another agent is limited separately.
        assert!(rules.observe(&ev(BackgroundTaskError, "b", "r1")).is_some());
        clock.advance(chrono::Duration::seconds(61));
        let later = rules.observe(&ev(BackgroundTaskError, "a", "r5")).unwrap();
        assert!(later.text.contains("1 more failure"), "{}", later.text);
        // A success ends the streak: three more failures make a new streak alert.
        assert_eq!(rules.observe(&ev(BackgroundTaskCompleted, "a", "r6")), None);
        clock.advance(chrono::Duration::seconds(61));
        assert_eq!(rules.observe(&ev(BackgroundTaskError, "a", "r7")).unwrap().reason, AlertReason::TaskError);
        assert_eq!(rules.observe(&ev(BackgroundTaskError, "a", "r8")), None);
        assert_eq!(
            rules.observe(&ev(BackgroundTaskError, "a", "r9")).unwrap().reason,
            AlertReason::ConsecutiveFailures(3)
        );
        assert_eq!(rules.observe(&ev(ToolCall, "a", "r9")), None);
    }

    #[test]
    fn every_approval_request_alerts_once_unless_turned_off() {
        let clock = ManualClock::new(Utc::now());
        let data = serde_json::json!({"approval_id": "ap1", "tool": "send_mail", "arguments": "{\"to\":\"a\"}"});
        let asked = |id: &str| pb::Event {
            id: id.into(),
            r#type: EventType::ApprovalRequested.to_pb() as i32,
            agent_id: "a".into(),
            agent_name: "mailer".into(),
            run_id: "r1".into(),
            data: Some(nightshift_events_client::json_to_struct(data.clone())),
            ..Default::default()
        };
        let mut rules = AlertRules::new(AlertPolicy::default(), Arc::new(clock.clone()));
        let alert = rules.observe(&asked("e1")).unwrap();
        assert_eq!(alert.reason, AlertReason::ApprovalRequested);
        assert!(alert.text.contains("*mailer*") && alert.text.contains("send_mail"), "{}", alert.text);
        assert!(alert.text.contains("nightshift approvals approve ap1"), "{}", alert.text);
        assert!(rules.observe(&asked("e2")).is_some(), "not rate limited: each request needs someone");
        assert_eq!(rules.observe(&asked("e2")), None, "the same event again");
        let off = AlertPolicy { on_approval_requested: false, ..AlertPolicy::default() };
        assert_eq!(AlertRules::new(off, Arc::new(clock)).observe(&asked("e3")), None);
    }

    #[test]
    fn an_event_seen_again_neither_alerts_nor_counts() {
        let clock = ManualClock::new(Utc::now());
        let policy = AlertPolicy { consecutive_failures: 2, min_interval: Duration::ZERO, ..Default::default() };
        let mut rules = AlertRules::new(policy, Arc::new(clock));
        let with_id = |id: &str, ty, run| pb::Event { id: id.into(), ..ev(ty, "a", run) };
        use EventType::*;
        assert_eq!(rules.observe(&with_id("e1", BackgroundTaskError, "r1")).unwrap().reason, AlertReason::TaskError);
        assert_eq!(rules.observe(&with_id("e1", BackgroundTaskError, "r1")), None, "the same event again");
        // The streak counted e1 once: the next failure is the second in a row.
        let second = rules.observe(&with_id("e2", BackgroundTaskError, "r2")).unwrap();
        assert_eq!(second.reason, AlertReason::ConsecutiveFailures(2));
        // Ids are forgotten oldest first beyond MAX_SEEN.
        for i in 0..MAX_SEEN {
            rules.observe(&with_id(&format!("c{i}"), BackgroundTaskCompleted, "r"));
        }
        assert!(rules.observe(&with_id("e1", BackgroundTaskError, "r1")).is_some(), "e1 was forgotten");
        assert_eq!(rules.observe(&with_id(&format!("c{}", MAX_SEEN - 1), BackgroundTaskCompleted, "r")), None);
    }
}
