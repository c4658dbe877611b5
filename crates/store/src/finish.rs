//! FinishRun (fenced: retry or settle, by `nightshift_core::lifecycle::decide_finish`), with the
//! steps a worker sends along (the final answer's LLM call, which it does not checkpoint on its
//! own, and its `MemoryStored` step): the busiest end of the run path, so its usual case is one
//! write.
//!
//! - Postgres: an attempt that settles without consulting the retry policy (a success, a
//!   cancellation, a release, a permanent failure) with steps that follow one another ends in
//!   **one statement**: a data-modifying CTE that ends the attempt only if the fence holds and
//!   the first step is the run's next, appends the steps (and an LLM call's ledger row) only if
//!   it did, and returns the run as it now is with the agent's first waiting run (so the manager
//!   need not look that up). One statement instead of a checkpoint per step, the run read, the
//!   end and the waiting-run lookup.
//! - SQLite: the same usual end on the group writer's own thread (`usual_sqlite.rs`): the first
//!   step checked to be the next one, one fenced `UPDATE … RETURNING` (which also says whether
//!   any run of the agent waits, so the manager looks one up only for agents that buffer), the
//!   steps' inserts — statements without a hand-off each, committed with the writer's batch.
//!   Otherwise the steps and the end are one pooled write of the group writer (they commit
//!   together).
//!
//! Everything else — a refused fence, a step sent twice, a gap, a retry to decide — takes the
//! checked path, which says exactly what is wrong.
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::lifecycle::{self, FinishDecision};
use nightshift_core::{RunId, RunStatus, time};
use sqlx::{AnyConnection, Row};

use crate::agents::spec_at;
use crate::checkpoint::{INSERT_LEDGER, append_checked, bind_call};
use crate::db::{Backend, RUN_COLUMNS, Store, run_from_row};
use crate::error::StoreError;
use crate::fence::{Fence, fenced};
use crate::model::RunRecord;
use crate::run_lifecycle::{FinishInput, StepInput, WaitingRun, ms_after, read_run};
use crate::usual_sqlite;

/// An attempt as FinishRun ended it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run as it now is.
    pub run: RunRecord,
    /// For a retry: when to deliver the run again.
    pub retry_after: Option<Duration>,
    /// The agent's first waiting run, when the end looked it up in the same statement.
    pub waiting: WaitingLookup,
}

/// Whether the end of a run also found the agent's first waiting run (overlap policies
/// `buffer_one` / `buffer_all`), which is to start next.
#[derive(Debug, Clone)]
pub enum WaitingLookup {
    /// Not looked up: the caller asks [`Store::first_waiting_run`] if it needs to know.
    NotLooked,
    /// Looked up with the end: the first waiting run, if any.
    Found(Option<WaitingRun>),
}

impl Store {
    /// FinishRun with its steps: each appended as [`Store::checkpoint`] does, then the attempt
    /// ended as [`Store::finish_run`] does (see the module doc for the one-write cases). A
    /// FinishRun retried after its steps were written writes them again harmlessly.
    pub async fn finish_run_with_steps(
        &self,
        id: &RunId,
        fence: impl Into<Fence>,
        steps: &[StepInput],
        input: &FinishInput,
    ) -> Result<Finished, StoreError> {
        let fence = fence.into();
        let ended = |(run, retry_after)| Finished { run, retry_after, waiting: WaitingLookup::NotLooked };
        if self.backend == Backend::Postgres {
            if let Some(finished) = self.finish_in_one_statement(id, &fence, steps, input).await? {
                return Ok(finished);
            }
            for step in steps {
                self.checkpoint(id, fence.clone(), step, None).await?;
            }
            return self.finish_run(id, fence, input).await.map(ended);
        }
        let now = self.now_ms();
        let (steps, input) = (Arc::new(steps.to_vec()), Arc::new(input.clone()));
        // SQLite: the usual end (with the usual last step) on the group writer's own thread.
        if let Some(group) = self.writer.group() {
            let (id, fence, steps, input) = (id.clone(), fence.clone(), steps.clone(), input.clone());
            let write = move |conn: &_| usual_sqlite::end(conn, &id, &fence, &input, &steps, now);
            if let Some((run, others_waiting)) = group.write_direct(Box::new(write)).await? {
                // Most agents never buffer a run: their ends need no lookup afterwards.
                let waiting = if others_waiting { WaitingLookup::NotLooked } else { WaitingLookup::Found(None) };
                return Ok(Finished { run, retry_after: None, waiting });
            }
        }
        let (this, id) = (self.clone(), id.clone());
        self.transaction(Box::new(move |conn| {
            let (this, id, fence, steps, input) =
                (this.clone(), id.clone(), fence.clone(), steps.clone(), input.clone());
            Box::pin(async move {
                for step in steps.iter() {
                    append_checked(conn, &id, &fence, step, None, now).await?;
                }
                this.finish_in(conn, &id, fence, &input).await.map(ended)
            })
        }))
        .await
    }

