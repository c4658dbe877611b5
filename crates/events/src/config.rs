//! Configuration of the `nightshift-events` binary (env prefix `NIGHTSHIFT_EVENTS`).
use std::time::Duration;

use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

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
}
