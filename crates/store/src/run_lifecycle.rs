//! Executes the run-lifecycle rules of `nightshift_core::lifecycle` against the database:
//! StartRun (lease expiry, backoff, pause, overlap policy — decided under the agent's lock) and
//! Heartbeat, fenced by the attempt number and the attempt's random lease token; Checkpoint is
//! in `checkpoint.rs`, FinishRun (retry or settle) in `finish.rs`.
//! The decisions themselves live in core; these files read their inputs and write their results.
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::lifecycle::{self, Failure, LostLease, OverlapDecision, StartDecision, StartFacts};
use nightshift_core::{AgentId, AgentSpec, AgentState, RunId, RunOutcome, RunStatus, WorkerId, time};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row};

use crate::agents::{decode_spec, spec_at};
use crate::db::{RUN_COLUMNS, STEPS_SQL, Store, run_from_row, step_from_row};
use crate::error::StoreError;
pub use crate::fence::Fence;
use crate::fence::{fenced, new_lease_token};
use crate::model::{RunRecord, StepRecord};
use crate::usual_sqlite;

/// A worker's request to start (or take over) a run.
#[derive(Debug, Clone)]
pub struct StartInput {
    /// The run.
    pub run_id: RunId,
    /// Its agent.
    pub agent_id: AgentId,
    /// The asking worker.
    pub worker_id: WorkerId,
    /// Where it listens (its WorkerService), to deliver a cancellation of the run promptly.
    pub worker_endpoint: Option<String>,
    /// Lease length.
    pub lease_ttl: Duration,
    /// The operator's budgets per namespace (admission checks the agent's namespace's with the
    /// agent's own).
    pub budgets:
        std::sync::Arc<std::collections::BTreeMap<nightshift_core::Namespace, nightshift_core::budget::Budget>>,
}

/// The manager's answer to StartRun.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// Run it; `run.attempt` and `lease_token` fence the attempt. `steps` are earlier
    /// checkpoints to resume after.
    Started {
        /// The run, now running.
        run: RunRecord,
        /// The attempt's lease token, drawn at random: Heartbeat, Checkpoint and FinishRun must
        /// present it.
        lease_token: String,
        /// The spec at the run's version.
        spec: Box<AgentSpec>,
        /// Earlier checkpoints.
        steps: Vec<StepRecord>,
        /// The run's approvals (a run resuming after a person's say).
        approvals: Vec<crate::approvals::ApprovalRecord>,
        /// Runs the overlap policy `cancel_other` cancelled in favour of this one, as they were
        /// (their workers are to be told).
        cancelled: Vec<RunRecord>,
    },
    /// Recorded as skipped.
    Skipped {
        /// The run.
        run: RunRecord,
        /// Why.
        reason: String,
    },
    /// Buffered by the overlap policy: ask again later.
    Deferred {
        /// The run.
        run: RunRecord,
        /// When to ask again.
        retry_after: Duration,
        /// Why.
        reason: String,
        /// The waiting run it is deferred behind while nothing runs (first in, first out):
        /// due to start now, to be published again in case its delivery was lost.
        due_ahead: Option<WaitingRun>,
    },
    /// Already ended: drop the delivery.
    AlreadyFinished {
        /// The run.
        run: RunRecord,
    },
    /// Another worker holds a live lease.
    LeasedElsewhere {
        /// The run.
        run: RunRecord,
        /// Remaining lease.
        retry_after: Duration,
    },
    /// Parked until a person decides on a tool call: drop the delivery.
    AwaitingApproval {
        /// The run.
        run: RunRecord,
    },
    /// Waiting for its budget's next period (`run.not_before`): drop the delivery.
    AwaitingBudget {
        /// The run.
        run: RunRecord,
    },
    /// Waiting for the retry backoff.
    NotYet {
        /// The run.
        run: RunRecord,
        /// Remaining backoff.
        retry_after: Duration,
    },
}

/// One checkpoint to append.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// Position; must be the next one (or an already written one, which is a no-op).
    pub seq: u32,
    /// `llm_response` or `tool_result`.
    pub kind: String,
    /// Encoded step.
    pub payload: Vec<u8>,
    /// For an LLM answer: the call, for the cost ledger (written with the step, so once).
    pub call: Option<LlmCall>,
}

impl StepInput {
    /// A step that is not an LLM call (or whose call is not to be ledgered).
    pub fn new(seq: u32, kind: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { seq, kind: kind.into(), payload, call: None }
    }
}