    /// Ends an attempt (fenced). A failure or timeout with retries left puts the run back in the
    /// queue with `not_before` set by the policy's backoff; the returned delay says when to
    /// deliver it again.
    pub async fn finish_run(
        &self,
        id: &RunId,
        fence: impl Into<Fence>,
        input: &FinishInput,
    ) -> Result<(RunRecord, Option<Duration>), StoreError> {
        let (this, id, fence, input) = (self.clone(), id.clone(), fence.into(), Arc::new(input.clone()));
        self.transaction(Box::new(move |conn| {
            let (this, id, fence, input) = (this.clone(), id.clone(), fence.clone(), input.clone());
            Box::pin(async move { this.finish_in(conn, &id, fence, &input).await })
        }))
        .await
    }

    pub(crate) async fn finish_in(
        &self,
        conn: &mut AnyConnection,
        id: &RunId,
        fence: Fence,
        input: &FinishInput,
    ) -> Result<(RunRecord, Option<Duration>), StoreError> {
        let attempt = fence.attempt;
        let now = self.now_ms();
        let run = read_run(&mut *conn, id).await?.ok_or_else(|| StoreError::NotFound(format!("run {id}")))?;
        if run.status != RunStatus::Running || run.attempt != attempt {
            return Err(fenced(Some(run), id, attempt));
        }
        // The policy is read only when the retry rule needs it (not on the success path).
        let policy = if lifecycle::needs_retry_policy(input.outcome, input.failure) {
            Some(spec_at(&mut *conn, &run.agent_id, run.agent_version).await?.policy)
        } else {
            None
        };
        let decision = lifecycle::decide_finish(input.outcome, input.failure, run.retries, policy.as_ref());
        let (status, not_before, retries, retry_after) = match decision {
            FinishDecision::Settle { status } => (status, None, run.retries, None),
            FinishDecision::Retry { delay, retries } => {
                (decision.status(), Some(ms_after(now, delay)), retries, Some(delay))
            }
        };
        let finished_at = status.is_terminal().then_some(now);
        let (result, error, reason) = input.texts();
        let sql = format!(
            "UPDATE runs SET status = $1, finished_at = $2, not_before = $3, retries = $4, \
             result = COALESCE($5, result), error = COALESCE($6, error), reason = COALESCE($7, reason), \
             input_tokens = input_tokens + $8, output_tokens = output_tokens + $9, lease_expires_at = NULL \
             WHERE id = $10 AND {}",
            fence.condition(12)
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status.as_str())
            .bind(finished_at)
            .bind(not_before)
            .bind(i64::from(retries))
            .bind(result.clone())
            .bind(error.clone())
            .bind(reason.clone())
            .bind(i64::try_from(input.input_tokens).unwrap_or(i64::MAX))
            .bind(i64::try_from(input.output_tokens).unwrap_or(i64::MAX))
            .bind(id.as_str())
            .bind(i64::from(attempt));
        let done = fence.bind_token(done).execute(&mut *conn).await?;
        if done.rows_affected() == 0 {
            return Err(fenced(read_run(&mut *conn, id).await?, id, attempt));
        }
        // The fenced update matched the record read above (same attempt, still running): apply
        // it to that record rather than reading the row back.
        let mut run = run;
        run.status = status;
        run.finished_at = finished_at.map(time::from_millis);
        run.not_before = not_before.map(time::from_millis);
        run.retries = retries;
        run.result = result.or(run.result);
        run.error = error.or(run.error);
        run.reason = reason.or(run.reason);
        run.input_tokens = run.input_tokens.saturating_add(input.input_tokens);
        run.output_tokens = run.output_tokens.saturating_add(input.output_tokens);
        run.lease_expires_at = None;
        Ok((run, retry_after))
    }

