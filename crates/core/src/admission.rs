//! Admission of fired ticks: whether a scheduled tick is queued for a worker or recorded as
//! skipped at once, when it is fired.
//!
//! The overlap policy is applied twice. StartRun applies it when a worker takes the run (the
//! authority: [`crate::lifecycle::decide_overlap`], under the agent's lock). Under `skip`, the
//! scheduler also applies it when it records a tick: if the agent's previous run was handed to
//! the queue a while ago and has still not started, the workers are behind, and the new tick
//! would only wait behind that run to be skipped or to run late. Recording it as skipped at
//! once keeps an overloaded deployment's backlog at about one run per agent instead of growing
//! by every agent's every tick (with 10,000 agents due every second and workers for 225 runs a
//! second, the queue grew by ~9,800 runs a second and the process' memory with it).
//!
//! The decision is made when the scheduler records the tick, up to its `prepare_ahead` (1 s)
//! before the tick is due; a run that is still waiting then would still be running at the tick.
//! Every tick keeps its record either way (a skipped run, with the reason), so a skipped tick is
//! never a lost one.
//!
//! Pure functions over values: the store reads the agent's pending run in the firing
//! transaction and records what these decide.
use std::time::Duration;

use crate::{OverlapPolicy, RunId};

/// How long a run may wait in the queue, from when it was handed to it, before it counts as
/// pending for [`decide_fire`]. Workers take a run within milliseconds when they keep up; a run
/// still queued a second after it was handed over means they do not. Runs not yet handed over
/// (recorded ahead of their fire time, or waiting for the outbox sweep) never count: they are
/// not behind, only not due.
pub const PENDING_AFTER: Duration = Duration::from_secs(1);

/// What a fired tick becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireDecision {
    /// Recorded as queued and handed to the queue.
    Queue,
    /// Recorded as skipped, never handed to the queue.
    Skip {
        /// Why (names the pending run).
        reason: String,
    },
}

/// The admission rule for one fired tick of an agent with overlap `policy`. `pending` is the
/// agent's run that was handed to the queue at least [`PENDING_AFTER`] ago and has not started
/// (still `queued`: waiting for a worker, or for its retry's backoff to end), if any.
///
/// Only `skip` skips here: `buffer_one` / `buffer_all` keep runs waiting by design (StartRun
/// decides which), `cancel_other` wants the newest run, and `allow_all` runs everything.
pub fn decide_fire(policy: OverlapPolicy, pending: Option<&RunId>) -> FireDecision {
    match (policy, pending) {
        (OverlapPolicy::Skip, Some(run)) => FireDecision::Skip {
            reason: format!("overlap policy skip: run {run} is still waiting to start (workers are behind)"),
        },
        _ => FireDecision::Queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_skip_with_a_pending_run_skips() {
        let run = RunId::from_string("run-1".to_owned());
        let skipped = decide_fire(OverlapPolicy::Skip, Some(&run));
        assert!(
            matches!(&skipped, FireDecision::Skip { reason } if reason.contains("run-1")),
            "the reason names the pending run: {skipped:?}"
        );
        assert_eq!(decide_fire(OverlapPolicy::Skip, None), FireDecision::Queue);
        for policy in
            [OverlapPolicy::BufferOne, OverlapPolicy::BufferAll, OverlapPolicy::CancelOther, OverlapPolicy::AllowAll]
        {
            assert_eq!(decide_fire(policy, Some(&run)), FireDecision::Queue, "{policy:?}");
        }
    }
}
