//! Bounded retries of transient HTTP failures (429, 5xx, 408/409, connection errors) with
//! exponential backoff, jitter, and the provider's `Retry-After`.
//!
//! A small loop instead of a retry crate because the wait depends on the failed response
//! (`Retry-After`, `retry-after-ms`), which is the one thing generic retry helpers make awkward.
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;

use crate::LlmError;

/// When and how often a chat call's HTTP request is repeated.
///
/// Only transient transport failures are retried here: HTTP 429,
/// 5xx, 408, 409 and connection errors. Timeouts and invalid answers are returned at once, for
/// the agent loop to decide (it owns the run's deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = never retry). 0 is treated as 1.
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; doubles with every further retry.
    pub initial_backoff: Duration,
    /// Upper bound of the exponential backoff.
    pub max_backoff: Duration,
    /// Longest `Retry-After` that is waited for. A provider asking for more fails the call with
    /// its error instead, so that a worker slot is not parked for minutes (the run's own retry
    /// policy takes over).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, backoff 0.5 s → 1 s → 2 s (equal jitter, capped at 20 s), `Retry-After` up to 60 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retries() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Backoff ceiling before retry number `retry` (0-based): `initial * 2^retry`, capped.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        nightshift_core::backoff::exponential(self.initial_backoff, retry, self.max_backoff)
    }

    /// The wait before retry number `retry` (0-based) after `err`, or `None` when the call must
    /// not be retried (attempts used up, permanent error, or a `Retry-After` beyond
    /// [`Self::max_retry_after`]). `jitter` is a sample of `[0, 1)`.
    ///
    /// Without `Retry-After`, "equal jitter": half the ceiling plus a random part of the other half,
    /// so that workers rate-limited together spread out but still back off. With `Retry-After`
    /// the wait is at least what the provider asked for, plus up to 10 % (max 1 s) of spread.
    pub fn delay(&self, retry: u32, err: &LlmError, jitter: f64) -> Option<Duration> {
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        if !err.is_transient() || retry.saturating_add(1) >= self.max_attempts.max(1) {
            return None;
        }
        match err.retry_after() {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => {
                let spread = (asked / 10).min(Duration::from_secs(1));
                Some(asked + spread.mul_f64(jitter))
            }
            None => {
                let ceiling = self.backoff_ceiling(retry);
                Some(ceiling / 2 + (ceiling / 2).mul_f64(jitter))
            }
        }
    }

    /// Runs `attempt` (given the 0-based attempt number) until it succeeds, fails permanently, or
    /// the policy says stop. Returns the result and the number of attempts made.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> (Result<T, LlmError>, u32)
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut n = 0u32;
        loop {
            let result = attempt(n).await;
            n += 1;
            let err = match result {
                Ok(v) => return (Ok(v), n),
                Err(e) => e,
            };
            // ThreadRng is not Send: sample it here, never across an await.
            let jitter = rand::rng().random::<f64>();
            let Some(wait) = self.delay(n - 1, &err, jitter) else {
                return (Err(err), n);
            };
            // The error text never carries the key (see `error.rs`), so it is safe to log.
            tracing::warn!(call = what, attempt = n, wait_ms = wait.as_millis() as u64, error = %err, "retrying LLM call");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses a `Retry-After` value: delay seconds (`120`, also fractional `1.5`) or an HTTP date
/// (IMF-fixdate, RFC 850 or asctime form), relative to `now`. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v.parse().ok()?;
        // Cap absurd values instead of panicking in Duration::from_secs_f64.
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S GMT").ok().map(|d| d.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(v, "%a %b %e %H:%M:%S %Y").ok().map(|d| d.and_utc()))?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn server() -> LlmError {
        LlmError::Server { status: 503, message: "down".into(), retry_after: None }
    }

    fn limited(secs: u64) -> LlmError {
        LlmError::RateLimited { retry_after: Some(Duration::from_secs(secs)), message: "slow down".into() }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:28:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:29:00 2015", now), Some(Duration::from_secs(120)));
        // In the past: retry now.
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("1.2.3", now), None);
    }

    #[test]
    fn exponential_backoff_with_equal_jitter_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            ..RetryPolicy::default()
        };
        let ceilings: Vec<_> = (0..5).map(|r| p.backoff_ceiling(r).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 700, 700]);
        assert_eq!(p.delay(2, &server(), 0.0), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(2, &server(), 0.5), Some(Duration::from_millis(300)));
        assert!(p.delay(2, &server(), 0.999).unwrap() < Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn attempts_are_bounded_and_permanent_errors_not_retried() {
        let p = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        assert!(p.delay(0, &server(), 0.0).is_some());
        assert!(p.delay(1, &server(), 0.0).is_some());
        assert!(p.delay(2, &server(), 0.0).is_none());
        for e in [
            LlmError::BadRequest { status: 400, message: String::new() },
            LlmError::Auth { status: 401, message: String::new() },
            LlmError::Timeout(Duration::from_secs(1)),
            LlmError::InvalidResponse(String::new()),
            LlmError::Config(String::new()),
        ] {
            assert_eq!(p.delay(0, &e, 0.0), None, "{e}");
        }
        assert_eq!(RetryPolicy::no_retries().delay(0, &server(), 0.0), None);
        assert_eq!(RetryPolicy { max_attempts: 0, ..RetryPolicy::default() }.delay(0, &server(), 0.0), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit() {
        let p = RetryPolicy { max_retry_after: Duration::from_secs(30), ..RetryPolicy::default() };
        assert_eq!(p.delay(0, &limited(5), 0.0), Some(Duration::from_secs(5)));
        assert_eq!(p.delay(0, &limited(5), 1.0), Some(Duration::from_millis(5500)));
        assert_eq!(p.delay(0, &limited(20), 1.0), Some(Duration::from_secs(21)));
        assert_eq!(p.delay(0, &limited(31), 0.0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_transient_errors_then_succeeds() {
        let p = RetryPolicy { max_attempts: 5, ..RetryPolicy::default() };
        let (r, attempts) = p
            .run("test", |n| async move {
                match n {
                    0 => Err(limited(2)),
                    1 => Err(server()),
                    _ => Ok(n),
                }
            })
            .await;
        assert_eq!(r, Ok(2));
        assert_eq!(attempts, 3);

        let (r, attempts) = p.run("test", |_| async { Err::<(), _>(server()) }).await;
        assert_eq!(r, Err(server()));
        assert_eq!(attempts, 5);

        let (r, attempts) =
            p.run("test", |_| async { Err::<(), _>(LlmError::BadRequest { status: 400, message: "no".into() }) }).await;
        assert!(r.is_err());
        assert_eq!(attempts, 1);
    }
}
