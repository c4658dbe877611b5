//! The run-lifecycle rules: who may start a run (lease expiry, retry backoff, paused agents, the
//! overlap policy) and what an attempt's end does to the run (retry or settle).
//!
//! Pure functions over values: the store reads the facts under the agent's lock, asks these
//! functions, and executes the answer in the same transaction. Every policy × state is
//! unit-tested here, without a database.
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{AgentState, OverlapPolicy, RunId, RunOutcome, RunPolicy, RunStatus};

/// How long a run deferred by `buffer_one` / `buffer_all` waits before its worker asks again.
pub const DEFER_POLL: Duration = Duration::from_secs(1);

/// A run's lease as seen at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Its holder is presumed alive for `remaining`.
    Live {
        /// Time left on the lease.
        remaining: Duration,
    },
    /// No lease, or it ran out: its holder is presumed dead. An expired lease neither blocks
    /// other runs of the agent nor keeps another worker from taking the run over.
    Expired,
}

/// The lease rule: a lease is live strictly before its expiry instant.
pub fn lease_state(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> LeaseState {
    match expires_at {
        Some(until) if until > now => LeaseState::Live { remaining: until_after(until, now) },
        _ => LeaseState::Expired,
    }
}

/// The lease expiry instant for a lease granted (or extended) at `now` for `ttl`.
pub fn lease_until(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now.checked_add_signed(chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn until_after(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (until - now).to_std().unwrap_or_default()
}

/// How long after its run ended a lease token still vouches for the worker that held it: long
/// enough to leave notes for a retry and forget the run's working memory, short enough that a
/// worker does not keep an agent's memory open for good.
pub const LEASE_AFTERLIFE: Duration = Duration::from_secs(600);

/// Whether a run's latest lease token (the one presented matched it) still vouches for its
/// holder: while the run is not terminal (running, or queued for the retry the holder may leave
/// notes for, until the next StartRun replaces the token), and for [`LEASE_AFTERLIFE`] after it
/// ended.
pub fn lease_vouches(status: RunStatus, finished_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    if !status.is_terminal() {
        return true;
    }
    finished_at.is_some_and(|at| now < lease_until(at, LEASE_AFTERLIFE))
}

/// The facts about one run that StartRun decides on, read under the agent's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    /// The run's status.
    pub status: RunStatus,
    /// Its lease expiry, if a worker holds (or held) it.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The end of its retry backoff, if any.
    pub not_before: Option<DateTime<Utc>>,
    /// Whether its agent is paused.
    pub agent_state: AgentState,
}

/// StartRun's first decision, before the overlap policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// The run ended already: drop the delivery.
    AlreadyFinished,
    /// Another worker holds a live lease: ask again after `retry_after` (the holder may die).
    LeasedElsewhere {
        /// Remaining lease.
        retry_after: Duration,
    },
    /// The run was running but its lease ran out: take it over with the next attempt. The
    /// overlap policy was applied when it first started, so it is not applied again.
    TakeOver,
    /// Queued but still in its retry backoff.
    NotYet {
        /// Remaining backoff.
        retry_after: Duration,
    },
    /// Queued while the agent is paused: record it as skipped for `reason`.
    Skip {
        /// Why.
        reason: String,
    },
    /// Queued and due: the agent's overlap policy decides ([`decide_overlap`]).
    ApplyOverlap,
    /// Parked for a person's approval: drop the delivery (the decision publishes the run again).
    AwaitingApproval,
    /// Waiting for its budget's next period: drop the delivery (the scheduler's sweep queues and
    /// publishes it again then).
    AwaitingBudget,
}

/// Decides what StartRun does with a run, from its facts at `now`.
pub fn decide_start(facts: &StartFacts, now: DateTime<Utc>) -> StartDecision {
    match facts.status {
        s if s.is_terminal() => StartDecision::AlreadyFinished,
        RunStatus::AwaitingApproval => StartDecision::AwaitingApproval,
        RunStatus::AwaitingBudget => StartDecision::AwaitingBudget,
        RunStatus::Running => match lease_state(facts.lease_expires_at, now) {
            LeaseState::Live { remaining } => StartDecision::LeasedElsewhere { retry_after: remaining },
            LeaseState::Expired => StartDecision::TakeOver,
        },
        _ => match facts.not_before.filter(|nb| *nb > now) {
            Some(nb) => StartDecision::NotYet { retry_after: until_after(nb, now) },
            None if facts.agent_state == AgentState::Paused => {
                StartDecision::Skip { reason: "agent is paused".to_owned() }
            }
            None => StartDecision::ApplyOverlap,
        },
    }
}

/// What the overlap policy makes of a due run, given the agent's other runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlapDecision {
    /// Grant the lease.
    Start,
    /// Record the run as skipped for `reason`.
    Skip {
        /// Why (names the blocking run).
        reason: String,
    },
    /// End `others` as cancelled with `reason`, then grant this run the lease.
    CancelOthers {
        /// The runs to cancel.
        others: Vec<RunId>,
        /// Recorded on each of them.
        reason: String,
    },
    /// Mark the run as waiting (deferred) and ask again after `retry_after`.
    Defer {
        /// When to ask again ([`DEFER_POLL`]).
        retry_after: Duration,
        /// Why.
        reason: String,
    },
}

