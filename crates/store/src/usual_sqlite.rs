//! The run path's usual writes on SQLite — a run's start, a checkpoint, an end — on the group
//! writer's own connection and thread (`nightshift_sqlite::Direct`), where a statement is a
//! function call rather than a round trip to sqlx's connection thread.
//!
//! Each either does the usual thing or writes nothing and answers `None` / `false`; the store
//! then takes the pooled path, which handles every case and explains a refusal. Each runs inside
//! the writer's `BEGIN IMMEDIATE` transaction: it holds the file's write lock, so what it reads
//! stays true until it commits (no agent lock to take, as the pooled path takes on Postgres).
//! The statements are the pooled path's where they are the same (`$n` bound by number).
use std::sync::LazyLock;

use nightshift_core::lifecycle::{self, OverlapDecision, StartDecision};
use nightshift_core::{RunId, time};
use nightshift_sqlite::bind_numbered;
use rusqlite::{Connection, Row, ToSql};

use crate::checkpoint::{INSERT_LEDGER, INSERT_STEP};
use crate::db::{RUN_RETURNING, int_col, run_from_row};
use crate::error::StoreError;
use crate::fence::{Fence, new_lease_token};
use crate::finish::{consecutive, usual_status};
use crate::model::RunRecord;
use crate::run_lifecycle::{
    Current, FinishInput, GRANT_SQL, LlmCall, RUN_FOR_START, StartInput, StartOutcome, StepInput, granted, ms_after,
    start_facts,
};

/// Runs `sql` with `values`; the number of rows it changed.
fn execute(conn: &Connection, sql: &str, values: &[&dyn ToSql]) -> Result<usize, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    Ok(statement.raw_execute()?)
}

/// Runs `sql` with `values` and decodes its first row, if any. (An `UPDATE … RETURNING` makes
/// all its changes at the first row.)
fn first_row<T>(
    conn: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    decode: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    rows.next()?.map(decode).transpose()
}

/// Whether `seq` is the run's next step.
fn is_next(conn: &Connection, run: &RunId, seq: u32) -> Result<bool, StoreError> {
    let next = first_row(
        conn,
        "SELECT COALESCE(MAX(seq) + 1, 0) AS next FROM run_steps WHERE run_id = $1",
        &[&run.as_str()],
        |row| int_col(row, "next"),
    )?;
    Ok(next == Some(i64::from(seq)))
}

/// The step's insert (its run's next step, checked by the caller).
fn insert_step(conn: &Connection, run: &RunId, step: &StepInput, attempt: u32, now: i64) -> Result<(), StoreError> {
    execute(
        conn,
        INSERT_STEP,
        &[&run.as_str(), &i64::from(step.seq), &i64::from(attempt), &step.kind, &step.payload, &now],
    )?;
    Ok(())
}

/// A call's ledger row, for the step `seq` of the run (its agent read from the run).
fn insert_call(
    conn: &Connection,
    run: &RunId,
    seq: u32,
    attempt: u32,
    call: &LlmCall,
    now: i64,
) -> Result<(), StoreError> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("{INSERT_LEDGER} SELECT id, $2, $3, agent_id, $4, $5, $6, $7, $8, $9 FROM runs WHERE id = $1")
    });
    let (input, cached, output, cost) =
        (n(call.input_tokens), n(call.cached_input_tokens), n(call.output_tokens), call.cost_micros.map(n));
    execute(
        conn,
        &SQL,
        &[&run.as_str(), &i64::from(seq), &i64::from(attempt), &call.model, &input, &cached, &output, &cost, &now],
    )?;
    Ok(())
}

/// The fence's values: attempt `$a`, token `$a + 1` when [`Fence::condition_at`] has one.
fn fence_values(fence: &Fence) -> (i64, Option<&str>) {
    (i64::from(fence.attempt), fence.token.as_deref())
}

/// A fenced statement's two texts, without and with the token (`fenced` given the condition),
/// built once: the run path prepares them by text on every call.
type Fenced = LazyLock<[String; 2]>;

fn fenced_texts(fenced: impl Fn(&Fence) -> String) -> [String; 2] {
    [None, Some(String::new())].map(|token| fenced(&Fence { attempt: 0, token }))
}

/// `texts`' text for `fence`.
fn text_for<'a>(texts: &'a Fenced, fence: &Fence) -> &'a str {
    &texts[usize::from(fence.token.is_some())]
}

