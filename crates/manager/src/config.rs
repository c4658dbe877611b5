//! Manager configuration (`config/manager.toml`, env prefix `NIGHTSHIFT_MANAGER`).
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the manager role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Lease granted when StartRun does not ask for one.
    #[serde(with = "humantime_secs")]
    pub default_lease_ttl: Duration,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            database_url: "sqlite://nightshift.db".into(),
            default_lease_ttl: Duration::from_secs(30),
            log_format: "text".into(),
        }
    }
}

/// Durations as humantime text (`30s`) in TOML and env.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
