//! The cost ledger's sums (`llm_calls`, written with each LLM step by `checkpoint.rs`): by
//! agent, model or namespace since an instant, within namespaces; and what StartRun's budget
//! admission reads from it.
use chrono::{DateTime, Utc};
use nightshift_core::budget::{self, Budget, Overrun, Spend, Spending};
use nightshift_core::{AgentSpec, Namespace, time};
use sqlx::{AnyConnection, Row};

use crate::db::{Store, u64_col};
use crate::error::StoreError;
use crate::model::RunRecord;

/// What the ledger is summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CostGroup {
    /// `namespace/agent`.
    #[default]
    Agent,
    /// The model as the provider named it.
    Model,
    /// The agent's namespace.
    Namespace,
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRow {
    /// The group.
    pub key: String,
    /// LLM calls.
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// The priced calls' cost, micro-USD.
    pub cost_micros: u64,
    /// Calls of models without a price.
    pub unpriced_calls: u64,
}

impl Store {
    /// The ledger since `since` (all when `None`), summed by `group`, in `namespaces` (`None` =
    /// all); most expensive first, then by key.
    pub async fn costs(
        &self,
        group: CostGroup,
        since: Option<DateTime<Utc>>,
        namespaces: Option<&[Namespace]>,
    ) -> Result<Vec<CostRow>, StoreError> {
        let key = match group {
            CostGroup::Agent => "a.namespace || '/' || a.name",
            CostGroup::Model => "c.model",
            CostGroup::Namespace => "a.namespace",
        };
        let mut binds: Vec<String> = Vec::new();
        let mut filter = String::from("c.created_at >= $1");
        if let Some(ns) = namespaces {
            // A leading NULL matches nothing and keeps an empty list valid SQL.
            let mut marks = vec!["NULL".to_owned()];
            for n in ns {
                binds.push(n.to_string());
                marks.push(format!("${}", binds.len() + 1));
            }
            filter.push_str(&format!(" AND a.namespace IN ({})", marks.join(", ")));
        }
        let sql = format!(
            "SELECT {key} AS k, CAST(COUNT(*) AS BIGINT) AS calls, \
             CAST(COALESCE(SUM(c.input_tokens), 0) AS BIGINT) AS tin, \
             CAST(COALESCE(SUM(c.output_tokens), 0) AS BIGINT) AS tout, \
             CAST(COALESCE(SUM(c.cost_micros), 0) AS BIGINT) AS cost, \
             CAST(SUM(CASE WHEN c.cost_micros IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS unpriced \
             FROM llm_calls c JOIN agents a ON a.id = c.agent_id WHERE {filter} GROUP BY {key} \
             ORDER BY cost DESC, k"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since.map_or(i64::MIN, time::to_millis));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(CostRow {
                    key: r.try_get("k")?,
                    calls: u64_col(r, "calls")?,
                    input_tokens: u64_col(r, "tin")?,
                    output_tokens: u64_col(r, "tout")?,
                    cost_micros: u64_col(r, "cost")?,
                    unpriced_calls: u64_col(r, "unpriced")?,
                })
            })
            .collect()
    }
}

/// One LLM call of a run in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCost {
    /// The step's seq.
    pub seq: u32,
    /// The model as the provider named it.
    pub model: String,
    /// Micro-USD; `None` when the model had no price.
    pub cost_micros: Option<i64>,
}

impl Store {
    /// The ledger rows of run `id`, by seq.
    pub async fn run_costs(&self, id: &nightshift_core::RunId) -> Result<Vec<StepCost>, StoreError> {
        let rows = sqlx::query("SELECT seq, model, cost_micros FROM llm_calls WHERE run_id = $1 ORDER BY seq")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StepCost {
                    seq: u32::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(u32::MAX),
                    model: r.try_get("model")?,
                    cost_micros: r.try_get("cost_micros")?,
                })
            })
            .collect()
    }
}

/// Tokens and money of the ledger rows a query sums (`t`, `c` or the given columns).
fn spend(row: &sqlx::any::AnyRow, tokens: &str, micros: &str) -> Result<Spend, StoreError> {
    Ok(Spend { tokens: u64_col(row, tokens)?, micros: u64_col(row, micros)? })
}