/// One LLM call of the cost ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmCall {
    /// The model as the provider named it.
    pub model: String,
    /// Prompt tokens the provider reported.
    pub input_tokens: u64,
    /// Of those, the ones read from its prompt cache.
    pub cached_input_tokens: u64,
    /// Completion tokens the provider reported.
    pub output_tokens: u64,
    /// Its cost in micro-USD; `None` when the model has no price.
    pub cost_micros: Option<u64>,
}

/// The end of an attempt.
#[derive(Debug, Clone)]
pub struct FinishInput {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Final answer (succeeded).
    pub result: Option<String>,
    /// Error (failed / timed out) or reason (cancelled / released).
    pub error: Option<String>,
    /// Prompt tokens of this attempt.
    pub input_tokens: u64,
    /// Completion tokens of this attempt.
    pub output_tokens: u64,
    /// Whether a failure may be retried (ignored for other outcomes).
    pub failure: Failure,
}

impl FinishInput {
    /// What the end writes to the run's `result`, `error` and `reason` columns.
    pub(crate) fn texts(&self) -> (Option<String>, Option<String>, Option<String>) {
        match self.outcome {
            RunOutcome::Succeeded => (self.result.clone(), None, None),
            RunOutcome::Failed | RunOutcome::TimedOut => (None, self.error.clone(), None),
            RunOutcome::Cancelled | RunOutcome::Released => (None, None, self.error.clone()),
        }
    }
}

/// The run `id` as `db` sees it (a pool, or a connection inside a transaction).
pub(crate) async fn read_run<'c, E>(db: E, id: &RunId) -> Result<Option<RunRecord>, StoreError>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id = $1"
    )))
    .bind(id.as_str())
    .fetch_optional(db)
    .await?;
    row.as_ref().map(run_from_row).transpose()
}

async fn set_terminal(
    tx: &mut AnyConnection,
    id: &RunId,
    status: RunStatus,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET status = $1, reason = $2, finished_at = $3, lease_expires_at = NULL, deferred = 0 WHERE id = $4")
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A run waiting (deferred) behind its agent's running ones.
#[derive(Debug, Clone)]
pub struct WaitingRun {
    /// The run.
    pub id: RunId,
    /// Its schedule tick (scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// The agent's first waiting run in [`lifecycle::buffer_order`], other than `except`.
async fn first_waiting<'c, E>(db: E, agent: &AgentId, except: Option<&RunId>) -> Result<Option<WaitingRun>, StoreError>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let row = sqlx::query(
        "SELECT id, scheduled_for, created_at FROM runs WHERE agent_id = $1 AND status = 'queued' AND deferred = 1 \
         AND id <> $2 ORDER BY COALESCE(scheduled_for, created_at), id LIMIT 1",
    )
    .bind(agent.as_str())
    .bind(except.map_or("", RunId::as_str))
    .fetch_optional(db)
    .await?;
    row.map(|r| {
        Ok(WaitingRun {
            id: RunId::from_string(r.try_get::<String, _>("id")?),
            scheduled_for: r.try_get::<Option<i64>, _>("scheduled_for")?.map(time::from_millis),
            created_at: time::from_millis(r.try_get::<i64, _>("created_at")?),
        })
    })
    .transpose()
}

