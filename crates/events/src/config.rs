//! Configuration of the `nightshift-events` binary (env prefix `NIGHTSHIFT_EVENTS`).
use std::path::PathBuf;
use std::time::Duration;

use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

use crate::alert::{AlertPolicy, parse_webhook_url};
use crate::log::LogOptions;

/// Settings of the event service role. See the crate documentation for an example file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// `listen`, `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// `memory://`, `redis://HOST:PORT[/DB]` or `nats://HOST:PORT`.
    pub backend_url: String,
    /// Names the stream / keys in the backend (letters, digits, `_`, `-`).
    pub prefix: String,
    /// Retention by count.
    pub max_events: u64,
    /// Retention by age (`7d`, `12h`); empty = no age limit.
    #[serde(with = "nightshift_core::config::optional_duration_text")]
    pub max_age: Option<Duration>,
    /// Window within which a repeated event id is stored once.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub dedup_window: Duration,
    /// Live events a subscriber may fall behind before it is told `Lagged`.
    pub subscriber_buffer: usize,
    /// `[alerts]`: webhook alerts on failed runs (the keys are [`AlertPolicy`]'s). Absent = no
    /// alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertPolicy>,
    /// `[sink]`: every event appended to a JSON-lines file. Absent = no file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
}

/// `[sink]`: the JSON-lines file the role appends every event to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// The file (created if missing, appended to). With a durable backend the position is kept
    /// beside it in `<path>.cursor`.
    pub path: PathBuf,
}

/// A setting that cannot work, by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key (`alerts.webhook_url`).
    pub key: &'static str,
    /// What is wrong with it (never the value of a secret).
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { key, message: message.into() }
}

impl Default for EventsConfig {
    fn default() -> Self {
        let d = LogOptions::default();
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50055"),
            backend_url: "memory://".into(),
            prefix: d.prefix,
            max_events: d.max_events,
            max_age: d.max_age,
            dedup_window: d.dedup_window,
            subscriber_buffer: d.subscriber_buffer,
            alerts: None,
            sink: None,
        }
    }
}