    /// The usual FinishRun as one Postgres statement; `None` when it does not apply or did
    /// nothing (the checked path then runs and explains).
    async fn finish_in_one_statement(
        &self,
        id: &RunId,
        fence: &Fence,
        steps: &[StepInput],
        input: &FinishInput,
    ) -> Result<Option<Finished>, StoreError> {
        // Only the first step is checked to be the run's next (within the statement's one
        // snapshot); the others must follow it.
        if !consecutive(steps) {
            return Ok(None);
        }
        let Some(status) = usual_status(input) else { return Ok(None) };
        let now = self.now_ms();
        let sql = Arc::new(usual_end_sql(fence, steps));
        // In the committers' next batch (one commit for many runs' ends), not alone.
        let (id, fence) = (id.clone(), fence.clone());
        let (input, steps) = (Arc::new(input.clone()), Arc::new(steps.to_vec()));
        let row = self
            .transaction(Box::new(move |conn| {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .bind(id.as_str().to_owned())
                    .bind(i64::from(fence.attempt));
                let mut query = bind_end(query, status, &input, now);
                if !steps.is_empty() {
                    query = query.bind(now);
                }
                for step in steps.iter() {
                    query = query.bind(i64::from(step.seq)).bind(step.kind.clone()).bind(step.payload.clone());
                    if let Some(call) = &step.call {
                        query = bind_call(query, call);
                    }
                }
                let query = fence.bind_token(query);
                Box::pin(async move { Ok(query.fetch_optional(&mut *conn).await?) })
            }))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let waiting = match row.try_get::<Option<String>, _>("waiting_id")? {
            Some(waiting) => Some(WaitingRun {
                id: RunId::from_string(waiting),
                scheduled_for: row.try_get::<Option<i64>, _>("waiting_scheduled_for")?.map(time::from_millis),
                created_at: time::from_millis(row.try_get::<i64, _>("waiting_created_at")?),
            }),
            None => None,
        };
        Ok(Some(Finished { run: run_from_row(&row)?, retry_after: None, waiting: WaitingLookup::Found(waiting) }))
    }
}

/// The usual end's statement on Postgres: the fenced update of the run (only if the first step
/// is the run's next), each step's insert and its call's ledger row, and the run as it now is
/// with the agent's first waiting run. Parameters: `$1` run, `$2` attempt, `$3`–`$9` the end's
/// values ([`bind_end`]); with steps, the time, then each step's seq, kind and payload and its
/// call's five values ([`bind_call`]); the fence's token last.
fn usual_end_sql(fence: &Fence, steps: &[StepInput]) -> String {
    let mut last = 9;
    let mut param = || {
        last += 1;
        last
    };
    let (mut step_check, mut inserts) = (String::new(), String::new());
    let at = if steps.is_empty() { 0 } else { param() };
    for (i, step) in steps.iter().enumerate() {
        let (seq, kind, payload) = (param(), param(), param());
        if i == 0 {
            step_check = format!("AND ${seq} = (SELECT COALESCE(MAX(seq) + 1, 0) FROM run_steps WHERE run_id = $1)");
        }
        inserts.push_str(&format!(
            ", step{i} AS (INSERT INTO run_steps (run_id, seq, attempt, kind, payload, created_at) \
             SELECT id, ${seq}, $2, ${kind}, ${payload}, ${at} FROM fenced)"
        ));
        if step.call.is_some() {
            let values = [param(), param(), param(), param(), param()].map(|p| format!("${p}")).join(", ");
            inserts.push_str(&format!(
                ", call{i} AS ({INSERT_LEDGER} SELECT id, ${seq}, $2, agent_id, {values}, ${at} FROM fenced)"
            ));
        }
    }
    let token = param();
    format!(
        "WITH fenced AS (UPDATE runs SET status = $3, finished_at = $4, not_before = NULL, \
         result = COALESCE($5, result), error = COALESCE($6, error), reason = COALESCE($7, reason), \
         input_tokens = input_tokens + $8, output_tokens = output_tokens + $9, lease_expires_at = NULL \
         WHERE id = $1 AND {} {step_check} RETURNING *){inserts} \
         SELECT {RUN_COLUMNS}, w.id AS waiting_id, w.scheduled_for AS waiting_scheduled_for, \
         w.created_at AS waiting_created_at FROM fenced r JOIN agents a ON a.id = r.agent_id \
         LEFT JOIN LATERAL (SELECT id, scheduled_for, created_at FROM runs WHERE agent_id = r.agent_id \
         AND status = 'queued' AND deferred = 1 AND id <> r.id \
         ORDER BY COALESCE(scheduled_for, created_at), id LIMIT 1) w ON true",
        fence.condition_at(2, token)
    )
}

