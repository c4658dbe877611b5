//! When an agent runs: interval, cron in an IANA time zone, once, or manual only.
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::error::{Errors, ValidationError};
use crate::{AgentId, duration, pb, time};

/// A schedule in a few words (`every 1m`, `cron 0 9 * * * (Europe/Berlin)`, `manual`), for
/// tables and pages.
pub fn summary(s: Option<&pb::ScheduleSpec>) -> String {
    use pb::schedule_spec::Trigger as T;
    match s.and_then(|s| s.trigger.as_ref()) {
        Some(T::Interval(d)) => format!("every {}", duration::format_pb(d)),
        Some(T::Cron(c)) => {
            let tz = if c.timezone.is_empty() { "UTC" } else { &c.timezone };
            format!("cron {} ({tz})", c.expression)
        }
        Some(T::OnceAt(t)) => match time::from_pb(t) {
            Some(t) => format!("once at {}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => "once".into(),
        },
        Some(T::Manual(_)) | None => "manual".into(),
    }
}

/// The shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound of ticks fired by [`MisfirePolicy::CatchUp`].
pub const DEFAULT_MAX_CATCH_UP: u32 = 10;

/// A validated schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// What produces ticks.
    pub trigger: Trigger,
    /// Deterministic per-agent delay in `[0, jitter)` added to each tick.
    pub jitter: Duration,
    /// No tick before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No tick after this instant.
    pub end_at: Option<DateTime<Utc>>,
    /// Behaviour after downtime.
    pub misfire: MisfirePolicy,
}

/// FNV-1a offset basis, varied: the seed of [`Schedule::phase`].
const PHASE_SEED: u64 = 0x6c62_272e_07bb_0142;

/// FNV-1a of `bytes` from `seed`: a stable hash (std's hasher may change between releases, and
/// every replica and release must derive the same phases, jitters and shards).
pub fn fnv1a(bytes: &[u8], mut seed: u64) -> u64 {
    for b in bytes {
        seed ^= u64::from(*b);
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    seed
}

/// The source of ticks.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Every `interval`, on a grid anchored at `start_at` or else at the unix epoch shifted by the
    /// agent's [`Schedule::phase`], so that every scheduler replica computes the same ticks.
    Interval(Duration),
    /// A cron expression in a time zone.
    Cron(Box<CronSpec>),
    /// Once at an instant.
    Once(DateTime<Utc>),
    /// Never on its own.
    Manual,
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expression: String,
    timezone: Tz,
    cron: Cron,
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.timezone == other.timezone
    }
}

impl CronSpec {
    /// Parses a 5-field (minute precision) or 6-field (leading seconds) expression.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, ValidationError> {
        let expr = expression.trim();
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ValidationError::new(
                "schedule.cron",
                format!("'{expr}' has {fields} fields; expected 5 (min hour dom mon dow) or 6 (with leading seconds)"),
            ));
        }
        let timezone = parse_timezone(timezone);
        let cron =
            CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build().parse(expr).map_err(
                |e| ValidationError::new("schedule.cron", format!("'{expr}' is not a valid cron expression: {e}")),
            )?;
        Ok(Self { expression: expr.to_owned(), timezone: timezone?, cron })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first match strictly after `after`.
    ///
    /// DST rule: a local time that does not exist (spring forward) fires at the next valid
    /// instant; a local time that occurs twice (fall back) fires once, at its first occurrence.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::{LocalResult, TimeZone};
        let mut from = after.with_timezone(&self.timezone);
        // Bounded: at most one skipped duplicate per candidate in practice.
        for _ in 0..1000 {
            let t = self.cron.find_next_occurrence(&from, false).ok()?;
            match self.timezone.from_local_datetime(&t.naive_local()) {
                LocalResult::Ambiguous(first, _) if first != t => from = t,
                _ => return Some(t.with_timezone(&Utc)),
            }
        }
        None
    }
}

/// Parses an IANA time zone name (empty = UTC).
pub fn parse_timezone(name: &str) -> Result<Tz, ValidationError> {
    let tz_name = if name.trim().is_empty() { "UTC" } else { name.trim() };
    tz_name.parse().map_err(|_| {
        ValidationError::new(
            "schedule.timezone",
            format!("'{tz_name}' is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"),
        )
    })
}