/// StartRun's usual case: the run's first attempt, due, of an active agent at the version it
/// was made for, with no period budget to check, no other run of the agent holding a lease and
/// no waiting run to weigh — the lease granted. `None` for anything else, with nothing written.
pub(crate) fn start(conn: &Connection, input: &StartInput, now: i64) -> Result<Option<StartOutcome>, StoreError> {
    let agent =
        first_row(conn, "SELECT state, spec, version FROM agents WHERE id = $1", &[&input.agent_id.as_str()], |row| {
            Ok((row.get::<_, String>("state")?, row.get::<_, Vec<u8>>("spec")?, int_col(row, "version")?))
        })?;
    let run = first_row(conn, RUN_FOR_START.as_str(), &[&input.run_id.as_str(), &now], |row| {
        Ok((run_from_row(row)?, int_col(row, "running_others")?))
    })?;
    let (Some((state, spec, version)), Some((run, running_others))) = (agent, run) else { return Ok(None) };
    let current = Current::decode(&spec, version)?;
    let namespace = input.budgets.get(&run.namespace).copied().unwrap_or_default();
    let policy = current.spec.policy.overlap;
    let usual = run.agent_id == input.agent_id
        && run.attempt == 0
        && run.replay_of.is_none()
        && run.agent_version == current.version
        && running_others == 0
        && !policy.needs_waiting_run()
        && !current.spec.budget.limits_periods()
        && !namespace.limits_periods()
        && lifecycle::decide_start(&start_facts(&run, &state), time::from_millis(now)) == StartDecision::ApplyOverlap
        && lifecycle::decide_overlap(policy, &run.id, &[], None) == OverlapDecision::Start;
    if !usual {
        return Ok(None);
    }
    let (until, lease_token) = (ms_after(now, input.lease_ttl), new_lease_token());
    execute(
        conn,
        GRANT_SQL,
        &[
            &input.worker_id.as_str(),
            &until,
            &now,
            &run.id.as_str(),
            &input.worker_endpoint,
            &i64::from(run.lost_leases),
            &lease_token,
        ],
    )?;
    Ok(Some(StartOutcome::Started {
        run: granted(run, input, until, now),
        lease_token,
        spec: Box::new(current.spec),
        steps: Vec::new(),
        approvals: Vec::new(),
        cancelled: Vec::new(),
    }))
}

/// Checkpoint's usual case: the attempt holds the run and the step is its next one — the
/// lease extended to `until` (if given), the step and its call's ledger row inserted. False for
/// anything else, with nothing written.
pub(crate) fn checkpoint(
    conn: &Connection,
    run: &RunId,
    fence: &Fence,
    step: &StepInput,
    until: Option<i64>,
    now: i64,
) -> Result<bool, StoreError> {
    if !is_next(conn, run, step.seq)? {
        return Ok(false);
    }
    static SQL: Fenced = LazyLock::new(|| {
        fenced_texts(|fence| {
            format!(
                "UPDATE runs SET lease_expires_at = COALESCE($1, lease_expires_at) WHERE id = $2 AND {}",
                fence.condition(4)
            )
        })
    });
    let (attempt, token) = fence_values(fence);
    if execute(conn, text_for(&SQL, fence), &[&until, &run.as_str(), &attempt, &token])? == 0 {
        return Ok(false);
    }
    insert_step(conn, run, step, fence.attempt, now)?;
    if let Some(call) = &step.call {
        insert_call(conn, run, step.seq, fence.attempt, call, now)?;
    }
    Ok(true)
}

