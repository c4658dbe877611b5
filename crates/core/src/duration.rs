//! Human durations (`90s`, `5m`, `1h30m`, `250ms`) as users write them in manifests.
//!
//! Parsing keeps a leading sign so that a negative value reaches validation and is refused there
//! with the field's name, instead of failing as an unreadable parse error.
use std::time::Duration;

use prost_types::Duration as PbDuration;

/// A parsed duration with its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration {
    /// True for a value written with a leading `-`.
    pub negative: bool,
    /// Magnitude.
    pub abs: Duration,
}

/// Parses `text` (humantime syntax, optional leading `-`; a bare number means seconds).
pub fn parse_signed(text: &str) -> Result<SignedDuration, String> {
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if body.is_empty() {
        return Err("empty duration".into());
    }
    let abs = if body.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = body.parse().map_err(|_| format!("'{text}' is out of range"))?;
        Duration::from_secs(secs)
    } else {
        humantime::parse_duration(body)
            .map_err(|e| format!("'{text}' is not a duration like 30s, 5m or 1h30m ({e})"))?
    };
    Ok(SignedDuration { negative, abs })
}

/// Converts a signed duration to the proto form (negative values preserved).
pub fn to_pb_signed(d: SignedDuration) -> PbDuration {
    let mut pb = to_pb(d.abs);
    if d.negative {
        pb.seconds = -pb.seconds;
        pb.nanos = -pb.nanos;
    }
    pb
}

/// Converts a non-negative duration to proto.
pub fn to_pb(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a proto duration; `Err` carries a description for negative or malformed values.
pub fn from_pb(pb: &PbDuration) -> Result<Duration, String> {
    if pb.seconds < 0 || pb.nanos < 0 {
        return Err(format!("must not be negative (got {})", format_pb(pb)));
    }
    if pb.nanos >= 1_000_000_000 {
        return Err("nanos must be below 1e9".into());
    }
    Ok(Duration::new(pb.seconds as u64, pb.nanos as u32))
}

/// Formats a duration compactly (`90s` → `1m 30s`), as humantime does.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Formats a proto duration including its sign.
pub fn format_pb(pb: &PbDuration) -> String {
    let neg = pb.seconds < 0 || pb.nanos < 0;
    let abs = Duration::new(pb.seconds.unsigned_abs(), pb.nanos.unsigned_abs());
    if neg { format!("-{}", format(abs)) } else { format(abs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_sign_and_bare_seconds() {
        assert_eq!(parse_signed("60s").unwrap().abs, Duration::from_secs(60));
        assert_eq!(parse_signed("5m").unwrap().abs, Duration::from_secs(300));
        assert_eq!(parse_signed("1h30m").unwrap().abs, Duration::from_secs(5400));
        assert_eq!(parse_signed("250ms").unwrap().abs, Duration::from_millis(250));
        assert_eq!(parse_signed("42").unwrap().abs, Duration::from_secs(42));
        let neg = parse_signed("-5s").unwrap();
        assert!(neg.negative);
        assert_eq!(to_pb_signed(neg).seconds, -5);
        assert!(parse_signed("soon").is_err());
        assert!(parse_signed("").is_err());
    }

    #[test]
    fn proto_round_trip_and_negative_refused() {
        let d = Duration::from_millis(1500);
        assert_eq!(from_pb(&to_pb(d)).unwrap(), d);
        assert!(from_pb(&PbDuration { seconds: -1, nanos: 0 }).is_err());
        assert_eq!(format_pb(&PbDuration { seconds: -5, nanos: 0 }), "-5s");
    }
}
