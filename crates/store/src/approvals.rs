//! Approvals: a run parks (`awaiting_approval`, no lease, no worker) until a person decides on
//! each tool call it asked approval for; the last decision queues it again (unpublished, so the
//! outbox sweep publishes it if the manager's own publish is lost) and the next attempt resumes
//! from its checkpoints with the decisions. Every change to a run's approvals runs under its
//! agent's lock, so two people deciding two calls of one run at once cannot both leave it parked.
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::governance::{ApprovalStatus, Effect, OnTimeout};
use nightshift_core::{AgentId, Namespace, RunId, RunStatus, time};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::agents::lock_agent;
use crate::db::{Store, time_col};
use crate::error::StoreError;
use crate::fence::{Fence, fenced};
use crate::model::{Page, RunRecord};
use crate::run_lifecycle::{ms_after, read_run};

/// A call a run asks approval for.
#[derive(Debug, Clone)]
pub struct ApprovalCall {
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool_name: String,
    /// Its arguments as the model wrote them.
    pub arguments_json: String,
    /// What it does to the world.
    pub effect: Effect,
}

/// What a park records besides the calls: the attempt's tokens and the agent's approval policy.
#[derive(Debug, Clone, Copy)]
pub struct ParkInput {
    /// Prompt tokens of the attempt that parks.
    pub input_tokens: u64,
    /// Completion tokens of the attempt that parks.
    pub output_tokens: u64,
    /// How long a request waits.
    pub timeout: Duration,
    /// What an unanswered request becomes.
    pub on_timeout: OnTimeout,
}

/// One approval request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    /// Its id.
    pub id: String,
    /// The run.
    pub run_id: RunId,
    /// The run's agent.
    pub agent_id: AgentId,
    /// The agent's name.
    pub agent_name: String,
    /// The agent's namespace.
    pub namespace: Namespace,
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool_name: String,
    /// The arguments as asked.
    pub arguments_json: String,
    /// What it is bound to (`governance::call_hash`).
    pub call_hash: String,
    /// Its effect class.
    pub effect: Effect,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// What an unanswered request becomes.
    pub on_timeout: OnTimeout,
    /// When the run asked.
    pub requested_at: DateTime<Utc>,
    /// When it expires if undecided.
    pub expires_at: DateTime<Utc>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Edited arguments of an approval.
    pub approved_arguments_json: Option<String>,
}

/// A person's decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Approved (else denied).
    pub approve: bool,
    /// Who decided (the principal).
    pub by: String,
    /// Why (told to the model on a denial).
    pub reason: String,
    /// Arguments to run the call with instead of the model's (approvals only).
    pub arguments_json: Option<String>,
}

/// What a decision or an expiry did to the run.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The approval, decided.
    pub approval: ApprovalRecord,
    /// The run, when the decision moved it: queued again (no call pending any more), or failed
    /// (an expiry whose policy fails the run).
    pub run: Option<RunRecord>,
}

/// ListApprovals filter.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    /// Only these states (empty = any).
    pub statuses: Vec<ApprovalStatus>,
    /// Only these namespaces (`None` = all).
    pub namespaces: Option<Vec<Namespace>>,
    /// Only this run's.
    pub run_id: Option<RunId>,
    /// Page size.
    pub limit: u32,
    /// From a previous page.
    pub page_token: Option<String>,
}

const COLUMNS: &str = "p.id, p.run_id, p.agent_id, a.name AS agent_name, a.namespace AS agent_namespace, p.call_id, \
     p.tool_name, p.arguments_json, p.call_hash, p.effect, p.status, p.on_timeout, p.requested_at, p.expires_at, \
     p.decided_at, p.decided_by, p.reason, p.approved_arguments_json";