/// Whether each of `steps` follows the one before it (the usual end checks only the first
/// against the run's next step).
pub(crate) fn consecutive(steps: &[StepInput]) -> bool {
    steps.windows(2).all(|pair| pair[0].seq.checked_add(1) == Some(pair[1].seq))
}

/// The status an attempt settles in without consulting the retry policy (a success, a
/// cancellation, a release, a permanent failure); `None` when the policy decides.
pub(crate) fn usual_status(input: &FinishInput) -> Option<RunStatus> {
    if lifecycle::needs_retry_policy(input.outcome, input.failure) {
        return None;
    }
    match lifecycle::decide_finish(input.outcome, input.failure, 0, None) {
        FinishDecision::Settle { status } => Some(status),
        FinishDecision::Retry { .. } => None,
    }
}

/// Binds the end's seven values, in this order: status, finish time (`now` for a terminal
/// status), result, error, reason, input and output tokens.
fn bind_end<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    status: RunStatus,
    input: &FinishInput,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let (result, error, reason) = input.texts();
    query
        .bind(status.as_str())
        .bind(status.is_terminal().then_some(now))
        .bind(result)
        .bind(error)
        .bind(reason)
        .bind(i64::try_from(input.input_tokens).unwrap_or(i64::MAX))
        .bind(i64::try_from(input.output_tokens).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is the test's verdict

    use nightshift_core::lifecycle::Failure;
    use nightshift_core::{AgentSpec, AgentState, RunOutcome, RunStatus, WorkerId};
    use nightshift_testkit::{Db, database};

    use super::*;
    use crate::{NewRun, StartInput, StartOutcome};

    /// A new run of the manual agent `agent` (created if need be), started: its id and the
    /// attempt's lease token.
    pub(crate) async fn started(store: &Store, agent: &str) -> (RunId, String) {
        let agent = match store.get_agent_by_name(&Default::default(), agent).await.unwrap() {
            Some(found) => found,
            None => {
                let yaml = format!(
                    "name: {agent}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}"
                );
                store.create_agent(&AgentSpec::from_yaml(&yaml).unwrap(), AgentState::Active).await.unwrap()
            }
        };
        let run = RunId::generate();
        store.insert_run(&NewRun::manual(run.clone(), agent.id.clone())).await.unwrap();
        let start = StartInput {
            run_id: run.clone(),
            agent_id: agent.id,
            worker_id: WorkerId::from_string("w"),
            worker_endpoint: None,
            lease_ttl: Duration::from_secs(30),
            budgets: Default::default(),
        };
        let StartOutcome::Started { lease_token, .. } = store.start_run(&start).await.unwrap() else {
            panic!("not started")
        };
        (run, lease_token)
    }

    fn end(outcome: RunOutcome) -> FinishInput {
        FinishInput {
            outcome,
            result: Some("done".into()),
            error: Some("why".into()),
            input_tokens: 7,
            output_tokens: 3,
            failure: Failure::Retryable,
        }
    }

    /// An LLM call with a price, for the ledger.
    fn ledgered() -> crate::LlmCall {
        crate::LlmCall {
            model: "m".into(),
            input_tokens: 5,
            cached_input_tokens: 1,
            output_tokens: 2,
            cost_micros: Some(30),
        }
    }

    /// The run's ledger rows as the store reports them: seq, model, cost.
    async fn ledger(store: &Store, run: &RunId) -> Vec<(u32, String, Option<i64>)> {
        (store.run_costs(run).await.unwrap().into_iter()).map(|c| (c.seq, c.model, c.cost_micros)).collect()
    }

    /// The one-statement path itself on real Postgres (the tests through
    /// `finish_run_with_steps` would pass on the checked path alone): it ends the usual attempt
    /// with its step and does nothing for the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_statement_ends_the_usual_attempt_and_nothing_else() {
        let (url, _guard) = database(Db::Postgres).await;
        let store = Store::connect(&url).await.unwrap();
        let (run, lease_token) = started(&store, "f").await;
        let stored = StepInput::new(1, "memory_stored", vec![9]);
        let held = Fence { attempt: 1, token: Some(lease_token.clone()) };
        let forged = Fence { attempt: 1, token: Some("0".repeat(lease_token.len())) };
        let succeeded = end(RunOutcome::Succeeded);
        store.checkpoint(&run, held.clone(), &StepInput::new(0, "llm_response", vec![1]), None).await.unwrap();
        // Not for this statement: a retry to decide, steps that do not follow one another.
        let failed = end(RunOutcome::Failed);
        assert!(store.finish_in_one_statement(&run, &held, &[], &failed).await.unwrap().is_none());
        let apart = [stored.clone(), StepInput::new(3, "memory_stored", vec![9])];
        assert!(store.finish_in_one_statement(&run, &held, &apart, &succeeded).await.unwrap().is_none());
        // Refused: a forged token, a gap, a step already written.
        assert!(
            store
                .finish_in_one_statement(&run, &forged, std::slice::from_ref(&stored), &succeeded)
                .await
                .unwrap()
                .is_none()
        );
        let gap = StepInput::new(5, "memory_stored", vec![9]);
        assert!(store.finish_in_one_statement(&run, &held, &[gap], &succeeded).await.unwrap().is_none());
        let again = StepInput::new(0, "llm_response", vec![1]);
        assert!(store.finish_in_one_statement(&run, &held, &[again], &succeeded).await.unwrap().is_none());
        let r = store.get_run(&run).await.unwrap().unwrap();
        assert_eq!((r.status, store.run_steps(&run).await.unwrap().len()), (RunStatus::Running, 1));

        // The usual end: the final answer's step with its ledger row, then the episode's, stored
        // with the attempt, the run ended as finish_run ends it.
        let answer = StepInput { call: Some(ledgered()), ..StepInput::new(1, "llm_response", vec![2]) };
        let last = [answer, StepInput::new(2, "memory_stored", vec![9])];
        let done = store.finish_in_one_statement(&run, &held, &last, &succeeded).await.unwrap().unwrap();
        assert_eq!(
            (done.run.status, done.run.result.as_deref(), done.run.error.as_deref()),
            (RunStatus::Succeeded, Some("done"), None)
        );
        assert_eq!((done.run.input_tokens, done.run.output_tokens, done.run.lease_expires_at), (7, 3, None));
        assert!(done.run.finished_at.is_some());
        assert!(matches!(done.waiting, WaitingLookup::Found(None)), "{:?}", done.waiting);
        assert_eq!(store.get_run(&run).await.unwrap().unwrap().finished_at, done.run.finished_at);
        let steps = store.run_steps(&run).await.unwrap();
        let steps: Vec<_> = steps.iter().map(|s| (s.seq, s.attempt, s.payload.clone())).collect();
        assert_eq!(steps, [(0, 1, vec![1]), (1, 1, vec![2]), (2, 1, vec![9])]);
        assert_eq!(ledger(&store, &run).await, [(1, "m".to_owned(), Some(30))]);
        // Sent again (the answer was lost): the run is no longer running.
        assert!(store.finish_in_one_statement(&run, &held, &[], &succeeded).await.unwrap().is_none());

        // A release (no step, no token: an in-process caller) puts the run back in the queue.
        let (second, _) = started(&store, "f").await;
        let (no_token, release) = (Fence::from(1), end(RunOutcome::Released));
        let released = store.finish_in_one_statement(&second, &no_token, &[], &release).await.unwrap().unwrap();
        assert_eq!(
            (released.run.status, released.run.finished_at, released.run.reason.as_deref()),
            (RunStatus::Queued, None, Some("why"))
        );
    }

    /// The usual end on SQLite's own thread (the tests through `finish_run_with_steps` would pass
    /// on the checked path alone): it ends a held attempt and returns the run as recorded, agent
    /// name included, with its last step; nothing at all — not the end, not the step — for a
    /// forged token, an end the retry policy decides, or a step that is not the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_usual_end_on_sqlite_ends_a_held_attempt_only() {
        let (url, _guard) = database(Db::Sqlite).await;
        let store = Store::connect(&url).await.unwrap();
        let (run, lease_token) = started(&store, "s").await;
        let try_end = |run: &RunId, fence: Fence, input: FinishInput, steps: Vec<StepInput>| {
            let (store, run) = (store.clone(), run.clone());
            async move {
                let now = store.now_ms();
                let write = move |conn: &_| crate::usual_sqlite::end(conn, &run, &fence, &input, &steps, now);
                store.writer.group().unwrap().write_direct(Box::new(write)).await.unwrap()
            }
        };
        let forged = Fence { attempt: 1, token: Some("0".repeat(lease_token.len())) };
        let step = |seq| vec![StepInput::new(seq, "memory_stored", vec![1])];
        assert!(try_end(&run, forged, end(RunOutcome::Succeeded), step(0)).await.is_none(), "a forged token");
        assert!(store.run_steps(&run).await.unwrap().is_empty(), "nor its step");
        let held = Fence { attempt: 1, token: Some(lease_token) };
        assert!(try_end(&run, held.clone(), end(RunOutcome::Failed), vec![]).await.is_none(), "a retry to decide");
        assert_eq!(store.get_run(&run).await.unwrap().unwrap().status, RunStatus::Running);
        assert!(try_end(&run, held.clone(), end(RunOutcome::Succeeded), step(2)).await.is_none(), "a gap");
        assert_eq!(store.get_run(&run).await.unwrap().unwrap().status, RunStatus::Running, "nor the end");

        let apart = vec![step(0).remove(0), step(2).remove(0)];
        assert!(try_end(&run, held.clone(), end(RunOutcome::Succeeded), apart).await.is_none(), "steps apart");
        assert!(store.run_steps(&run).await.unwrap().is_empty(), "nor their steps");

        // The final answer's step with its ledger row, then the episode's, go with the end.
        let answer = StepInput { call: Some(ledgered()), ..StepInput::new(0, "llm_response", vec![2]) };
        let last = vec![answer, step(1).remove(0)];
        let (done, others_waiting) = try_end(&run, held.clone(), end(RunOutcome::Succeeded), last).await.unwrap();
        assert!(!others_waiting, "no other run of the agent waits");
        let steps = store.run_steps(&run).await.unwrap();
        let steps: Vec<_> = steps.iter().map(|s| (s.seq, s.attempt, s.payload.clone())).collect();
        assert_eq!(steps, [(0, 1, vec![2]), (1, 1, vec![1])], "the steps go with the end");
        assert_eq!(ledger(&store, &run).await, [(0, "m".to_owned(), Some(30))]);
        assert_eq!(
            (done.status, done.result.as_deref(), done.agent_name.as_str()),
            (RunStatus::Succeeded, Some("done"), "s")
        );
        assert_eq!((done.input_tokens, done.output_tokens, done.lease_expires_at), (7, 3, None));
        let stored = store.get_run(&run).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.finished_at, stored.namespace),
            (done.status, done.finished_at, done.namespace)
        );
        assert!(try_end(&run, held, end(RunOutcome::Succeeded), vec![]).await.is_none(), "no longer running");

        // Another run of the agent with one waiting (deferred) behind it: its end says so.
        let (second, token) = started(&store, "s").await;
        let agent = store.get_run(&second).await.unwrap().unwrap().agent_id;
        let waiting = RunId::generate();
        store.insert_run(&NewRun::manual(waiting.clone(), agent)).await.unwrap();
        sqlx::query("UPDATE runs SET deferred = 1 WHERE id = $1")
            .bind(waiting.as_str())
            .execute(&store.pool)
            .await
            .unwrap();
        let fence = Fence { attempt: 1, token: Some(token) };
        let (run, others_waiting) = try_end(&second, fence, end(RunOutcome::Succeeded), vec![]).await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        assert!(others_waiting, "run {waiting} waits behind it");
    }
}
