//! Newtype identifiers, so that an agent id is never passed where a run id is expected.
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an existing id without checking it (ids come from the store or a request
            /// that has been checked with [`Self::parse`]).
            pub fn from_string(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Checks a request field: non-empty, at most 128 printable ASCII characters.
            pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
                if s.is_empty() {
                    return Err(ValidationError::new(field, "is required"));
                }
                if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ValidationError::new(
                        field,
                        "must be 1..=128 printable ASCII characters without spaces",
                    ));
                }
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Server-assigned id of an agent (a UUID v7, so ids sort by creation time).
    AgentId
);
string_id!(
    /// Id of a run. Scheduled runs derive it from (agent, tick); manual runs get a UUID v7.
    RunId
);
string_id!(
    /// Id of a worker process (stable for its lifetime, e.g. `host-pid-random`).
    WorkerId
);

impl AgentId {
    /// A fresh id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }
}

impl RunId {
    /// A fresh id for a run that is not tied to a schedule tick.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// The deterministic id of the run of `agent` for the schedule tick at `tick_ms` (unix ms):
    /// every scheduler replica derives the same id, so a tick fired twice is stored once.
    pub fn for_tick(agent: &AgentId, tick_ms: i64) -> Self {
        Self(format!("{agent}@{tick_ms}"))
    }
}

/// A validated agent name: 1..=63 characters of `[a-z0-9-]`, starting with a letter and not
/// ending with `-` (a DNS label, so it is usable in metrics labels, queue subjects and URLs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentName(String);

impl AgentName {
    /// Validates `s` as an agent name; `field` names it in the error.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_lowercase()
            && !s.ends_with('-')
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else if s.is_empty() {
            Err(ValidationError::new(field, "is required"))
        } else {
            Err(ValidationError::new(
                field,
                format!(
                    "'{s}' is not a valid name: use 1-63 lowercase letters, digits and '-', \
                     starting with a letter"
                ),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(AgentName::parse("name", "system-health").is_ok());
        assert!(AgentName::parse("name", "a").is_ok());
        for bad in ["", "System", "-x", "x-", "9lives", "has space", &"a".repeat(64)] {
            let e = AgentName::parse("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
    }

    #[test]
    fn tick_ids_are_deterministic() {
        let a = AgentId::from_string("a1");
        assert_eq!(RunId::for_tick(&a, 1000), RunId::for_tick(&a, 1000));
        assert_ne!(RunId::for_tick(&a, 1000), RunId::for_tick(&a, 2000));
    }
}