fn from_row(r: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    let corrupt = |what: &str, v: String| StoreError::Corrupt(format!("approvals.{what}: '{v}'"));
    let effect: String = r.try_get("effect")?;
    let status: String = r.try_get("status")?;
    Ok(ApprovalRecord {
        id: r.try_get("id")?,
        run_id: RunId::from_string(r.try_get::<String, _>("run_id")?),
        agent_id: AgentId::from_string(r.try_get::<String, _>("agent_id")?),
        agent_name: r.try_get("agent_name")?,
        namespace: Namespace::from_stored(r.try_get::<String, _>("agent_namespace")?),
        call_id: r.try_get("call_id")?,
        tool_name: r.try_get("tool_name")?,
        arguments_json: r.try_get("arguments_json")?,
        call_hash: r.try_get("call_hash")?,
        effect: Effect::parse(&effect).ok_or_else(|| corrupt("effect", effect.clone()))?,
        status: ApprovalStatus::parse(&status).ok_or_else(|| corrupt("status", status.clone()))?,
        on_timeout: OnTimeout::parse(&r.try_get::<String, _>("on_timeout")?),
        requested_at: time_col(r, "requested_at")?.unwrap_or_default(),
        expires_at: time_col(r, "expires_at")?.unwrap_or_default(),
        decided_at: time_col(r, "decided_at")?,
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
        approved_arguments_json: r.try_get("approved_arguments_json")?,
    })
}

async fn approval_in_tx(tx: &mut AnyConnection, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM approvals p JOIN agents a ON a.id = p.agent_id WHERE p.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?;
    row.as_ref().map(from_row).transpose()
}

/// Every approval of a run (the decisions a resumed attempt reads), oldest first.
pub(crate) async fn of_run_in_tx(tx: &mut AnyConnection, run: &RunId) -> Result<Vec<ApprovalRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM approvals p JOIN agents a ON a.id = p.agent_id WHERE p.run_id = $1 \
         ORDER BY p.requested_at, p.call_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run.as_str()).fetch_all(&mut *tx).await?;
    rows.iter().map(from_row).collect()
}

async fn pending_of_run(tx: &mut AnyConnection, run: &RunId) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM approvals WHERE run_id = $1 AND status = 'pending'")
        .bind(run.as_str())
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?)
}