impl OverlapPolicy {
    /// Whether [`decide_overlap`] needs to know of a run already waiting (deferred) for the
    /// agent: only the buffering policies, whose waiting runs start in order; only then does the
    /// store look one up.
    pub fn needs_waiting_run(self) -> bool {
        matches!(self, OverlapPolicy::BufferOne | OverlapPolicy::BufferAll)
    }
}

/// The agent's first run waiting (deferred) behind its running ones, other than the run being
/// decided, as StartRun reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The run.
    pub run: RunId,
    /// It is ahead of the run being decided in [`buffer_order`]: it must start first.
    pub ahead: bool,
}

/// The order in which buffered runs start: by schedule tick (or creation, for manual runs),
/// then id. `buffer_order(a) < buffer_order(b)` means `a` starts before `b`.
pub fn buffer_order(
    scheduled_for: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    id: &RunId,
) -> (DateTime<Utc>, &str) {
    (scheduled_for.unwrap_or(created_at), id.as_str())
}

/// The overlap rule. `live_others` are the agent's other runs holding a *live* lease (runs of
/// dead workers do not block); `waiting` is the agent's first other run waiting behind them
/// (only looked up when [`OverlapPolicy::needs_waiting_run`]). Buffered runs start first in,
/// first out: a run never overtakes one waiting ahead of it, even when nothing runs (the one
/// ahead is about to start).
pub fn decide_overlap(
    policy: OverlapPolicy,
    run: &RunId,
    live_others: &[RunId],
    waiting: Option<&Waiting>,
) -> OverlapDecision {
    let running = live_others.iter().map(RunId::as_str).collect::<Vec<_>>().join(", ");
    match policy {
        OverlapPolicy::AllowAll => OverlapDecision::Start,
        _ if live_others.is_empty() && !policy.needs_waiting_run() => OverlapDecision::Start,
        OverlapPolicy::Skip => {
            OverlapDecision::Skip { reason: format!("overlap policy skip: run {running} is still running") }
        }
        OverlapPolicy::CancelOther => OverlapDecision::CancelOthers {
            others: live_others.to_vec(),
            reason: format!("cancelled by overlap policy cancel_other in favour of run {run}"),
        },
        OverlapPolicy::BufferOne | OverlapPolicy::BufferAll => match (live_others.is_empty(), waiting) {
            (false, Some(w)) if policy == OverlapPolicy::BufferOne => OverlapDecision::Skip {
                reason: format!("overlap policy buffer_one: run {} is already waiting behind run {running}", w.run),
            },
            (false, _) => OverlapDecision::Defer {
                retry_after: DEFER_POLL,
                reason: format!("waiting for run {running} (overlap policy {policy:?})"),
            },
            (true, Some(w)) if w.ahead => OverlapDecision::Defer {
                retry_after: DEFER_POLL,
                reason: format!("waiting behind run {} (overlap policy {policy:?}: first in, first out)", w.run),
            },
            (true, _) => OverlapDecision::Start,
        },
    }
}

