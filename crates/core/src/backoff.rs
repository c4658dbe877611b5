//! The one exponential backoff every retry loop uses: run retries (`RunPolicy`), LLM HTTP
//! retries, event publishing, alert delivery and MCP server restarts.
use std::time::Duration;

/// `base · 2^attempt`, capped at `max` (and never below `base` when `max < base`); saturating,
/// so any `attempt` is safe. `attempt` is 0-based: the first retry waits `base`.
pub fn exponential(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(max.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let ms = |n| exponential(Duration::from_millis(100), n, Duration::from_millis(700)).as_millis();
        assert_eq!((0..5).map(ms).collect::<Vec<_>>(), [100, 200, 400, 700, 700]);
        assert_eq!(ms(u32::MAX), 700);
        // A cap below the base never shortens the base.
        assert_eq!(exponential(Duration::from_secs(10), 3, Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(exponential(Duration::MAX, 5, Duration::MAX), Duration::MAX);
    }
}