/// Queues a parked run again once none of its calls is pending (unpublished: the manager
/// publishes it, and the outbox sweep does if that publish is lost).
async fn requeue_if_settled(tx: &mut AnyConnection, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
    if pending_of_run(tx, run).await? > 0 {
        return Ok(None);
    }
    let done = sqlx::query(
        "UPDATE runs SET status = 'queued', published = 0, not_before = NULL WHERE id = $1 AND status = 'awaiting_approval'",
    )
    .bind(run.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    read_run(&mut *tx, run).await
}

impl Store {
    /// Ends attempt `fence` of run `id` by parking it for approval of `calls`: records one
    /// request per call (a call asked for again keeps its request), adds the attempt's tokens,
    /// and drops the lease. If none of the calls is pending any more (decided while the attempt
    /// ran), the run is queued again instead of parked. Fenced like FinishRun.
    pub async fn park_for_approval(
        &self,
        id: &RunId,
        fence: impl Into<Fence>,
        calls: &[ApprovalCall],
        input: &ParkInput,
    ) -> Result<(RunRecord, Vec<ApprovalRecord>), StoreError> {
        let fence = fence.into();
        let now = self.now_ms();
        // The agent's lock is the transaction's first statement: on SQLite a transaction that
        // reads first and writes later fails at once (not after the busy timeout) when another
        // writer committed in between.
        let agent = sqlx::query("SELECT agent_id FROM runs WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {id}")))?
            .try_get::<String, _>("agent_id")?;
        let agent = AgentId::from_string(agent);
        let mut tx = self.pool.begin().await?;
        lock_agent(&mut tx, &agent).await?;
        let sql = format!(
            "UPDATE runs SET status = 'awaiting_approval', lease_expires_at = NULL, \
             input_tokens = input_tokens + $1, output_tokens = output_tokens + $2 WHERE id = $3 AND {}",
            fence.condition(5)
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(input.input_tokens).unwrap_or(i64::MAX))
            .bind(i64::try_from(input.output_tokens).unwrap_or(i64::MAX))
            .bind(id.as_str())
            .bind(i64::from(fence.attempt));
        if fence.bind_token(q).execute(&mut *tx).await?.rows_affected() == 0 {
            drop(tx);
            return Err(fenced(self.get_run(id).await?, id, fence.attempt));
        }
        let expires = ms_after(now, input.timeout);
        for c in calls {
            sqlx::query(
                "INSERT INTO approvals (id, run_id, agent_id, call_id, tool_name, arguments_json, call_hash, effect, \
                 status, on_timeout, requested_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11) ON CONFLICT (run_id, call_id) DO NOTHING",
            )
            .bind(uuid::Uuid::new_v4().simple().to_string())
            .bind(id.as_str())
            .bind(agent.as_str())
            .bind(&c.call_id)
            .bind(&c.tool_name)
            .bind(&c.arguments_json)
            .bind(nightshift_core::governance::call_hash(&c.tool_name, &c.arguments_json))
            .bind(c.effect.as_str())
            .bind(input.on_timeout.as_str())
            .bind(now)
            .bind(expires)
            .execute(&mut *tx)
            .await?;
        }
        let run = match requeue_if_settled(&mut tx, id).await? {
            Some(run) => run,
            None => read_run(&mut *tx, id).await?.ok_or_else(|| StoreError::NotFound(format!("run {id}")))?,
        };
        let wanted: Vec<&str> = calls.iter().map(|c| c.call_id.as_str()).collect();
        let mut approvals = of_run_in_tx(&mut tx, id).await?;
        approvals.retain(|a| wanted.contains(&a.call_id.as_str()));
        tx.commit().await?;
        Ok((run, approvals))
    }

    /// One approval.
    pub async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM approvals p JOIN agents a ON a.id = p.agent_id WHERE p.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Approvals, newest first.
    pub async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Page<ApprovalRecord>, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {COLUMNS} FROM approvals p JOIN agents a ON a.id = p.agent_id WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let marks = |binds: &mut Vec<String>, values: Vec<String>| {
            // A leading NULL matches nothing and keeps an empty list valid SQL.
            let mut m = vec!["NULL".to_owned()];
            for v in values {
                binds.push(v);
                m.push(format!("${}", binds.len()));
            }
            m.join(", ")
        };
        if let Some(ns) = &filter.namespaces {
            let m = marks(&mut binds, ns.iter().map(ToString::to_string).collect());
            sql.push_str(&format!(" AND a.namespace IN ({m})"));
        }
        if !filter.statuses.is_empty() {
            let m = marks(&mut binds, filter.statuses.iter().map(|s| s.as_str().to_owned()).collect());
            sql.push_str(&format!(" AND p.status IN ({m})"));
        }
        if let Some(run) = &filter.run_id {
            binds.push(run.to_string());
            sql.push_str(&format!(" AND p.run_id = ${}", binds.len()));
        }
        let mut after_ms = None;
        if let Some(token) = &filter.page_token {
            let (ms, id) = token
                .split_once('/')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| StoreError::Invalid("page_token: not a token from a previous page".into()))?;
            binds.push(id);
            let i = binds.len();
            sql.push_str(&format!(
                " AND (p.requested_at < ${} OR (p.requested_at = ${} AND p.id < ${i}))",
                i + 1,
                i + 1
            ));
            after_ms = Some(ms);
        }
        sql.push_str(&format!(" ORDER BY p.requested_at DESC, p.id DESC LIMIT {}", limit + 1));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        if let Some(ms) = after_ms {
            q = q.bind(ms);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|a| format!("{}/{}", time::to_millis(a.requested_at), a.id))
        } else {
            None
        };
        Ok(Page { items, next_page_token })
    }

    /// Records a person's decision on a pending approval; the run is queued again once none of
    /// its calls is pending. `FailedPrecondition` when it was decided already, expired, or its
    /// run no longer waits (cancelled).
    pub async fn decide_approval(&self, id: &str, verdict: &Verdict) -> Result<Decided, StoreError> {
        let now = self.now_ms();
        let agent =
            self.get_approval(id).await?.ok_or_else(|| StoreError::NotFound(format!("approval {id}")))?.agent_id;
        let mut tx = self.pool.begin().await?;
        // First (see park_for_approval), then the approval as it is under the lock.
        lock_agent(&mut tx, &agent).await?;
        let found = approval_in_tx(&mut tx, id).await?.ok_or_else(|| StoreError::NotFound(format!("approval {id}")))?;
        let run = read_run(&mut *tx, &found.run_id).await?;
        if run.as_ref().is_none_or(|r| r.status != RunStatus::AwaitingApproval) {
            let status = run.map_or_else(|| "gone".to_owned(), |r| r.status.to_string());
            return Err(StoreError::FailedPrecondition(format!(
                "run {} is {status}: it no longer waits for approval {id}",
                found.run_id
            )));
        }
        let status = if verdict.approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        let done = sqlx::query(
            "UPDATE approvals SET status = $1, decided_at = $2, decided_by = $3, reason = $4, approved_arguments_json = $5 \
             WHERE id = $6 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(&verdict.by)
        .bind(&verdict.reason)
        .bind(verdict.arguments_json.clone().filter(|_| verdict.approve))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let current = approval_in_tx(&mut tx, id).await?.map(|a| a.status.as_str()).unwrap_or("gone");
            return Err(StoreError::FailedPrecondition(format!("approval {id} is {current}, not pending")));
        }
        let run = requeue_if_settled(&mut tx, &found.run_id).await?;
        let approval =
            approval_in_tx(&mut tx, id).await?.ok_or_else(|| StoreError::NotFound(format!("approval {id}")))?;
        tx.commit().await?;
        Ok(Decided { approval, run })
    }

    /// Pending approvals whose time ran out before `now`, oldest first (for the sweep).
    pub async fn expired_approvals(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(self.now_ms())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("id")?)).collect()
    }

    /// Expires approval `id` if it is still pending past its time: per its policy the call is
    /// denied (the run is queued again once nothing else is pending) or the run fails. `None`
    /// when someone decided first.
    pub async fn expire_approval(&self, id: &str) -> Result<Option<Decided>, StoreError> {
        let now = self.now_ms();
        let Some(agent) = self.get_approval(id).await?.map(|a| a.agent_id) else { return Ok(None) };
        let mut tx = self.pool.begin().await?;
        // First (see park_for_approval), then the approval as it is under the lock.
        lock_agent(&mut tx, &agent).await?;
        let Some(found) = approval_in_tx(&mut tx, id).await? else { return Ok(None) };
        let done = sqlx::query(
            "UPDATE approvals SET status = 'expired', decided_at = $1 WHERE id = $2 AND status = 'pending' AND expires_at <= $1",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let run = match found.on_timeout {
            OnTimeout::Deny => requeue_if_settled(&mut tx, &found.run_id).await?,
            OnTimeout::Fail => {
                let error = format!(
                    "nobody approved the call to {} (approval {id}) in time; the agent's policy fails the run",
                    found.tool_name
                );
                sqlx::query(
                    "UPDATE approvals SET status = 'expired', decided_at = $1 WHERE run_id = $2 AND status = 'pending'",
                )
                .bind(now)
                .bind(found.run_id.as_str())
                .execute(&mut *tx)
                .await?;
                let failed = sqlx::query(
                    "UPDATE runs SET status = 'failed', error = $1, finished_at = $2 WHERE id = $3 AND status = 'awaiting_approval'",
                )
                .bind(&error)
                .bind(now)
                .bind(found.run_id.as_str())
                .execute(&mut *tx)
                .await?;
                if failed.rows_affected() == 1 { read_run(&mut *tx, &found.run_id).await? } else { None }
            }
        };
        let approval =
            approval_in_tx(&mut tx, id).await?.ok_or_else(|| StoreError::NotFound(format!("approval {id}")))?;
        tx.commit().await?;
        Ok(Some(Decided { approval, run }))
    }
}
