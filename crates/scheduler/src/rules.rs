//! Pure scheduling rules: which ticks fire now, which are missed, when the next one is due.
//!
//! Everything here takes `now` as an argument (the service injects a clock), so the rules are
//! unit-tested without sleeping.
//!
//! Vocabulary: a **tick** is a nominal instant produced by the schedule (it names the run:
//! `RunId::for_tick(agent, tick)`); its **fire time** is the tick plus the agent's deterministic
//! jitter. A due tick is **late** (a misfire) when it is more than `grace` past its fire time —
//! the scheduler was down, or paused by overload. Late ticks follow the misfire policy; ticks
//! within the grace period always fire, so a replica taking over a shard after a failover (which
//! takes less than the grace period) fires every tick of the gap exactly once.
use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, MisfirePolicy, Schedule, Trigger};

/// Default misfire grace: longer than a shard lease, so that failovers lose no tick.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Due ticks examined at most per plan (a 1 s interval after a day of downtime is 86,400).
const MAX_SCAN: usize = 1_000_000;

/// A tick and the time it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick {
    /// When it fires (tick + jitter).
    pub fire_at: DateTime<Utc>,
    /// The nominal instant (names the run).
    pub at: DateTime<Utc>,
}

/// What to do now for one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Ticks to fire now, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Late ticks not fired (misfire policy).
    pub missed: u64,
    /// The next tick after everything considered (`None`: the schedule is finished or manual).
    pub next: Option<Tick>,
    /// The newest due tick considered (fired or missed): the schedule's new progress mark.
    pub handled_until: Option<DateTime<Utc>>,
}

pub(crate) use nightshift_core::schedule::fnv1a;