/// What `filter` (over `llm_calls c JOIN agents a`) spent this UTC day and month.
async fn period_spend(
    tx: &mut AnyConnection,
    filter: &str,
    key: &str,
    day: i64,
    month: i64,
) -> Result<(Spend, Spend), StoreError> {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(CASE WHEN c.created_at >= $2 THEN c.input_tokens + c.output_tokens ELSE 0 END), 0) AS BIGINT) AS dt, \
         CAST(COALESCE(SUM(CASE WHEN c.created_at >= $2 THEN c.cost_micros ELSE 0 END), 0) AS BIGINT) AS dc, \
         CAST(COALESCE(SUM(c.input_tokens + c.output_tokens), 0) AS BIGINT) AS mt, \
         CAST(COALESCE(SUM(c.cost_micros), 0) AS BIGINT) AS mc \
         FROM llm_calls c JOIN agents a ON a.id = c.agent_id WHERE {filter} = $1 AND c.created_at >= $3"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key).bind(day).bind(month).fetch_one(&mut *tx).await?;
    Ok((spend(&row, "dt", "dc")?, spend(&row, "mt", "mc")?))
}

/// Admission of a run's first start against its agent's and namespace's period budgets
/// (`nightshift_core::budget::admit`): the overrun, if any. Reads the ledger only when a day or
/// month limit is set.
pub(crate) async fn over_budget(
    tx: &mut AnyConnection,
    run: &RunRecord,
    spec: &AgentSpec,
    namespace: &Budget,
    now: i64,
) -> Result<Option<Overrun>, StoreError> {
    if !spec.budget.limits_periods() && !namespace.limits_periods() {
        return Ok(None);
    }
    let (day, month) = budget::periods(time::from_millis(now));
    let (day, month) = (time::to_millis(day), time::to_millis(month));
    let mut spending = Spending::default();
    if spec.budget.limits_periods() {
        (spending.agent_day, spending.agent_month) =
            period_spend(tx, "c.agent_id", run.agent_id.as_str(), day, month).await?;
    }
    if namespace.limits_periods() {
        (spending.namespace_day, spending.namespace_month) =
            period_spend(tx, "a.namespace", run.namespace.as_str(), day, month).await?;
    }
    // The agent's last runs (by their latest call) project the next one.
    let rows = sqlx::query(
        "SELECT CAST(SUM(input_tokens + output_tokens) AS BIGINT) AS t, CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS c \
         FROM llm_calls WHERE agent_id = $1 GROUP BY run_id ORDER BY MAX(created_at) DESC LIMIT 20",
    )
    .bind(run.agent_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let recent = rows.iter().map(|r| spend(r, "t", "c")).collect::<Result<Vec<_>, _>>()?;
    Ok(budget::admit(&spec.budget, namespace, &spending, budget::projection(&recent), time::from_millis(now)))
}

/// Parks `run` as `awaiting_budget` until `overrun.until` (its agent's policy is to wait).
pub(crate) async fn wait_for_budget(
    tx: &mut AnyConnection,
    run: RunRecord,
    overrun: Overrun,
) -> Result<RunRecord, StoreError> {
    let until = time::to_millis(overrun.until);
    sqlx::query("UPDATE runs SET status = 'awaiting_budget', not_before = $1, reason = $2, deferred = 0 WHERE id = $3")
        .bind(until)
        .bind(&overrun.reason)
        .bind(run.id.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(RunRecord {
        status: nightshift_core::RunStatus::AwaitingBudget,
        not_before: Some(overrun.until),
        reason: Some(overrun.reason),
        ..run
    })
}

impl Store {
    /// Queues again (unpublished: the outbox sweep publishes them) the runs waiting for a budget
    /// period that has ended; StartRun admits them afresh. Returns how many.
    pub async fn release_budget_waits(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'queued', published = 0, not_before = NULL \
             WHERE status = 'awaiting_budget' AND not_before <= $1",
        )
        .bind(self.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