/// What the scheduler does with ticks missed while it was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(Default)]
pub enum MisfirePolicy {
    /// Fire once for all missed ticks.
    #[default]
    RunOnce,
    /// Fire none of them.
    Skip,
    /// Fire each missed tick, at most `max` of them.
    CatchUp {
        /// Upper bound of ticks fired.
        max: u32,
    },
}

impl Schedule {
    /// A manual-only schedule.
    pub fn manual() -> Self {
        Self {
            trigger: Trigger::Manual,
            jitter: Duration::ZERO,
            start_at: None,
            end_at: None,
            misfire: MisfirePolicy::RunOnce,
        }
    }

    /// Where `agent`'s ticks sit within an interval that has no `start_at`: a stable offset in
    /// `[0, interval)` derived from the agent's id (FNV-1a, the same on every replica and in every
    /// release). Agents with the same interval are spread over it instead of all falling due at
    /// the same instant — 500 agents at `interval: 1s` would otherwise be due together at every
    /// whole second, and the last of them would start only after the other 499. Zero for other
    /// triggers and for an interval anchored by `start_at` (the user chose its alignment).
    pub fn phase(&self, agent: &AgentId) -> Duration {
        match (&self.trigger, self.start_at) {
            (Trigger::Interval(every), None) => {
                let step = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
                // A seed of its own: the scheduler shards agents by FNV-1a of the id too, and a
                // shared hash would give the agents of one shard related phases.
                Duration::from_millis(fnv1a(agent.as_str().as_bytes(), PHASE_SEED) % step)
            }
            _ => Duration::ZERO,
        }
    }

    /// The first tick of `agent`'s schedule strictly after `after` (without jitter):
    /// [`Schedule::next_after`] on the grid shifted by the agent's [`Schedule::phase`].
    pub fn next_tick_of(&self, agent: &AgentId, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let phase = chrono::Duration::from_std(self.phase(agent)).unwrap_or_default();
        let next = self.next_after(after - phase)? + phase;
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// The first tick strictly after `after` (without jitter and without an agent's phase),
    /// honouring start/end.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = match self.start_at {
            Some(s) if s > after => s - chrono::Duration::milliseconds(1),
            _ => after,
        };
        let next = match &self.trigger {
            Trigger::Manual => None,
            Trigger::Once(at) => (*at > after).then_some(*at),
            Trigger::Cron(c) => c.next_after(after),
            Trigger::Interval(every) => {
                let step = i64::try_from(every.as_millis()).ok()?.max(1);
                let anchor = self.start_at.map(time::to_millis).unwrap_or(0);
                let since = time::to_millis(after) - anchor;
                let k = since.div_euclid(step) + 1;
                Some(time::from_millis(anchor + k * step))
            }
        }?;
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Validates the proto form; errors name `schedule.*` fields.
    pub fn from_pb(pb: Option<&pb::ScheduleSpec>) -> Result<Self, Vec<ValidationError>> {
        let Some(pb) = pb else {
            return Ok(Self::manual());
        };
        let mut errs = Errors::default();
        use pb::schedule_spec::Trigger as T;
        let trigger = match &pb.trigger {
            None => {
                errs.push("schedule", "set one of interval, cron, once_at or manual");
                None
            }
            Some(T::Manual(false)) => {
                errs.push("schedule.manual", "must be true when given (omit it for other triggers)");
                None
            }
            Some(T::Manual(true)) => Some(Trigger::Manual),
            Some(T::Interval(d)) => match duration::from_pb(d) {
                Err(_) => {
                    errs.push("schedule.interval", format!("must be positive (got {})", duration::format_pb(d)));
                    None
                }
                Ok(d) if d < MIN_INTERVAL => {
                    errs.push("schedule.interval", format!("must be at least 1s (got {})", duration::format(d)));
                    None
                }
                Ok(d) => Some(Trigger::Interval(d)),
            },
            Some(T::Cron(c)) => {
                let parsed = CronSpec::parse(&c.expression, &c.timezone);
                // Report a bad time zone even when the expression is bad too.
                if let (Err(e), Err(tz)) = (&parsed, parse_timezone(&c.timezone))
                    && e.field != tz.field
                {
                    errs.push(tz.field, tz.message);
                }
                errs.take(parsed).map(|c| Trigger::Cron(Box::new(c)))
            }
            Some(T::OnceAt(ts)) => match time::from_pb(ts) {
                Some(t) => Some(Trigger::Once(t)),
                None => {
                    errs.push("schedule.once_at", "is not a valid timestamp");
                    None
                }
            },
        };
        let jitter = match pb.jitter.as_ref().map(duration::from_pb).transpose() {
            Ok(j) => j.unwrap_or_default(),
            Err(e) => {
                errs.push("schedule.jitter", e);
                Duration::ZERO
            }
        };
        if let (Some(Trigger::Interval(every)), true) = (&trigger, !jitter.is_zero())
            && jitter >= *every
        {
            errs.push("schedule.jitter", format!("must be shorter than the interval ({})", duration::format(*every)));
        }
        let mut instant = |field: &str, ts: &Option<prost_types::Timestamp>| {
            ts.as_ref().and_then(|t| {
                let v = time::from_pb(t);
                if v.is_none() {
                    errs.push(field, "is not a valid timestamp");
                }
                v
            })
        };
        let start_at = instant("schedule.start_at", &pb.start_at);
        let end_at = instant("schedule.end_at", &pb.end_at);
        if let (Some(s), Some(e)) = (start_at, end_at)
            && e <= s
        {
            errs.push("schedule.end_at", "must be after start_at");
        }
        let misfire = match pb.misfire() {
            pb::MisfirePolicy::Unspecified | pb::MisfirePolicy::RunOnce => MisfirePolicy::RunOnce,
            pb::MisfirePolicy::Skip => MisfirePolicy::Skip,
            pb::MisfirePolicy::CatchUp => MisfirePolicy::CatchUp {
                max: if pb.max_catch_up == 0 { DEFAULT_MAX_CATCH_UP } else { pb.max_catch_up },
            },
        };
        if pb.max_catch_up > 1000 {
            errs.push("schedule.max_catch_up", "must be at most 1000");
        }
        match (trigger, errs.is_empty()) {
            (Some(trigger), true) => Ok(Self { trigger, jitter, start_at, end_at, misfire }),
            _ => Err(errs.into_vec()),
        }
    }

