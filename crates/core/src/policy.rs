//! Run policies: overlap, retries and backoff, limits.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pb;

/// What happens when a run is due while another run of the same agent is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Record the new run as skipped (the seed's "Agent running? → skip").
    #[default]
    Skip,
    /// Keep at most one waiting run; further ones are skipped.
    BufferOne,
    /// Queue every run; they start one after another.
    BufferAll,
    /// Cancel the running run and start the new one.
    CancelOther,
    /// Run concurrently.
    AllowAll,
}

/// How the delay between retries grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Always `retry_delay`.
    #[default]
    Fixed,
    /// `retry_delay * 2^n`, capped at `max_delay`.
    Exponential,
    /// `retry_delay * (n + 1)`, capped at `max_delay`.
    Linear,
}

/// Retries, backoff and limits of an agent's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPolicy {
    /// Overlap behaviour.
    pub overlap: OverlapPolicy,
    /// Retries after a failed attempt (0 = none).
    pub max_retries: u32,
    /// Base delay between attempts.
    pub retry_delay: Duration,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// Cap of the delay.
    pub max_delay: Duration,
    /// Wall-clock limit of one attempt.
    pub timeout: Duration,
    /// Maximum LLM turns in one attempt.
    pub max_steps: u32,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            overlap: OverlapPolicy::Skip,
            max_retries: 3,
            retry_delay: Duration::from_secs(10),
            backoff: Backoff::Fixed,
            max_delay: Duration::from_secs(300),
            timeout: Duration::from_secs(300),
            max_steps: 20,
        }
    }
}

impl RunPolicy {
    /// Delay before retry number `retry` (0-based: the first retry is `retry = 0`).
    pub fn retry_delay_for(&self, retry: u32) -> Duration {
        let d = match self.backoff {
            Backoff::Fixed => self.retry_delay,
            Backoff::Linear => self.retry_delay.saturating_mul(retry.saturating_add(1)),
            Backoff::Exponential => crate::backoff::exponential(self.retry_delay, retry, self.max_delay),
        };
        d.min(self.max_delay.max(self.retry_delay))
    }
}

impl OverlapPolicy {
    /// From the proto enum (`UNSPECIFIED` = default).
    pub fn from_pb(v: pb::OverlapPolicy) -> Self {
        match v {
            pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip => Self::Skip,
            pb::OverlapPolicy::BufferOne => Self::BufferOne,
            pb::OverlapPolicy::BufferAll => Self::BufferAll,
            pb::OverlapPolicy::CancelOther => Self::CancelOther,
            pb::OverlapPolicy::AllowAll => Self::AllowAll,
        }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::OverlapPolicy {
        match self {
            Self::Skip => pb::OverlapPolicy::Skip,
            Self::BufferOne => pb::OverlapPolicy::BufferOne,
            Self::BufferAll => pb::OverlapPolicy::BufferAll,
            Self::CancelOther => pb::OverlapPolicy::CancelOther,
            Self::AllowAll => pb::OverlapPolicy::AllowAll,
        }
    }
}

impl Backoff {
    /// From the proto enum (`UNSPECIFIED` = default).
    pub fn from_pb(v: pb::BackoffKind) -> Self {
        match v {
            pb::BackoffKind::Unspecified | pb::BackoffKind::Fixed => Self::Fixed,
            pb::BackoffKind::Exponential => Self::Exponential,
            pb::BackoffKind::Linear => Self::Linear,
        }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::BackoffKind {
        match self {
            Self::Fixed => pb::BackoffKind::Fixed,
            Self::Exponential => pb::BackoffKind::Exponential,
            Self::Linear => pb::BackoffKind::Linear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut p = RunPolicy {
            retry_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            backoff: Backoff::Exponential,
            ..RunPolicy::default()
        };
        let secs: Vec<u64> = (0..5).map(|n| p.retry_delay_for(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
        assert_eq!(p.retry_delay_for(u32::MAX).as_secs(), 60);
        p.backoff = Backoff::Linear;
        assert_eq!(p.retry_delay_for(2).as_secs(), 30);
        p.backoff = Backoff::Fixed;
        assert_eq!(p.retry_delay_for(7).as_secs(), 10);
    }
}