/// Fails a run that lost its worker too often ([`LostLease::Fail`]) and returns it as recorded.
pub(crate) async fn fail_lost_lease(
    tx: &mut AnyConnection,
    run: RunRecord,
    error: String,
    now: i64,
) -> Result<RunRecord, StoreError> {
    sqlx::query(
        "UPDATE runs SET status = 'failed', error = $1, finished_at = $2, lease_expires_at = NULL, \
         lost_leases = lost_leases + 1 WHERE id = $3",
    )
    .bind(error.as_str())
    .bind(now)
    .bind(run.id.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(RunRecord {
        status: RunStatus::Failed,
        error: Some(error),
        finished_at: Some(time::from_millis(now)),
        lease_expires_at: None,
        lost_leases: run.lost_leases.saturating_add(1),
        ..run
    })
}

/// Records `run` as skipped for `reason` and returns the outcome.
async fn skip(tx: &mut AnyConnection, run: RunRecord, reason: String, now: i64) -> Result<StartOutcome, StoreError> {
    set_terminal(tx, &run.id, RunStatus::Skipped, &reason, now).await?;
    let run = RunRecord {
        status: RunStatus::Skipped,
        reason: Some(reason.clone()),
        finished_at: Some(time::from_millis(now)),
        ..run
    };
    Ok(StartOutcome::Skipped { run, reason })
}

/// `now_ms + d` in unix ms, saturating (lease expiries, retry backoff ends).
pub(crate) fn ms_after(now_ms: i64, d: Duration) -> i64 {
    time::to_millis(lifecycle::lease_until(time::from_millis(now_ms), d))
}

/// The agent as StartRun reads it under the agent's lock.
pub(crate) struct Current {
    pub(crate) spec: AgentSpec,
    pub(crate) version: u64,
}

impl Current {
    /// From the agent's stored `spec` and `version`.
    pub(crate) fn decode(spec: &[u8], version: i64) -> Result<Self, StoreError> {
        Ok(Self { spec: decode_spec(spec)?, version: u64::try_from(version).unwrap_or_default() })
    }
}

/// The facts StartRun's first decision takes, from the run and its agent's `state`.
pub(crate) fn start_facts(run: &RunRecord, state: &str) -> StartFacts {
    StartFacts {
        status: run.status,
        lease_expires_at: run.lease_expires_at,
        not_before: run.not_before,
        agent_state: if state == AgentState::Paused.as_str() { AgentState::Paused } else { AgentState::Active },
    }
}

/// The run (`$1`) with the number of its agent's other runs holding a live lease at `$2`
/// (`running_others`), which the overlap policy needs listed only when there are any (rarely).
pub(crate) static RUN_FOR_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RUN_COLUMNS}, (SELECT COUNT(*) FROM runs o WHERE o.agent_id = r.agent_id \
         AND o.status = 'running' AND o.id <> r.id AND o.lease_expires_at > $2) AS running_others \
         FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id = $1"
    )
});

/// The grant of a lease: worker `$1`, lease end `$2`, time `$3`, run `$4`, worker endpoint `$5`,
/// lost leases `$6`, token `$7` (see [`granted`]).
pub(crate) const GRANT_SQL: &str = "UPDATE runs SET status = 'running', attempt = attempt + 1, worker_id = $1, \
     lease_expires_at = $2, started_at = COALESCE(started_at, $3), deferred = 0, not_before = NULL, \
     worker_endpoint = $5, lost_leases = $6, lease_token = $7 WHERE id = $4";

/// `run` as [`GRANT_SQL`] left it (its lost leases as given), without reading it back: the row
/// was read in the same transaction, which holds the write lock.
pub(crate) fn granted(mut run: RunRecord, input: &StartInput, until: i64, now: i64) -> RunRecord {
    run.status = RunStatus::Running;
    run.attempt += 1;
    run.worker_id = Some(input.worker_id.clone());
    run.worker_endpoint = input.worker_endpoint.clone();
    run.lease_expires_at = Some(time::from_millis(until));
    run.started_at = run.started_at.or(Some(time::from_millis(now)));
    run.not_before = None;
    run
}

impl Store {
    /// Applies the agent's overlap policy and, if the run may start, grants a lease. The whole
    /// decision runs under the agent's lock, so concurrent callers for one agent are serialized.
    pub async fn start_run(&self, input: &StartInput) -> Result<StartOutcome, StoreError> {
        // SQLite: the usual start on the group writer's own thread; every other case below.
        if let Some(group) = self.writer.group() {
            let (clock, input) = (self.clock.clone(), input.clone());
            let write = move |conn: &_| usual_sqlite::start(conn, &input, time::to_millis(clock.now()));
            if let Some(outcome) = group.write_direct(Box::new(write)).await? {
                return Ok(outcome);
            }
        }
        let (this, input) = (self.clone(), std::sync::Arc::new(input.clone()));
        self.transaction(Box::new(move |tx| {
            let (this, input) = (this.clone(), input.clone());
            Box::pin(async move { this.start_in(tx, &input).await })
        }))
        .await
    }

