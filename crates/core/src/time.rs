//! Conversions between chrono instants and `google.protobuf.Timestamp`, and unix milliseconds.
use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// Converts an instant to a proto timestamp.
pub fn to_pb(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// Converts a proto timestamp; `None` if it is out of chrono's range or malformed.
pub fn from_pb(ts: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Utc.timestamp_opt(ts.seconds, ts.nanos as u32).single()
}

/// Unix milliseconds (the storage representation of instants).
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// From unix milliseconds; clamps values outside chrono's range to the epoch.
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Parses an RFC 3339 instant such as `2026-01-01T08:00:00Z` or `...+01:00`.
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{s}' is not an RFC 3339 instant like 2026-01-01T08:00:00Z ({e})"))
}