    /// The proto form (normalized: defaults spelled out).
    pub fn to_pb(&self) -> pb::ScheduleSpec {
        use pb::schedule_spec::Trigger as T;
        let trigger = match &self.trigger {
            Trigger::Interval(d) => T::Interval(duration::to_pb(*d)),
            Trigger::Cron(c) => {
                T::Cron(pb::CronSchedule { expression: c.expression.clone(), timezone: c.timezone.name().to_owned() })
            }
            Trigger::Once(t) => T::OnceAt(time::to_pb(*t)),
            Trigger::Manual => T::Manual(true),
        };
        let (misfire, max_catch_up) = match self.misfire {
            MisfirePolicy::RunOnce => (pb::MisfirePolicy::RunOnce, 0),
            MisfirePolicy::Skip => (pb::MisfirePolicy::Skip, 0),
            MisfirePolicy::CatchUp { max } => (pb::MisfirePolicy::CatchUp, max),
        };
        pb::ScheduleSpec {
            trigger: Some(trigger),
            jitter: (!self.jitter.is_zero()).then(|| duration::to_pb(self.jitter)),
            start_at: self.start_at.map(time::to_pb),
            end_at: self.end_at.map(time::to_pb),
            misfire: misfire as i32,
            max_catch_up,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn interval(secs: i64) -> pb::ScheduleSpec {
        pb::ScheduleSpec {
            trigger: Some(pb::schedule_spec::Trigger::Interval(prost_types::Duration { seconds: secs, nanos: 0 })),
            ..Default::default()
        }
    }

    fn cron(expr: &str, tz: &str) -> pb::ScheduleSpec {
        pb::ScheduleSpec {
            trigger: Some(pb::schedule_spec::Trigger::Cron(pb::CronSchedule {
                expression: expr.into(),
                timezone: tz.into(),
            })),
            ..Default::default()
        }
    }

    fn field_of(r: Result<Schedule, Vec<ValidationError>>) -> String {
        r.unwrap_err()[0].field.clone()
    }

    #[test]
    fn invalid_schedules_name_their_field() {
        assert_eq!(field_of(Schedule::from_pb(Some(&interval(-5)))), "schedule.interval");
        assert_eq!(field_of(Schedule::from_pb(Some(&interval(0)))), "schedule.interval");
        assert_eq!(field_of(Schedule::from_pb(Some(&cron("61 * * * *", "UTC")))), "schedule.cron");
        assert_eq!(field_of(Schedule::from_pb(Some(&cron("* * *", "UTC")))), "schedule.cron");
        assert_eq!(field_of(Schedule::from_pb(Some(&cron("*/5 * * * *", "Mars/Olympus")))), "schedule.timezone");
        assert_eq!(field_of(Schedule::from_pb(Some(&pb::ScheduleSpec::default()))), "schedule");
    }

    #[test]
    fn interval_ticks_are_on_a_grid() {
        let s = Schedule::from_pb(Some(&interval(60))).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 30).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 1, 0).unwrap()));
        let on_tick = Utc.with_ymd_and_hms(2026, 1, 1, 10, 1, 0).unwrap();
        assert_eq!(s.next_after(on_tick), Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 2, 0).unwrap()));
    }

    #[test]
    fn cron_in_time_zone_and_six_fields() {
        let s = Schedule::from_pb(Some(&cron("0 9 * * *", "Europe/Berlin"))).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
        // 09:00 CET = 08:00 UTC in winter
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap()));
        let six = Schedule::from_pb(Some(&cron("*/10 * * * * *", ""))).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 1).unwrap();
        assert_eq!(six.next_after(t), Some(Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 10).unwrap()));
    }

    fn cron_ticks(expr: &str, tz: &str, from: DateTime<Utc>, n: usize) -> Vec<String> {
        let s = CronSpec::parse(expr, tz).unwrap();
        let mut t = from;
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.format("%m-%d %H:%M").to_string()
            })
            .collect()
    }

    #[test]
    fn dst_spring_forward_fires_at_next_valid_instant() {
        // Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist → 03:00 CEST = 01:00 UTC.
        let from = Utc.with_ymd_and_hms(2026, 3, 28, 0, 0, 0).unwrap();
        assert_eq!(cron_ticks("30 2 * * *", "Europe/Berlin", from, 3), ["03-28 01:30", "03-29 01:00", "03-30 00:30"]);
        // New York 2026-03-08: 02:30 does not exist → 03:00 EDT = 07:00 UTC.
        let from = Utc.with_ymd_and_hms(2026, 3, 7, 0, 0, 0).unwrap();
        assert_eq!(
            cron_ticks("30 2 * * *", "America/New_York", from, 3),
            ["03-07 07:30", "03-08 07:00", "03-09 06:30"]
        );
    }

    #[test]
    fn dst_fall_back_fires_a_repeated_local_time_once() {
        // Berlin 2026-10-25: 02:00-03:00 happens twice; 02:30 fires at its first occurrence only.
        let from = Utc.with_ymd_and_hms(2026, 10, 24, 0, 0, 0).unwrap();
        assert_eq!(cron_ticks("30 2 * * *", "Europe/Berlin", from, 3), ["10-24 00:30", "10-25 00:30", "10-26 01:30"]);
        // Every 30 minutes through the repeated hour: 02:00 and 02:30 fire once each.
        let from = Utc.with_ymd_and_hms(2026, 10, 24, 23, 50, 0).unwrap();
        assert_eq!(
            cron_ticks("*/30 * * * *", "Europe/Berlin", from, 4),
            ["10-25 00:00", "10-25 00:30", "10-25 02:00", "10-25 02:30"]
        );
        // New York 2026-11-01: 01:30 EDT (05:30 UTC) fires, 01:30 EST (06:30 UTC) does not.
        let from = Utc.with_ymd_and_hms(2026, 10, 31, 0, 0, 0).unwrap();
        assert_eq!(
            cron_ticks("30 1 * * *", "America/New_York", from, 3),
            ["10-31 05:30", "11-01 05:30", "11-02 06:30"]
        );
    }

    #[test]
    fn proto_round_trip() {
        for p in [interval(30), cron("*/5 * * * *", "America/New_York")] {
            let s = Schedule::from_pb(Some(&p)).unwrap();
            assert_eq!(Schedule::from_pb(Some(&s.to_pb())).unwrap(), s);
        }
    }
}