impl EventsConfig {
    /// The log options these settings describe (system clock).
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            prefix: self.prefix.clone(),
            max_events: self.max_events,
            max_age: self.max_age,
            dedup_window: self.dedup_window,
            subscriber_buffer: self.subscriber_buffer,
            ..LogOptions::default()
        }
    }

    /// Checks the `[alerts]` and `[sink]` sections (the log options are checked when the log
    /// opens). The first bad key is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.alerts {
            parse_webhook_url(&a.webhook_url).map_err(|message| invalid("alerts.webhook_url", message))?;
            if !a.on_task_error && a.consecutive_failures == 0 && !a.on_approval_requested {
                return Err(invalid(
                    "alerts.on_task_error",
                    "is false, consecutive_failures is 0 and on_approval_requested is false: no rule could ever \
                     alert (remove [alerts] to turn alerts off)",
                ));
            }
            if a.max_attempts == 0 {
                return Err(invalid("alerts.max_attempts", "must be at least 1"));
            }
            if a.timeout.is_zero() {
                return Err(invalid("alerts.timeout", "must be positive"));
            }
        }
        if let Some(s) = &self.sink
            && s.path.as_os_str().is_empty()
        {
            return Err(invalid("sink.path", "is required when [sink] is present"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_toml() {
        let c: EventsConfig = nightshift_core::config::load(None, "NIGHTSHIFT_EVENTS_TEST_UNSET").unwrap();
        assert_eq!(c, EventsConfig::default());
        assert_eq!(c.server.listen, "127.0.0.1:50055");
        assert_eq!(c.backend_url, "memory://");
        let dir = std::env::temp_dir().join(format!("ns-events-{}.toml", uuid::Uuid::now_v7()));
        std::fs::write(&dir, "backend_url = \"redis://127.0.0.1:6379\"\nmax_age = \"7d\"\ndedup_window = \"5m\"\n")
            .unwrap();
        let c: EventsConfig = nightshift_core::config::load(Some(&dir), "NIGHTSHIFT_EVENTS_TEST_UNSET").unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(c.max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.dedup_window, Duration::from_secs(300));
        assert_eq!(c.log_options().prefix, "nightshift");
    }

    fn load(text: &str) -> Result<EventsConfig, String> {
        let path = std::env::temp_dir().join(format!("ns-events-{}.toml", uuid::Uuid::now_v7()));
        std::fs::write(&path, text).unwrap();
        let loaded = nightshift_core::config::load(Some(&path), "NIGHTSHIFT_EVENTS_TEST_UNSET");
        std::fs::remove_file(&path).unwrap();
        loaded.map_err(|e| e.to_string())
    }

    #[test]
    fn alerts_and_sink_sections() {
        let c = load("").unwrap();
        assert_eq!((c.alerts, c.sink), (None, None), "absent sections are off");
        let text = "[alerts]\nwebhook_url = \"https://hooks.example/T/B/secret\"\nconsecutive_failures = 2\n\
                    min_interval = \"1m\"\nretry_backoff = \"50ms\"\n[sink]\npath = \"/tmp/events.jsonl\"\n";
        let c = load(text).unwrap();
        c.validate().unwrap();
        let p = c.alerts.clone().unwrap();
        assert_eq!(p.webhook_url, "https://hooks.example/T/B/secret");
        assert_eq!((p.on_task_error, p.consecutive_failures), (true, 2));
        assert_eq!((p.min_interval, p.retry_backoff), (Duration::from_secs(60), Duration::from_millis(50)));
        assert_eq!((p.max_attempts, p.timeout), (4, Duration::from_secs(10)), "unset keys keep the defaults");
        assert_eq!(c.sink.as_ref().unwrap().path, PathBuf::from("/tmp/events.jsonl"));
        assert!(!format!("{c:?}").contains("secret") && !format!("{p:?}").contains("secret"), "Debug hides the URL");
        let typo = load("[alerts]\nwebhook = \"http://x\"\n").unwrap_err();
        assert!(typo.contains("webhook"), "{typo}");
        let bad = load("[alerts]\nwebhook_url = \"http://x\"\nmin_interval = \"soon\"\n").unwrap_err();
        assert!(bad.contains("'soon'"), "{bad}");
    }

    #[test]
    fn unusable_sections_name_their_key() {
        for (text, key, needle) in [
            ("[alerts]\n", "alerts.webhook_url", "required"),
            ("[alerts]\nwebhook_url = \"hooks.example/secret\"\n", "alerts.webhook_url", "not a URL"),
            ("[alerts]\nwebhook_url = \"ftp://hooks.example/secret\"\n", "alerts.webhook_url", "http"),
            (
                "[alerts]\nwebhook_url = \"http://h/secret\"\non_task_error = false\nconsecutive_failures = 0\non_approval_requested = false\n",
                "alerts.on_task_error",
                "no rule",
            ),
            ("[alerts]\nwebhook_url = \"http://h/secret\"\nmax_attempts = 0\n", "alerts.max_attempts", "at least 1"),
            ("[sink]\n", "sink.path", "required"),
        ] {
            let err = load(text).unwrap().validate().unwrap_err();
            assert_eq!(err.key, key, "{text}");
            let msg = err.to_string();
            assert!(msg.starts_with(key) && msg.contains(needle), "{text}: {msg}");
            assert!(!msg.contains("secret"), "the URL is not echoed: {msg}");
        }
    }

    #[test]
    fn the_documented_example_loads() {
        // The example file in the crate documentation (lib.rs), so that it cannot drift.
        let docs: Vec<&str> = include_str!("lib.rs").lines().filter_map(|l| l.strip_prefix("//!")).collect();
        let start = docs.iter().position(|l| l.trim() == "```toml").unwrap() + 1;
        let len = docs[start..].iter().position(|l| l.trim() == "```").unwrap();
        let text: String =
            docs[start..start + len].iter().map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l))).collect();
        let c = load(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.backend_url, "redis://127.0.0.1:6379");
        assert_eq!(c.alerts.unwrap().consecutive_failures, 3);
        assert_eq!(c.sink.unwrap().path, PathBuf::from("/var/log/nightshift/events.jsonl"));
    }
}
