//! Checkpoint: appends one step of a running attempt (fenced) and optionally extends its lease.
//!
//! Every run writes a checkpoint per LLM answer and per tool result, so this is the busiest write
//! of the run path. The usual case — the attempt still holds the run and the step is the next one
//! — takes one statement on Postgres (a data-modifying CTE: the fenced lease update and the
//! insert commit together, with no BEGIN/COMMIT round trips) and, on SQLite, the group writer's
//! own thread (`usual_sqlite.rs`). Anything else (a refused fence, a step sent twice, a gap)
//! falls through to the full check, which says exactly what is wrong.
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{RunId, time};
use sqlx::{Any, AnyConnection, Row};

use crate::db::{Backend, Store, u32_col};
use crate::error::StoreError;
use crate::fence::{Fence, fenced};
use crate::run_lifecycle::{LlmCall, StepInput, ms_after};
use crate::usual_sqlite;

/// Inserts a step: run `$1`, seq `$2`, attempt `$3`, kind `$4`, payload `$5`, time `$6`.
pub(crate) const INSERT_STEP: &str =
    "INSERT INTO run_steps (run_id, seq, attempt, kind, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)";

/// Inserts the step only if it is the run's next one (`$1` run, `$2` seq).
const INSERT_IF_NEXT: &str = "INSERT INTO run_steps (run_id, seq, attempt, kind, payload, created_at) \
     SELECT $1, $2, $3, $4, $5, $6 WHERE $2 = (SELECT COALESCE(MAX(seq) + 1, 0) FROM run_steps WHERE run_id = $1)";

/// Binds `$1`–`$6` of both step inserts: run, seq, attempt, kind, payload, time.
fn bind_step<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    id: &RunId,
    step: &StepInput,
    attempt: u32,
    now: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    query
        .bind(id.as_str().to_owned())
        .bind(i64::from(step.seq))
        .bind(i64::from(attempt))
        .bind(step.kind.clone())
        .bind(step.payload.clone())
        .bind(now)
}

/// The ledger row's insert, up to the query that gives its values.
pub(crate) const INSERT_LEDGER: &str = "INSERT INTO llm_calls (run_id, seq, attempt, agent_id, model, input_tokens, \
     cached_input_tokens, output_tokens, cost_micros, created_at)";

/// The usual step's write (both backends' forms): run `$1`, the step's values `$2`–`$6`
/// ([`bind_step`]), the lease's new end `$7`, the fence's token `$8` when there is one, and the
/// call's values after it ([`call_params`]).
fn bind_usual<'q>(
    sql: String,
    id: &RunId,
    fence: &Fence,
    step: &StepInput,
    until: Option<i64>,
    now: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    let query = bind_step(sqlx::query(sqlx::AssertSqlSafe(sql)), id, step, fence.attempt, now).bind(until);
    let query = fence.bind_token(query);
    match &step.call {
        Some(c) => bind_call(query, c),
        None => query,
    }
}

/// The parameters of the call's values in [`bind_usual`]'s order: after the token, if any.
fn call_params(fence: &Fence) -> String {
    let m = if fence.token.is_some() { 9 } else { 8 };
    format!("${m}, ${}, ${}, ${}, ${}", m + 1, m + 2, m + 3, m + 4)
}

/// Binds a ledger row's model, tokens (input, cached input, output) and cost (5 parameters).
pub(crate) fn bind_call<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    call: &LlmCall,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    query
        .bind(call.model.clone())
        .bind(n(call.input_tokens))
        .bind(n(call.cached_input_tokens))
        .bind(n(call.output_tokens))
        .bind(call.cost_micros.map(n))
}

