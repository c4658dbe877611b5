//! Run repository: creating, reading, listing, cancelling runs and aggregating them per agent.
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, RunId, RunStatus, lifecycle, time};
use sqlx::Row;

use crate::db::{RUN_COLUMNS, STEPS_SQL, Store, run_from_row, step_from_row, time_col, u64_col};
use crate::error::StoreError;
use crate::model::{AgentStats, HourRuns, NewRun, Page, RunFilter, RunRecord, StepRecord};

impl Store {
    /// Records a queued run at the agent's current version. Idempotent on the run id: returns
    /// the existing run and `false` if it was already recorded (a tick fired twice).
    pub async fn insert_run(&self, run: &NewRun) -> Result<(RunRecord, bool), StoreError> {
        let now = self.now_ms();
        let done = sqlx::query(
            "INSERT INTO runs (id, agent_id, agent_version, status, trigger_kind, scheduled_for, query_override, created_at) \
             SELECT $1, id, version, 'queued', $2, $3, $4, $5 FROM agents WHERE id = $6 \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(run.id.as_str())
        .bind(run.trigger.as_str())
        .bind(run.scheduled_for.map(time::to_millis))
        .bind(run.query_override.clone())
        .bind(now)
        .bind(run.agent_id.as_str())
        .execute(&self.pool)
        .await?;
        let rec =
            self.get_run(&run.id).await?.ok_or_else(|| StoreError::NotFound(format!("agent {}", run.agent_id)))?;
        if rec.agent_id != run.agent_id {
            return Err(StoreError::AlreadyExists(format!("run {} (of another agent)", run.id)));
        }
        Ok((rec, done.rows_affected() > 0))
    }

    /// The run with this id.
    pub async fn get_run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        crate::run_lifecycle::read_run(&self.pool, id).await
    }