impl RunOutcome {
    /// Failed or timed out: the outcomes the retry rule applies to (and the only ones for which
    /// [`decide_finish`] needs the run's policy).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }
}

/// What the end of an attempt does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishDecision {
    /// The run settles in `status`: terminal, or `Queued` for a hand-back (drain), which does
    /// not count as a retry.
    Settle {
        /// The new status.
        status: RunStatus,
    },
    /// Retry: back to `Queued`, delivered again no earlier than `delay`; `retries` is the new
    /// count of retries used.
    Retry {
        /// The backoff before the next attempt.
        delay: Duration,
        /// Retries used, this one included.
        retries: u32,
    },
}

impl FinishDecision {
    /// The run's status after the decision.
    pub fn status(self) -> RunStatus {
        match self {
            Self::Settle { status } => status,
            Self::Retry { .. } => RunStatus::Queued,
        }
    }
}

/// Whether a failed attempt may be retried at all, as the worker judged its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Possibly transient (a timeout, a provider outage, a model that did not conclude): the
    /// run's retry policy decides.
    Retryable,
    /// Retrying cannot help (the model's configuration or credentials are wrong, or the provider
    /// refused the request as malformed): the run settles now, with the error.
    Permanent,
}

/// Whether [`decide_finish`] needs the run's policy (only to retry a retryable failure); the store
/// reads it only then.
pub fn needs_retry_policy(outcome: RunOutcome, failure: Failure) -> bool {
    outcome.is_failure() && failure == Failure::Retryable
}

/// The retry rule. `retries_used` is the run's count so far; `policy` is the policy of the run's
/// agent version, consulted only when [`needs_retry_policy`] (so a caller may pass `None`
/// otherwise). A permanent failure, or a failure without a policy, settles without retry.
pub fn decide_finish(
    outcome: RunOutcome,
    failure: Failure,
    retries_used: u32,
    policy: Option<&RunPolicy>,
) -> FinishDecision {
    let policy = policy.filter(|_| failure == Failure::Retryable);
    let settle = |status| FinishDecision::Settle { status };
    match outcome {
        RunOutcome::Succeeded => settle(RunStatus::Succeeded),
        RunOutcome::Cancelled => settle(RunStatus::Cancelled),
        RunOutcome::Released => settle(RunStatus::Queued),
        RunOutcome::Failed | RunOutcome::TimedOut => match policy {
            Some(p) if retries_used < p.max_retries => {
                FinishDecision::Retry { delay: p.retry_delay_for(retries_used), retries: retries_used + 1 }
            }
            _ if outcome == RunOutcome::TimedOut => settle(RunStatus::TimedOut),
            _ => settle(RunStatus::Failed),
        },
    }
}

/// How many times a run may lose its worker (its lease ran out: the worker crashed, was killed
/// or cut off) and be resumed. Beyond it the run is failed: a run that takes down every worker
/// it lands on (a tool that exhausts memory, say) must not crash-loop the pool forever.
pub const MAX_LOST_LEASES: u32 = 3;

/// What happens to a run whose lease ran out, whoever notices first: a worker's StartRun
/// (the queue redelivered the run: [`StartDecision::TakeOver`]) or lease recovery (the delivery
/// itself is gone: the worker acked it, or the queue lost it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostLease {
    /// Resume it with the next attempt, from its checkpoints; `lost` is the new count. Not a
    /// retry: the attempt did not fail, its worker vanished, so `max_retries: 0` does not stop
    /// a resume (and no retry backoff applies).
    Resume {
        /// Lost leases of the run, this one included.
        lost: u32,
    },
    /// Fail the run with `error`.
    Fail {
        /// The run's error.
        error: String,
    },
}