impl Store {
    /// Appends a checkpoint (fenced) and optionally extends the lease. Writing a `seq` that
    /// exists already from the same attempt is a no-op, so a retried call is harmless.
    pub async fn checkpoint(
        &self,
        id: &RunId,
        fence: impl Into<Fence>,
        step: &StepInput,
        ttl: Option<Duration>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let fence = fence.into();
        let now = self.now_ms();
        let until = ttl.map(|t| ms_after(now, t));
        // Postgres: the usual case in one statement. Anything else (two copies of one step
        // racing into a unique violation, a refused fence, a gap) goes to the full check.
        if self.backend == Backend::Postgres {
            match self.append_in_one_statement(id, &fence, step, until, now).await {
                Ok(true) => return Ok(until.map(time::from_millis)),
                Ok(false) => {}
                // The full check below runs in a transaction and reports what matters.
                Err(e) => tracing::debug!(run = %id, error = %e, "one-statement checkpoint failed; checking in full"),
            }
        }
        // SQLite: the usual case on the group writer's own thread; the rest to the full check.
        if let Some(group) = self.writer.group() {
            let (id, fence, step) = (id.clone(), fence.clone(), step.clone());
            let write = move |conn: &_| usual_sqlite::checkpoint(conn, &id, &fence, &step, until, now);
            if group.write_direct(Box::new(write)).await? {
                return Ok(until.map(time::from_millis));
            }
        }
        let (id, step) = (id.clone(), std::sync::Arc::new(step.clone()));
        self.transaction(Box::new(move |tx| {
            let (id, fence, step) = (id.clone(), fence.clone(), step.clone());
            Box::pin(async move { append_checked(tx, &id, &fence, &step, until, now).await })
        }))
        .await?;
        Ok(until.map(time::from_millis))
    }

    /// The fenced lease update and the insert of the next step as one Postgres statement; false
    /// when it did nothing (fence refused, or not the next step).
    async fn append_in_one_statement(
        &self,
        id: &RunId,
        fence: &Fence,
        step: &StepInput,
        until: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        // The attempt is $3 (also the step's), the token (when there is one) $8, the ledger's
        // values after it.
        let fenced = format!(
            "WITH fenced AS (UPDATE runs SET lease_expires_at = COALESCE($7, lease_expires_at) \
             WHERE id = $1 AND {} RETURNING id, agent_id)",
            fence.condition_at(3, 8)
        );
        let insert_step = "INSERT INTO run_steps (run_id, seq, attempt, kind, payload, created_at) \
             SELECT id, $2, $3, $4, $5, $6 FROM fenced \
             WHERE $2 = (SELECT COALESCE(MAX(seq) + 1, 0) FROM run_steps WHERE run_id = $1)";
        let sql = match &step.call {
            None => format!("{fenced} {insert_step}"),
            // The call's ledger row is inserted by the same statement, only if the step was.
            Some(_) => format!(
                "{fenced}, step AS ({insert_step} RETURNING run_id) {INSERT_LEDGER} SELECT f.id, $2, $3, f.agent_id, {}, $6 \
                 FROM step s JOIN fenced f ON f.id = s.run_id",
                call_params(fence)
            ),
        };
        // In the committers' next batch (one commit for many runs' steps), not alone.
        let (sql, id, fence, step) =
            (std::sync::Arc::new(sql), id.clone(), fence.clone(), std::sync::Arc::new(step.clone()));
        self.transaction(Box::new(move |conn| {
            let query = bind_usual(sql.to_string(), &id, &fence, &step, until, now);
            Box::pin(async move { Ok(query.execute(&mut *conn).await?.rows_affected() == 1) })
        }))
        .await
    }
}