    async fn start_in(&self, tx: &mut AnyConnection, input: &StartInput) -> Result<StartOutcome, StoreError> {
        let now = self.now_ms();
        let (agent, row) = self.read_for_start(tx, input, now).await?;
        let agent = agent.ok_or_else(|| StoreError::NotFound(format!("agent {}", input.agent_id)))?;
        let state: String = agent.try_get("state")?;
        let current = Current::decode(&agent.try_get::<Vec<u8>, _>("spec")?, agent.try_get("version")?)?;

        // Only runs the manager recorded start: a worker cannot make up runs.
        let row = row.ok_or_else(|| StoreError::NotFound(format!("run {}", input.run_id)))?;
        let (run, running_others) = (run_from_row(&row)?, row.try_get::<i64, _>("running_others")?);
        if run.agent_id != input.agent_id {
            return Err(StoreError::Invalid(format!(
                "run {} belongs to agent {}, not {}",
                run.id, run.agent_id, input.agent_id
            )));
        }

        let outcome = match lifecycle::decide_start(&start_facts(&run, &state), time::from_millis(now)) {
            StartDecision::AlreadyFinished => StartOutcome::AlreadyFinished { run },
            StartDecision::AwaitingApproval => StartOutcome::AwaitingApproval { run },
            StartDecision::AwaitingBudget => StartOutcome::AwaitingBudget { run },
            StartDecision::LeasedElsewhere { retry_after } => StartOutcome::LeasedElsewhere { retry_after, run },
            StartDecision::NotYet { retry_after } => StartOutcome::NotYet { retry_after, run },
            StartDecision::Skip { reason } => skip(tx, run, reason, now).await?,
            StartDecision::TakeOver => match lifecycle::decide_lost_lease(run.lost_leases) {
                // `grant` writes the new count with the lease.
                LostLease::Resume { lost } => {
                    self.grant(tx, RunRecord { lost_leases: lost, ..run }, input, &current, now).await?
                }
                LostLease::Fail { error } => {
                    StartOutcome::AlreadyFinished { run: fail_lost_lease(tx, run, error, now).await? }
                }
            },
            // A run's first start is admitted against its budgets; a retry or a resume is not
            // stopped halfway by them (the per-run limit stops it between LLM calls).
            StartDecision::ApplyOverlap if run.attempt == 0 => {
                let namespace = input.budgets.get(&run.namespace).copied().unwrap_or_default();
                match crate::costs::over_budget(tx, &run, &current.spec, &namespace, now).await? {
                    Some(overrun) if current.spec.budget.wait || namespace.wait => {
                        StartOutcome::AwaitingBudget { run: crate::costs::wait_for_budget(tx, run, overrun).await? }
                    }
                    Some(overrun) => skip(tx, run, overrun.reason, now).await?,
                    None => self.apply_overlap(tx, run, running_others, input, &current, now).await?,
                }
            }
            StartDecision::ApplyOverlap => self.apply_overlap(tx, run, running_others, input, &current, now).await?,
        };
        Ok(outcome)
    }