/// The lost-lease rule, given how many leases the run lost before this one.
pub fn decide_lost_lease(lost_before: u32) -> LostLease {
    let lost = lost_before.saturating_add(1);
    if lost > MAX_LOST_LEASES {
        LostLease::Fail {
            error: format!(
                "the run lost its worker {lost} times (lease expired without a heartbeat); \
                 failed so that it cannot crash-loop the worker pool"
            ),
        }
    } else {
        LostLease::Resume { lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backoff;
    use crate::time::from_millis;

    const NOW: i64 = 1_000_000;

    fn now() -> DateTime<Utc> {
        from_millis(NOW)
    }

    #[test]
    fn a_lease_token_vouches_until_a_while_after_its_run_ended() {
        assert!(lease_vouches(RunStatus::Running, None, now()));
        assert!(lease_vouches(RunStatus::Queued, None, now()), "a retry is pending: notes for it");
        let ended = now() - chrono::Duration::seconds(60);
        assert!(lease_vouches(RunStatus::Failed, Some(ended), now()));
        let long_ago = now() - chrono::Duration::seconds(601);
        assert!(!lease_vouches(RunStatus::Succeeded, Some(long_ago), now()));
        assert!(!lease_vouches(RunStatus::Cancelled, None, now()));
    }

    fn facts(status: RunStatus) -> StartFacts {
        StartFacts { status, lease_expires_at: None, not_before: None, agent_state: AgentState::Active }
    }

    fn ids(v: &[&str]) -> Vec<RunId> {
        v.iter().map(|s| RunId::from_string(*s)).collect()
    }

    #[test]
    fn lease_is_live_strictly_before_expiry() {
        assert_eq!(
            lease_state(Some(from_millis(NOW + 1500)), now()),
            LeaseState::Live { remaining: Duration::from_millis(1500) }
        );
        assert_eq!(lease_state(Some(now()), now()), LeaseState::Expired);
        assert_eq!(lease_state(Some(from_millis(NOW - 1)), now()), LeaseState::Expired);
        assert_eq!(lease_state(None, now()), LeaseState::Expired);
        assert_eq!(lease_until(now(), Duration::from_secs(30)), from_millis(NOW + 30_000));
        assert_eq!(lease_until(now(), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn terminal_runs_are_finished_whatever_else_holds() {
        for status in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            let f = StartFacts {
                lease_expires_at: Some(from_millis(NOW + 10_000)),
                not_before: Some(from_millis(NOW + 10_000)),
                agent_state: AgentState::Paused,
                ..facts(status)
            };
            assert_eq!(decide_start(&f, now()), StartDecision::AlreadyFinished, "{status}");
        }
    }

    #[test]
    fn running_runs_wait_for_a_live_lease_and_are_taken_over_after_it() {
        let mut f = facts(RunStatus::Running);
        f.lease_expires_at = Some(from_millis(NOW + 2000));
        assert_eq!(decide_start(&f, now()), StartDecision::LeasedElsewhere { retry_after: Duration::from_secs(2) });
        f.lease_expires_at = Some(from_millis(NOW - 1));
        assert_eq!(decide_start(&f, now()), StartDecision::TakeOver);
        // A paused agent does not stop a takeover: the run was started before the pause.
        f.agent_state = AgentState::Paused;
        assert_eq!(decide_start(&f, now()), StartDecision::TakeOver);
        f.lease_expires_at = None;
        assert_eq!(decide_start(&f, now()), StartDecision::TakeOver);
    }

    #[test]
    fn a_parked_run_is_started_by_no_delivery() {
        let mut f = facts(RunStatus::AwaitingApproval);
        assert_eq!(decide_start(&f, now()), StartDecision::AwaitingApproval);
        f.agent_state = AgentState::Paused;
        f.lease_expires_at = Some(from_millis(NOW - 1));
        assert_eq!(decide_start(&f, now()), StartDecision::AwaitingApproval, "not a takeover, not a skip");
        assert!(!RunStatus::AwaitingApproval.is_terminal());
        assert!(
            lease_vouches(RunStatus::AwaitingApproval, None, now()),
            "its notes stay readable for the next attempt"
        );
        assert_eq!(decide_start(&facts(RunStatus::AwaitingBudget), now()), StartDecision::AwaitingBudget);
        assert!(!RunStatus::AwaitingBudget.is_terminal());
    }

    #[test]
    fn lost_leases_resume_until_the_crash_loop_limit() {
        assert_eq!(decide_lost_lease(0), LostLease::Resume { lost: 1 });
        assert_eq!(decide_lost_lease(MAX_LOST_LEASES - 1), LostLease::Resume { lost: MAX_LOST_LEASES });
        let LostLease::Fail { error } = decide_lost_lease(MAX_LOST_LEASES) else { panic!("must fail") };
        assert!(error.contains("lost its worker 4 times"), "{error}");
        assert!(matches!(decide_lost_lease(u32::MAX), LostLease::Fail { .. }));
    }

    #[test]
    fn queued_runs_honour_backoff_then_pause_then_overlap() {
        let mut f = facts(RunStatus::Queued);
        assert_eq!(decide_start(&f, now()), StartDecision::ApplyOverlap);
        f.not_before = Some(from_millis(NOW + 500));
        f.agent_state = AgentState::Paused;
        assert_eq!(decide_start(&f, now()), StartDecision::NotYet { retry_after: Duration::from_millis(500) });
        f.not_before = Some(now());
        assert_eq!(decide_start(&f, now()), StartDecision::Skip { reason: "agent is paused".into() });
        f.agent_state = AgentState::Active;
        assert_eq!(decide_start(&f, now()), StartDecision::ApplyOverlap);
    }

    #[test]
    fn every_policy_starts_when_nothing_else_runs() {
        let run = RunId::from_string("r2");
        for policy in [
            OverlapPolicy::Skip,
            OverlapPolicy::BufferOne,
            OverlapPolicy::BufferAll,
            OverlapPolicy::CancelOther,
            OverlapPolicy::AllowAll,
        ] {
            assert_eq!(decide_overlap(policy, &run, &[], None), OverlapDecision::Start, "{policy:?}");
        }
    }

    #[test]
    fn each_policy_with_a_live_run() {
        let run = RunId::from_string("r2");
        let others = ids(&["r1"]);
        assert_eq!(
            decide_overlap(OverlapPolicy::Skip, &run, &others, None),
            OverlapDecision::Skip { reason: "overlap policy skip: run r1 is still running".into() }
        );
        assert_eq!(decide_overlap(OverlapPolicy::AllowAll, &run, &others, None), OverlapDecision::Start);
        assert_eq!(
            decide_overlap(OverlapPolicy::CancelOther, &run, &ids(&["r0", "r1"]), None),
            OverlapDecision::CancelOthers {
                others: ids(&["r0", "r1"]),
                reason: "cancelled by overlap policy cancel_other in favour of run r2".into()
            }
        );
        assert_eq!(
            decide_overlap(OverlapPolicy::BufferAll, &run, &others, None),
            OverlapDecision::Defer {
                retry_after: DEFER_POLL,
                reason: "waiting for run r1 (overlap policy BufferAll)".into()
            }
        );
        // buffer_all queues behind a waiting run too; buffer_one keeps only one waiting.
        let waiting = Waiting { run: RunId::from_string("r9"), ahead: true };
        assert!(matches!(
            decide_overlap(OverlapPolicy::BufferAll, &run, &others, Some(&waiting)),
            OverlapDecision::Defer { .. }
        ));
        assert!(matches!(decide_overlap(OverlapPolicy::BufferOne, &run, &others, None), OverlapDecision::Defer { .. }));
        assert_eq!(
            decide_overlap(OverlapPolicy::BufferOne, &run, &others, Some(&waiting)),
            OverlapDecision::Skip {
                reason: "overlap policy buffer_one: run r9 is already waiting behind run r1".into()
            }
        );
        assert!(OverlapPolicy::BufferOne.needs_waiting_run());
        assert!(OverlapPolicy::BufferAll.needs_waiting_run());
        assert!(!OverlapPolicy::Skip.needs_waiting_run());
    }

    #[test]
    fn buffered_runs_start_first_in_first_out() {
        let run = RunId::from_string("r5");
        let ahead = Waiting { run: RunId::from_string("r4"), ahead: true };
        let behind = Waiting { run: RunId::from_string("r6"), ahead: false };
        for policy in [OverlapPolicy::BufferOne, OverlapPolicy::BufferAll] {
            // Nothing runs, but r4 waits ahead: it starts first, r5 waits behind it.
            assert_eq!(
                decide_overlap(policy, &run, &[], Some(&ahead)),
                OverlapDecision::Defer {
                    retry_after: DEFER_POLL,
                    reason: format!("waiting behind run r4 (overlap policy {policy:?}: first in, first out)")
                }
            );
            assert_eq!(decide_overlap(policy, &run, &[], Some(&behind)), OverlapDecision::Start, "{policy:?}");
            assert_eq!(decide_overlap(policy, &run, &[], None), OverlapDecision::Start, "{policy:?}");
        }
        // The other policies do not order runs.
        for policy in [OverlapPolicy::Skip, OverlapPolicy::CancelOther, OverlapPolicy::AllowAll] {
            assert_eq!(decide_overlap(policy, &run, &[], Some(&ahead)), OverlapDecision::Start, "{policy:?}");
        }
        let t = from_millis(NOW);
        let (a, b) = (RunId::from_string("a"), RunId::from_string("b"));
        assert!(buffer_order(Some(t), from_millis(NOW + 5), &b) < buffer_order(None, from_millis(NOW + 1), &a));
        assert!(buffer_order(Some(t), t, &a) < buffer_order(Some(t), t, &b));
    }

    #[test]
    fn non_failures_settle_without_consulting_the_policy() {
        for (outcome, status) in [
            (RunOutcome::Succeeded, RunStatus::Succeeded),
            (RunOutcome::Cancelled, RunStatus::Cancelled),
            (RunOutcome::Released, RunStatus::Queued),
        ] {
            assert!(!outcome.is_failure());
            assert_eq!(decide_finish(outcome, Failure::Retryable, 0, None), FinishDecision::Settle { status });
            let p = RunPolicy::default();
            assert_eq!(decide_finish(outcome, Failure::Retryable, 0, Some(&p)), FinishDecision::Settle { status });
        }
    }

    #[test]
    fn failures_retry_with_backoff_until_the_budget_is_spent() {
        let policy = RunPolicy {
            max_retries: 2,
            retry_delay: Duration::from_secs(10),
            backoff: Backoff::Exponential,
            ..RunPolicy::default()
        };
        for (outcome, last) in [(RunOutcome::Failed, RunStatus::Failed), (RunOutcome::TimedOut, RunStatus::TimedOut)] {
            assert!(outcome.is_failure());
            assert_eq!(
                decide_finish(outcome, Failure::Retryable, 0, Some(&policy)),
                FinishDecision::Retry { delay: Duration::from_secs(10), retries: 1 }
            );
            assert_eq!(
                decide_finish(outcome, Failure::Retryable, 1, Some(&policy)),
                FinishDecision::Retry { delay: Duration::from_secs(20), retries: 2 }
            );
            let end = decide_finish(outcome, Failure::Retryable, 2, Some(&policy));
            assert_eq!(end, FinishDecision::Settle { status: last });
            assert_eq!(end.status(), last);
            assert_eq!(decide_finish(outcome, Failure::Retryable, 0, None), FinishDecision::Settle { status: last });
        }
        let none = RunPolicy { max_retries: 0, ..RunPolicy::default() };
        assert_eq!(
            decide_finish(RunOutcome::Failed, Failure::Retryable, 0, Some(&none)),
            FinishDecision::Settle { status: RunStatus::Failed }
        );
        assert_eq!(FinishDecision::Retry { delay: Duration::ZERO, retries: 1 }.status(), RunStatus::Queued);
    }

    #[test]
    fn permanent_failures_settle_at_once_with_retries_left() {
        let policy = RunPolicy { max_retries: 3, ..RunPolicy::default() };
        for (outcome, status) in [(RunOutcome::Failed, RunStatus::Failed), (RunOutcome::TimedOut, RunStatus::TimedOut)]
        {
            assert!(!needs_retry_policy(outcome, Failure::Permanent));
            assert!(needs_retry_policy(outcome, Failure::Retryable));
            assert_eq!(decide_finish(outcome, Failure::Permanent, 0, Some(&policy)), FinishDecision::Settle { status });
        }
        assert!(!needs_retry_policy(RunOutcome::Succeeded, Failure::Retryable));
    }
}