    /// The agent and spec version of a run whose latest attempt was granted `lease_token`;
    /// `None` if the token is not that attempt's (compared in constant time) or no longer
    /// vouches ([`lifecycle::lease_vouches`]). The token outlives the attempt's FinishRun (fenced
    /// calls also need the run `running`), so the worker can still leave notes for the next
    /// attempt and clean up; the next StartRun replaces it. What the memory service lets a
    /// worker touch hangs on this.
    pub async fn held_run_agent(&self, id: &RunId, lease_token: &str) -> Result<Option<(AgentId, u64)>, StoreError> {
        let row =
            sqlx::query("SELECT agent_id, agent_version, lease_token, status, finished_at FROM runs WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let token: Option<String> = row.try_get("lease_token")?;
        if !token.is_some_and(|t| nightshift_core::auth::constant_time_eq(t.as_bytes(), lease_token.as_bytes())) {
            return Ok(None);
        }
        let status: String = row.try_get("status")?;
        let status = RunStatus::from_str(&status).map_err(StoreError::Corrupt)?;
        if !lifecycle::lease_vouches(status, time_col(&row, "finished_at")?, self.clock.now()) {
            return Ok(None);
        }
        Ok(Some((AgentId::from_string(row.try_get::<String, _>("agent_id")?), u64_col(&row, "agent_version")?)))
    }

    /// The checkpointed steps of a run, in order.
    pub async fn run_steps(&self, id: &RunId) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query(STEPS_SQL).bind(id.as_str()).fetch_all(&self.pool).await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The checkpointed steps of a run from `seq` on, in order.
    pub async fn run_steps_from(&self, id: &RunId, seq: u32) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, attempt, kind, payload, created_at FROM run_steps WHERE run_id = $1 AND seq >= $2 ORDER BY seq",
        )
        .bind(id.as_str())
        .bind(i64::from(seq))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Page<RunRecord>, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs r JOIN agents a ON a.id = r.agent_id WHERE 1 = 1");
        enum B {
            S(String),
            I(i64),
        }
        let mut binds: Vec<B> = Vec::new();
        if let Some(agent) = &filter.agent_id {
            binds.push(B::S(agent.to_string()));
            sql.push_str(&format!(" AND r.agent_id = ${}", binds.len()));
        }
        if let Some(namespaces) = &filter.namespaces {
            // A leading NULL matches nothing and keeps an empty list valid SQL (`IN ()` is not).
            let mut marks = vec!["NULL".to_owned()];
            for ns in namespaces {
                binds.push(B::S(ns.to_string()));
                marks.push(format!("${}", binds.len()));
            }
            sql.push_str(&format!(" AND a.namespace IN ({})", marks.join(", ")));
        }
        if !filter.statuses.is_empty() {
            let mut marks = Vec::new();
            for s in &filter.statuses {
                binds.push(B::S(s.as_str().to_owned()));
                marks.push(format!("${}", binds.len()));
            }
            sql.push_str(&format!(" AND r.status IN ({})", marks.join(", ")));
        }
        if let Some(token) = &filter.page_token {
            let (ms, id) = token
                .split_once('/')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| StoreError::Invalid("page_token: not a token from a previous page".into()))?;
            binds.push(B::I(ms));
            binds.push(B::S(id));
            let (m, i) = (binds.len() - 1, binds.len());
            sql.push_str(&format!(" AND (r.created_at < ${m} OR (r.created_at = ${m} AND r.id < ${i}))"));
        }
        sql.push_str(&format!(" ORDER BY r.created_at DESC, r.id DESC LIMIT {}", limit + 1));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                B::S(s) => q.bind(s),
                B::I(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(run_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| format!("{}/{}", time::to_millis(r.created_at), r.id))
        } else {
            None
        };
        Ok(Page { items, next_page_token })
    }

    /// Cancels a queued or running run. A running run's worker finds out at its next fenced
    /// call (FAILED_PRECONDITION). `FailedPrecondition` if the run already ended.
    pub async fn cancel_run(&self, id: &RunId, reason: &str) -> Result<RunRecord, StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET status = 'cancelled', reason = $1, finished_at = $2, lease_expires_at = NULL \
             WHERE id = $3 AND status IN ('queued', 'running', 'awaiting_approval', 'awaiting_budget')",
        )
        .bind(reason)
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        // Nothing is left to decide for a cancelled run.
        sqlx::query(
            "UPDATE approvals SET status = 'expired', decided_at = $1, reason = 'the run was cancelled' \
             WHERE run_id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let run = self.get_run(id).await?.ok_or_else(|| StoreError::NotFound(format!("run {id}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::FailedPrecondition(format!("run {id} already ended ({})", run.status)));
        }
        Ok(run)
    }

    /// Counts, tokens, mean duration, last run and last error of an agent.
    pub async fn agent_stats(&self, agent: &AgentId) -> Result<AgentStats, StoreError> {
        let mut stats = AgentStats::default();
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS tin, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS tout FROM runs WHERE agent_id = $1 GROUP BY status",
        )
        .bind(agent.as_str())
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let status: String = r.try_get("status")?;
            let status = RunStatus::from_str(&status).map_err(StoreError::Corrupt)?;
            stats.by_status.insert(status, u64_col(r, "n")?);
            stats.input_tokens += u64_col(r, "tin")?;
            stats.output_tokens += u64_col(r, "tout")?;
        }
        let mean: Option<f64> = sqlx::query(
            "SELECT CAST(AVG(finished_at - started_at) AS DOUBLE PRECISION) AS mean_ms FROM runs \
             WHERE agent_id = $1 AND status = 'succeeded' AND started_at IS NOT NULL AND finished_at IS NOT NULL",
        )
        .bind(agent.as_str())
        .fetch_one(&self.pool)
        .await?
        .try_get("mean_ms")?;
        stats.mean_duration = mean.filter(|m| m.is_finite() && *m >= 0.0).map(|m| Duration::from_secs_f64(m / 1000.0));
        let cost = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost FROM llm_calls WHERE agent_id = $1",
        )
        .bind(agent.as_str())
        .fetch_one(&self.pool)
        .await?;
        stats.cost_micros = u64_col(&cost, "cost")?;
        let last = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.agent_id = $1 \
             ORDER BY r.created_at DESC, r.id DESC LIMIT 1"
        )))
        .bind(agent.as_str())
        .fetch_optional(&self.pool)
        .await?;
        stats.last_run = last.as_ref().map(run_from_row).transpose()?;
        let err = sqlx::query(
            "SELECT error, COALESCE(finished_at, started_at, created_at) AS at FROM runs \
             WHERE agent_id = $1 AND error IS NOT NULL ORDER BY COALESCE(finished_at, started_at, created_at) DESC LIMIT 1",
        )
        .bind(agent.as_str())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = err {
            stats.last_error = Some((r.try_get("error")?, time::from_millis(r.try_get("at")?)));
        }
        Ok(stats)
    }

    /// The runs of `agent` created since `since`, by the UTC hour they were created in (oldest
    /// first; hours without runs are left out). One indexed range read (`runs_agent_created`).
    pub async fn runs_by_hour(&self, agent: &AgentId, since: DateTime<Utc>) -> Result<Vec<HourRuns>, StoreError> {
        const HOUR_MS: i64 = 3_600_000;
        let rows = sqlx::query(
            "SELECT created_at / 3600000 AS h, status, COUNT(*) AS n, \
             CAST(AVG(finished_at - started_at) AS DOUBLE PRECISION) AS mean_ms FROM runs \
             WHERE agent_id = $1 AND created_at >= $2 GROUP BY created_at / 3600000, status",
        )
        .bind(agent.as_str())
        .bind(time::to_millis(since))
        .fetch_all(&self.pool)
        .await?;
        let mut hours: std::collections::BTreeMap<i64, HourRuns> = std::collections::BTreeMap::new();
        for r in &rows {
            let h: i64 = r.try_get("h")?;
            let status = RunStatus::from_str(&r.try_get::<String, _>("status")?).map_err(StoreError::Corrupt)?;
            let n = u64_col(r, "n")?;
            let hour = hours
                .entry(h)
                .or_insert_with(|| HourRuns { hour: time::from_millis(h * HOUR_MS), ..HourRuns::default() });
            match status {
                RunStatus::Succeeded => {
                    hour.succeeded += n;
                    let mean: Option<f64> = r.try_get("mean_ms")?;
                    hour.mean_duration =
                        mean.filter(|m| m.is_finite() && *m >= 0.0).map(|m| Duration::from_secs_f64(m / 1000.0));
                }
                RunStatus::Failed | RunStatus::TimedOut => hour.failed += n,
                _ => hour.other += n,
            }
        }
        Ok(hours.into_values().collect())
    }
}