/// FinishRun's usual case: an end the retry policy has no say in (see `usual_status`), by the
/// attempt holding the run, with last steps that follow on from the run's (the final answer's
/// LLM call with its ledger row, the episode stored) — the run as ended, and whether other runs
/// of its agent wait (deferred) to start. `None` for anything else, with nothing written.
pub(crate) fn end(
    conn: &Connection,
    run: &RunId,
    fence: &Fence,
    input: &FinishInput,
    steps: &[StepInput],
    now: i64,
) -> Result<Option<(RunRecord, bool)>, StoreError> {
    let Some(status) = usual_status(input) else { return Ok(None) };
    if !consecutive(steps) {
        return Ok(None);
    }
    if let Some(first) = steps.first()
        && !is_next(conn, run, first.seq)?
    {
        return Ok(None);
    }
    static SQL: Fenced = LazyLock::new(|| {
        fenced_texts(|fence| {
            format!(
                "UPDATE runs SET status = $1, finished_at = $2, not_before = NULL, result = COALESCE($3, result), \
                 error = COALESCE($4, error), reason = COALESCE($5, reason), input_tokens = input_tokens + $6, \
                 output_tokens = output_tokens + $7, lease_expires_at = NULL WHERE id = $8 AND {} RETURNING {RUN_RETURNING}, \
                 EXISTS (SELECT 1 FROM runs w WHERE w.agent_id = runs.agent_id AND w.status = 'queued' \
                 AND w.deferred = 1 AND w.id <> runs.id) AS others_waiting",
                fence.condition(10)
            )
        })
    });
    let (attempt, token) = fence_values(fence);
    let (result, error, reason) = input.texts();
    let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let ended = first_row(
        conn,
        text_for(&SQL, fence),
        &[
            &status.as_str(),
            &status.is_terminal().then_some(now),
            &result,
            &error,
            &reason,
            &tokens(input.input_tokens),
            &tokens(input.output_tokens),
            &run.as_str(),
            &attempt,
            &token,
        ],
        |row| Ok((run_from_row(row)?, int_col(row, "others_waiting")? != 0)),
    )?;
    if ended.is_some() {
        for step in steps {
            insert_step(conn, run, step, fence.attempt, now)?;
            if let Some(call) = &step.call {
                insert_call(conn, run, step.seq, fence.attempt, call, now)?;
            }
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is the test's verdict
    use std::time::Duration;

    use nightshift_core::{AgentSpec, AgentState, RunStatus, WorkerId};
    use nightshift_testkit::{Db, database};

    use super::*;
    use crate::{NewRun, Store};

    /// A new manual run of a new agent `name` and the request to start it.
    async fn queued(store: &Store, name: &str) -> StartInput {
        let yaml = format!(
            "name: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}"
        );
        let agent = store.create_agent(&AgentSpec::from_yaml(&yaml).unwrap(), AgentState::Active).await.unwrap();
        let run = RunId::generate();
        store.insert_run(&NewRun::manual(run.clone(), agent.id.clone())).await.unwrap();
        StartInput {
            run_id: run,
            agent_id: agent.id,
            worker_id: WorkerId::from_string("w"),
            worker_endpoint: Some("http://w:1".into()),
            lease_ttl: Duration::from_secs(30),
            budgets: Default::default(),
        }
    }

    async fn try_start(store: &Store, input: &StartInput) -> Option<StartOutcome> {
        let (input, now) = (input.clone(), store.now_ms());
        let write = move |conn: &_| start(conn, &input, now);
        store.writer.group().unwrap().write_direct(Box::new(write)).await.unwrap()
    }

    /// The usual start on SQLite's own thread (the tests through `start_run` would pass on the
    /// pooled path alone): it grants the lease as the pooled path does, and answers `None` with
    /// nothing written for a run already leased, a paused agent's run and a run asked for under
    /// another agent — which the pooled path then decides.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_usual_start_grants_and_nothing_else() {
        let (url, _guard) = database(Db::Sqlite).await;
        let store = Store::connect(&url).await.unwrap();
        let input = queued(&store, "a").await;
        let Some(StartOutcome::Started { run, lease_token, spec, steps, .. }) = try_start(&store, &input).await else {
            panic!("the usual start")
        };
        assert_eq!((run.status, run.attempt, spec.name.as_str(), steps.len()), (RunStatus::Running, 1, "a", 0));
        let stored = store.get_run(&input.run_id).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.attempt, stored.worker_id, stored.worker_endpoint, stored.lease_expires_at),
            (RunStatus::Running, 1, run.worker_id.clone(), run.worker_endpoint.clone(), run.lease_expires_at)
        );
        assert_eq!(stored.started_at, run.started_at);
        // The token granted is the one the fence checks.
        let step = StepInput::new(0, "llm_response", vec![1]);
        store.checkpoint(&input.run_id, Fence { attempt: 1, token: Some(lease_token) }, &step, None).await.unwrap();

        assert!(try_start(&store, &input).await.is_none(), "leased already");
        assert!(matches!(store.start_run(&input).await.unwrap(), StartOutcome::LeasedElsewhere { .. }));

        let paused = queued(&store, "b").await;
        store.set_agent_state(&paused.agent_id, AgentState::Paused).await.unwrap();
        assert!(try_start(&store, &paused).await.is_none(), "a paused agent's run");
        assert_eq!(store.get_run(&paused.run_id).await.unwrap().unwrap().status, RunStatus::Queued, "nothing written");
        assert!(matches!(store.start_run(&paused).await.unwrap(), StartOutcome::Skipped { .. }));

        let other = queued(&store, "c").await;
        let mismatched = StartInput { agent_id: paused.agent_id.clone(), ..other.clone() };
        assert!(try_start(&store, &mismatched).await.is_none(), "another agent's run");
        assert!(matches!(store.start_run(&mismatched).await, Err(StoreError::Invalid(_))));
        assert_eq!(store.get_run(&other.run_id).await.unwrap().unwrap().status, RunStatus::Queued);
    }
}