/// The deterministic jitter of `agent` for the tick `at`, in `[0, schedule.jitter)`.
pub fn jitter(schedule: &Schedule, agent: &AgentId, at: DateTime<Utc>) -> Duration {
    let span = u64::try_from(schedule.jitter.as_millis()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    let h = fnv1a(&at.timestamp_millis().to_le_bytes(), fnv1a(agent.as_str().as_bytes(), 0xcbf2_9ce4_8422_2325));
    Duration::from_millis(h % span)
}

/// The first tick strictly after `after`.
pub fn next_tick(schedule: &Schedule, agent: &AgentId, after: DateTime<Utc>) -> Option<Tick> {
    let at = schedule.next_tick_of(agent, after)?;
    let fire_at = at + chrono::Duration::from_std(jitter(schedule, agent, at)).unwrap_or_default();
    Some(Tick { fire_at, at })
}

/// Plans a schedule whose last handled tick is `last` (or its anchor: registration/resume time).
pub fn plan(schedule: &Schedule, agent: &AgentId, last: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> Plan {
    if matches!(schedule.trigger, Trigger::Manual) {
        return Plan::default();
    }
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let keep = match schedule.misfire {
        MisfirePolicy::CatchUp { max } => max as usize,
        _ => 1,
    };
    // Late ticks: only the newest `keep` are remembered, the rest are counted.
    let mut late: VecDeque<DateTime<Utc>> = VecDeque::new();
    let mut late_count = 0u64;
    let mut on_time = Vec::new();
    let mut cursor = last;
    let mut next = None;
    for _ in 0..MAX_SCAN {
        let Some(t) = next_tick(schedule, agent, cursor) else { break };
        if t.fire_at > now {
            next = Some(t);
            break;
        }
        if now - t.fire_at > grace {
            late_count += 1;
            late.push_back(t.at);
            if late.len() > keep {
                late.pop_front();
            }
        } else {
            on_time.push(t.at);
        }
        cursor = t.at;
    }
    if next.is_none() {
        // The scan limit was hit (or the schedule ended): continue after the newest tick seen.
        next = next_tick(schedule, agent, cursor).filter(|t| t.fire_at > now);
    }
    let (mut fire, missed): (Vec<_>, u64) = match schedule.misfire {
        MisfirePolicy::Skip => (Vec::new(), late_count),
        MisfirePolicy::RunOnce if !on_time.is_empty() => (Vec::new(), late_count),
        MisfirePolicy::RunOnce => (late.iter().copied().collect(), late_count.saturating_sub(late.len() as u64)),
        MisfirePolicy::CatchUp { .. } => (late.iter().copied().collect(), late_count - late.len() as u64),
    };
    fire.extend(on_time);
    let handled_until = (cursor > last).then_some(cursor);
    Plan { fire, missed, next, handled_until }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use nightshift_core::pb;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, h, m, s).unwrap()
    }

    /// An interval anchored at midnight (`start_at`), so its ticks sit on whole intervals; see
    /// `intervals_without_start_at_are_spread_by_agent` for the grid of one without.
    fn every(secs: i64, misfire: pb::MisfirePolicy, max_catch_up: u32, jitter_secs: i64) -> Schedule {
        Schedule::from_pb(Some(&pb::ScheduleSpec {
            trigger: Some(pb::schedule_spec::Trigger::Interval(prost_types::Duration { seconds: secs, nanos: 0 })),
            misfire: misfire as i32,
            max_catch_up,
            jitter: (jitter_secs > 0).then_some(prost_types::Duration { seconds: jitter_secs, nanos: 0 }),
            start_at: Some(prost_types::Timestamp { seconds: at(0, 0, 0).timestamp(), nanos: 0 }),
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn intervals_without_start_at_are_spread_by_agent() {
        let mut s = every(1, pb::MisfirePolicy::RunOnce, 0, 0);
        s.start_at = None;
        let agents: Vec<AgentId> = (0..500).map(|i| AgentId::from_string(format!("agent-{i}"))).collect();
        let phases: std::collections::BTreeSet<Duration> = agents.iter().map(|a| s.phase(a)).collect();
        assert!(phases.iter().all(|p| *p < Duration::from_secs(1)), "within the interval");
        // 500 agents over 1,000 ms: nearly all at an instant of their own, none due together in bulk.
        assert!(phases.len() > 350, "phases spread: {} distinct", phases.len());
        for a in &agents[..20] {
            let phase = chrono::Duration::from_std(s.phase(a)).unwrap();
            let t = next_tick(&s, a, at(10, 0, 0)).unwrap().at;
            assert_eq!(t, at(10, 0, 0) + phase + chrono::Duration::seconds(i64::from(phase.is_zero())), "{a}");
            // The next tick is one interval later: the grid is only shifted.
            assert_eq!(next_tick(&s, a, t).unwrap().at, t + chrono::Duration::seconds(1));
        }
        // Stable across releases: a changed hash would move every deployed schedule's ticks.
        assert_eq!(s.phase(&agent()), Duration::from_millis(PHASE_OF_AGENT_1));
        // Anchored by start_at, or not an interval: no phase.
        assert_eq!(every(1, pb::MisfirePolicy::RunOnce, 0, 0).phase(&agent()), Duration::ZERO);
        assert_eq!(Schedule::manual().phase(&agent()), Duration::ZERO);
        // end_at bounds the shifted ticks.
        s.end_at = Some(at(10, 0, 0) + chrono::Duration::from_std(s.phase(&agent())).unwrap());
        let before_end = s.end_at.unwrap() - chrono::Duration::seconds(1);
        assert_eq!(next_tick(&s, &agent(), before_end).map(|t| t.at), s.end_at, "the last tick is end_at itself");
        assert_eq!(next_tick(&s, &agent(), s.end_at.unwrap()), None);
    }

    fn agent() -> AgentId {
        AgentId::from_string("agent-1")
    }

    /// `agent-1`'s phase in a 1 s interval.
    const PHASE_OF_AGENT_1: u64 = 141;

    #[test]
    fn on_time_tick_fires_once_and_next_follows() {
        let s = every(10, pb::MisfirePolicy::RunOnce, 0, 0);
        let p = plan(&s, &agent(), at(10, 0, 0), at(10, 0, 10), DEFAULT_GRACE);
        assert_eq!(p.fire, [at(10, 0, 10)]);
        assert_eq!(p.missed, 0);
        assert_eq!(p.next.unwrap().at, at(10, 0, 20));
        let p = plan(&s, &agent(), at(10, 0, 10), at(10, 0, 15), DEFAULT_GRACE);
        assert!(p.fire.is_empty(), "nothing is due between ticks");
    }

    #[test]
    fn ticks_within_grace_all_fire_after_a_failover() {
        let s = every(1, pb::MisfirePolicy::Skip, 0, 0);
        // The owner died at 10:00:00; a new owner plans at 10:00:12, inside the 30 s grace.
        let p = plan(&s, &agent(), at(10, 0, 0), at(10, 0, 12), DEFAULT_GRACE);
        assert_eq!(p.fire.len(), 12);
        assert_eq!(p.fire.first(), Some(&at(10, 0, 1)));
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn misfire_run_once_fires_the_latest_late_tick() {
        let s = every(60, pb::MisfirePolicy::RunOnce, 0, 0);
        // Down from 10:00 to 11:00:30: ticks 10:01..=11:00 are late except none within grace of 11:00:30?
        let p = plan(&s, &agent(), at(10, 0, 0), at(11, 0, 40), Duration::from_secs(5));
        assert_eq!(p.fire, [at(11, 0, 0)]);
        assert_eq!(p.missed, 59);
        assert_eq!(p.next.unwrap().at, at(11, 1, 0));
    }

    #[test]
    fn misfire_skip_fires_nothing_late() {
        let s = every(60, pb::MisfirePolicy::Skip, 0, 0);
        let p = plan(&s, &agent(), at(10, 0, 0), at(11, 0, 40), Duration::from_secs(5));
        assert!(p.fire.is_empty());
        assert_eq!(p.missed, 60);
    }

    #[test]
    fn misfire_catch_up_is_bounded() {
        let s = every(60, pb::MisfirePolicy::CatchUp, 3, 0);
        let p = plan(&s, &agent(), at(10, 0, 0), at(11, 0, 40), Duration::from_secs(5));
        assert_eq!(p.fire, [at(10, 58, 0), at(10, 59, 0), at(11, 0, 0)]);
        assert_eq!(p.missed, 57);
    }

    #[test]
    fn late_and_on_time_together() {
        let s = every(10, pb::MisfirePolicy::RunOnce, 0, 0);
        // Late: 10:00:10, :20; on time: :30 (now :34, grace 5 s) → run_once is satisfied by :30.
        let p = plan(&s, &agent(), at(10, 0, 0), at(10, 0, 34), Duration::from_secs(5));
        assert_eq!(p.fire, [at(10, 0, 30)]);
        assert_eq!(p.missed, 2);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let s = every(60, pb::MisfirePolicy::RunOnce, 0, 5);
        let a = agent();
        let mut distinct = std::collections::BTreeSet::new();
        for m in 0..50 {
            let t = at(10, m, 0);
            let j = jitter(&s, &a, t);
            assert!(j < Duration::from_secs(5));
            assert_eq!(j, jitter(&s, &a, t), "same input, same jitter");
            distinct.insert(j);
        }
        assert!(distinct.len() > 10, "jitter spreads ticks: {distinct:?}");
        // A jittered tick is not due before its fire time.
        let t = next_tick(&s, &a, at(10, 0, 0)).unwrap();
        let before = plan(&s, &a, at(10, 0, 0), t.fire_at - chrono::Duration::milliseconds(1), DEFAULT_GRACE);
        assert!(before.fire.is_empty());
        let after = plan(&s, &a, at(10, 0, 0), t.fire_at, DEFAULT_GRACE);
        assert_eq!(after.fire, [t.at]);
    }

    #[test]
    fn once_manual_and_end_at() {
        let once = Schedule::from_pb(Some(&pb::ScheduleSpec {
            trigger: Some(pb::schedule_spec::Trigger::OnceAt(prost_types::Timestamp {
                seconds: at(12, 0, 0).timestamp(),
                nanos: 0,
            })),
            ..Default::default()
        }))
        .unwrap();
        let p = plan(&once, &agent(), at(11, 0, 0), at(12, 0, 1), DEFAULT_GRACE);
        assert_eq!((p.fire.as_slice(), p.next, p.handled_until), ([at(12, 0, 0)].as_slice(), None, Some(at(12, 0, 0))));
        assert!(plan(&once, &agent(), at(12, 0, 0), at(13, 0, 0), DEFAULT_GRACE).fire.is_empty(), "fires once");
        assert_eq!(plan(&Schedule::manual(), &agent(), at(0, 0, 0), at(23, 0, 0), DEFAULT_GRACE), Plan::default());
        let mut bounded = every(60, pb::MisfirePolicy::RunOnce, 0, 0);
        bounded.end_at = Some(at(10, 2, 0));
        let p = plan(&bounded, &agent(), at(10, 0, 0), at(10, 5, 0), Duration::from_secs(600));
        assert_eq!(p.fire, [at(10, 1, 0), at(10, 2, 0)]);
        assert_eq!(p.next, None);
    }

    #[test]
    fn long_downtime_is_bounded_work() {
        let s = every(1, pb::MisfirePolicy::RunOnce, 0, 0);
        let p = plan(&s, &agent(), at(0, 0, 0), at(23, 59, 59), Duration::from_secs(5));
        assert_eq!(p.fire.len(), 5 + 1, "the ticks within grace, plus none late (run_once satisfied)");
        assert_eq!(p.missed, 86_399 - 6);
    }
}