    /// What StartRun decides on: the agent's row (`state`, `spec`, `version`), read by the write
    /// that takes the agent's lock (as `lock_agent` does), and the run's ([`RUN_FOR_START`]).
    /// On SQLite the usual start takes the group writer's own connection instead
    /// (`usual_sqlite::start`); this is the path of every other case.
    async fn read_for_start(
        &self,
        tx: &mut AnyConnection,
        input: &StartInput,
        now: i64,
    ) -> Result<(Option<AnyRow>, Option<AnyRow>), StoreError> {
        const LOCK_AGENT: &str =
            "UPDATE agents SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING state, spec, version";
        let agent = sqlx::query(LOCK_AGENT).bind(input.agent_id.as_str()).fetch_optional(&mut *tx).await?;
        let run = sqlx::query(sqlx::AssertSqlSafe(RUN_FOR_START.as_str()))
            .bind(input.run_id.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        Ok((agent, run))
    }

    /// `running_others` counts the agent's other runs with a live lease, as read with `run`.
    async fn apply_overlap(
        &self,
        tx: &mut AnyConnection,
        run: RunRecord,
        running_others: i64,
        input: &StartInput,
        current: &Current,
        now: i64,
    ) -> Result<StartOutcome, StoreError> {
        let policy = current.spec.policy.overlap;
        // Only runs with a live lease block (lifecycle::lease_state): a run whose lease ran out
        // belongs to a dead worker.
        let others: Vec<RunId> = if running_others == 0 {
            Vec::new()
        } else {
            sqlx::query(
                "SELECT id FROM runs WHERE agent_id = $1 AND status = 'running' AND id <> $2 AND lease_expires_at > $3",
            )
            .bind(input.agent_id.as_str())
            .bind(run.id.as_str())
            .bind(now)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id").map(RunId::from_string))
            .collect::<Result<_, _>>()?
        };
        let first = if policy.needs_waiting_run() {
            first_waiting(&mut *tx, &input.agent_id, Some(&run.id)).await?
        } else {
            None
        };
        let waiting = first.as_ref().map(|w| lifecycle::Waiting {
            ahead: lifecycle::buffer_order(w.scheduled_for, w.created_at, &w.id)
                < lifecycle::buffer_order(run.scheduled_for, run.created_at, &run.id),
            run: w.id.clone(),
        });
        // Deferred behind a waiting run while nothing runs: that run is due now; if its own
        // delivery was lost (an in-memory queue restarted), the manager's nudge brings it back.
        let due_ahead = first.filter(|_| others.is_empty() && waiting.as_ref().is_some_and(|w| w.ahead));
        match lifecycle::decide_overlap(policy, &run.id, &others, waiting.as_ref()) {
            OverlapDecision::Start => self.grant(tx, run, input, current, now).await,
            OverlapDecision::Skip { reason } => skip(tx, run, reason, now).await,
            OverlapDecision::CancelOthers { others, reason } => {
                let mut cancelled = Vec::with_capacity(others.len());
                for other in &others {
                    set_terminal(tx, other, RunStatus::Cancelled, &reason, now).await?;
                    cancelled.extend(read_run(&mut *tx, other).await?);
                }
                match self.grant(tx, run, input, current, now).await? {
                    StartOutcome::Started { run, lease_token, spec, steps, approvals, .. } => {
                        Ok(StartOutcome::Started { run, lease_token, spec, steps, approvals, cancelled })
                    }
                    other => Ok(other),
                }
            }
            OverlapDecision::Defer { retry_after, reason } => {
                sqlx::query("UPDATE runs SET deferred = 1 WHERE id = $1")
                    .bind(run.id.as_str())
                    .execute(&mut *tx)
                    .await?;
                Ok(StartOutcome::Deferred { run, retry_after, reason, due_ahead })
            }
        }
    }

    async fn grant(
        &self,
        tx: &mut AnyConnection,
        run: RunRecord,
        input: &StartInput,
        current: &Current,
        now: i64,
    ) -> Result<StartOutcome, StoreError> {
        let until = ms_after(now, input.lease_ttl);
        let lease_token = new_lease_token();
        sqlx::query(GRANT_SQL)
            .bind(input.worker_id.as_str())
            .bind(until)
            .bind(now)
            .bind(run.id.as_str())
            .bind(input.worker_endpoint.clone())
            .bind(i64::from(run.lost_leases))
            .bind(&lease_token)
            .execute(&mut *tx)
            .await?;
        let run = granted(run, input, until, now);
        // Most runs execute the agent's current version, read above.
        let spec = if run.agent_version == current.version {
            current.spec.clone()
        } else {
            spec_at(&mut *tx, &run.agent_id, run.agent_version).await?
        };
        // Steps and approvals are only written by a granted attempt, so a first attempt has none
        // to resume with — but a replay's, which starts with the original's first steps.
        let (steps, approvals) = if run.attempt > 1 || run.replay_of.is_some() {
            let rows = sqlx::query(STEPS_SQL).bind(run.id.as_str()).fetch_all(&mut *tx).await?;
            let steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>, StoreError>>()?;
            (steps, crate::approvals::of_run_in_tx(&mut *tx, &run.id).await?)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(StartOutcome::Started { run, lease_token, spec: Box::new(spec), steps, approvals, cancelled: Vec::new() })
    }

    /// The agent's first run waiting behind its running ones (overlap policy `buffer_one` /
    /// `buffer_all`), in start order: when a run of the agent ends, this one is published again
    /// at once instead of waiting for its next poll.
    pub async fn first_waiting_run(&self, agent: &AgentId) -> Result<Option<WaitingRun>, StoreError> {
        first_waiting(&self.pool, agent, None).await
    }

    /// Extends the lease of a running run held with `fence`.
    pub async fn heartbeat(
        &self,
        id: &RunId,
        fence: impl Into<Fence>,
        ttl: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let (this, id, fence) = (self.clone(), id.clone(), fence.into());
        self.transaction(Box::new(move |conn| {
            let (this, id, fence) = (this.clone(), id.clone(), fence.clone());
            Box::pin(async move {
                let until = ms_after(this.now_ms(), ttl);
                let sql = format!("UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND {}", fence.condition(4));
                let done =
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(until).bind(id.as_str()).bind(i64::from(fence.attempt));
                let done = fence.bind_token(done).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    return Err(fenced(read_run(&mut *conn, &id).await?, &id, fence.attempt));
                }
                Ok(time::from_millis(until))
            })
        }))
        .await
    }
}