/// The fenced lease update, then the step, in the caller's transaction: inserted if it is the
/// next one, else checked (a copy from the same attempt is a no-op; another attempt's step or a
/// gap is refused).
pub(crate) async fn append_checked(
    tx: &mut AnyConnection,
    id: &RunId,
    fence: &Fence,
    step: &StepInput,
    until: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    let attempt = fence.attempt;
    // The fenced write comes first: it both checks the token and takes the row lock, so a
    // concurrent takeover cannot slip in between the check and the insert.
    let sql = format!(
        "UPDATE runs SET lease_expires_at = COALESCE($1, lease_expires_at) WHERE id = $2 AND {}",
        fence.condition(4)
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(until).bind(id.as_str()).bind(i64::from(attempt));
    let done = fence.bind_token(done).execute(&mut *tx).await?;
    if done.rows_affected() == 0 {
        return Err(fenced(crate::run_lifecycle::read_run(&mut *tx, id).await?, id, attempt));
    }
    insert_step(tx, id, step, attempt, now).await
}

/// Inserts `step` of `attempt` (with its ledger row) if it is the run's next one, in the
/// caller's transaction, which has checked the fence: a copy from the same attempt is a no-op;
/// another attempt's step or a gap is refused.
pub(crate) async fn insert_step(
    tx: &mut AnyConnection,
    id: &RunId,
    step: &StepInput,
    attempt: u32,
    now: i64,
) -> Result<(), StoreError> {
    let seq = i64::from(step.seq);
    let inserted = bind_step(sqlx::query(INSERT_IF_NEXT), id, step, attempt, now).execute(&mut *tx).await?;
    if inserted.rows_affected() == 1
        && let Some(call) = &step.call
    {
        let sql =
            format!("{INSERT_LEDGER} SELECT $1, $2, $3, agent_id, $4, $5, $6, $7, $8, $9 FROM runs WHERE id = $1");
        let ledger =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str().to_owned()).bind(seq).bind(i64::from(attempt));
        bind_call(ledger, call).bind(now).execute(&mut *tx).await?;
    }
    if inserted.rows_affected() == 0 {
        let next: i64 =
            sqlx::query("SELECT CAST(COALESCE(MAX(seq) + 1, 0) AS BIGINT) AS next FROM run_steps WHERE run_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?
                .try_get("next")?;
        if seq > next {
            return Err(StoreError::FailedPrecondition(format!(
                "step {seq} of run {id} would leave a gap; the next step is {next}"
            )));
        }
        let existing = sqlx::query("SELECT attempt FROM run_steps WHERE run_id = $1 AND seq = $2")
            .bind(id.as_str())
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
        let by = u32_col(&existing, "attempt")?;
        if by != attempt {
            return Err(StoreError::FailedPrecondition(format!(
                "step {seq} of run {id} was already recorded by attempt {by}; continue at step {next}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is the test's verdict
    use nightshift_testkit::{Db, database};

    use super::*;

    /// The usual step's one write itself — one statement on Postgres, the group writer's own
    /// thread on SQLite — on both backends (the tests through `checkpoint` would pass on the full
    /// check alone): it stores the usual step and does nothing for the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_usual_step_in_one_write_stores_it_and_nothing_else() {
        for kind in [Db::Postgres, Db::Sqlite] {
            usual_step_in_one_write(kind).await;
        }
    }

    /// [`Store::append_in_one_statement`] or [`usual_sqlite::checkpoint`], as the backend takes it.
    async fn append_usual(store: &Store, run: &RunId, fence: &Fence, step: &StepInput, until: Option<i64>) -> bool {
        let now = store.now_ms();
        let Some(group) = store.writer.group() else {
            return store.append_in_one_statement(run, fence, step, until, now).await.unwrap();
        };
        let (run, fence, step) = (run.clone(), fence.clone(), step.clone());
        let write = move |conn: &_| usual_sqlite::checkpoint(conn, &run, &fence, &step, until, now);
        group.write_direct(Box::new(write)).await.unwrap()
    }

    async fn usual_step_in_one_write(kind: Db) {
        let (url, _guard) = database(kind).await;
        let store = Store::connect(&url).await.unwrap();
        let (run, lease_token) = crate::finish::tests::started(&store, "c").await;
        let held = Fence { attempt: 1, token: Some(lease_token.clone()) };
        let step = |seq| StepInput::new(seq, "llm_response", vec![1]);
        let now = store.now_ms();
        let until = Some(now + 60_000);

        assert!(append_usual(&store, &run, &held, &step(0), until).await, "the usual step");
        assert_eq!(store.get_run(&run).await.unwrap().unwrap().lease_expires_at, Some(time::from_millis(now + 60_000)));
        assert!(!append_usual(&store, &run, &held, &step(0), None).await, "a repeat");
        assert!(!append_usual(&store, &run, &held, &step(2), None).await, "a gap");
        let forged = Fence { attempt: 1, token: Some("0".repeat(lease_token.len())) };
        assert!(!append_usual(&store, &run, &forged, &step(1), None).await, "a wrong token");
        assert_eq!(store.run_steps(&run).await.unwrap().len(), 1);

        // An LLM answer's ledger row goes with its step, in the same statement, once.
        let call = LlmCall {
            model: "m-1".into(),
            input_tokens: 50,
            cached_input_tokens: 20,
            output_tokens: 10,
            cost_micros: Some(180),
        };
        let answer = StepInput { call: Some(call), ..step(1) };
        assert!(append_usual(&store, &run, &held, &answer, None).await, "step and ledger row");
        assert!(!append_usual(&store, &run, &held, &answer, None).await, "a repeat");
        let unpriced =
            StepInput { call: Some(LlmCall { cost_micros: None, ..answer.call.clone().unwrap() }), ..step(2) };
        assert!(!append_usual(&store, &run, &forged, &unpriced, None).await, "a wrong token");
        assert!(append_usual(&store, &run, &held, &unpriced, None).await);
        let rows = store.costs(crate::CostGroup::Model, None, None).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (rows[0].calls, rows[0].input_tokens, rows[0].cost_micros, rows[0].unpriced_calls),
            (2, 100, 180, 1)
        );
    }
}
