//! Scheduler persistence: schedule progress (`last_tick`), firing ticks as runs, and the outbox
//! flag of the runs handed to the queue. The shard leases are in `shards.rs`.
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use nightshift_core::admission::{self, FireDecision};
use nightshift_core::{AgentId, AgentState, OverlapPolicy, RunId, RunStatus, Schedule, time};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::agents::decode_spec;
use crate::db::{Backend, Store, u32_col, u64_col};
use crate::error::StoreError;

/// An agent as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledAgent {
    /// Agent.
    pub agent_id: AgentId,
    /// Name (for logs and ScheduleInfo).
    pub name: String,
    /// Its namespace (stamped on its events).
    pub namespace: nightshift_core::Namespace,
    /// Spec version.
    pub version: u64,
    /// Paused agents never fire.
    pub paused: bool,
    /// The schedule.
    pub schedule: Schedule,
    /// Its overlap policy (what [`Store::fire_ticks`] admits).
    pub overlap: OverlapPolicy,
    /// The newest handled tick, or the creation time if none: planning starts after it.
    pub anchor: DateTime<Utc>,
    /// Ticks fired so far.
    pub fired: u64,
    /// Ticks missed so far (misfire policy).
    pub missed: u64,
    /// Last change of the agent row.
    pub updated_at: DateTime<Utc>,
}

/// What [`Store::fire_ticks`] did with one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// Recorded now, queued: to be handed to the queue.
    Created,
    /// Recorded now as skipped (`admission::decide_fire`): not to be handed to the queue.
    Skipped {
        /// Why, as recorded on the run.
        reason: String,
    },
    /// Already recorded (fired twice: another replica, or before a restart).
    Existed,
    /// Not recorded: the agent no longer exists.
    NoAgent,
}

/// One tick to record as fired (or missed) in [`Store::fire_ticks`].
#[derive(Debug, Clone)]
pub struct TickFire {
    /// Agent.
    pub agent_id: AgentId,
    /// Runs to create (deterministic ids), with their nominal ticks.
    pub runs: Vec<(RunId, DateTime<Utc>)>,
    /// The newest tick handled (fired or missed).
    pub last_tick: DateTime<Utc>,
    /// Ticks counted as missed.
    pub missed: u64,
    /// The agent's overlap policy: under `skip`, a tick fired while the agent's previous run
    /// waits unstarted in the queue is recorded as skipped ([`admission::decide_fire`]).
    pub overlap: OverlapPolicy,
}

const SCHEDULED_SQL: &str = "SELECT a.id, a.name, a.version, a.state, a.spec, a.created_at, a.updated_at, \
    s.last_tick, COALESCE(s.fired, 0) AS fired, COALESCE(s.missed, 0) AS missed \
    FROM agents a LEFT JOIN schedule_state s ON s.agent_id = a.id";

fn scheduled_from_row(row: &AnyRow) -> Result<ScheduledAgent, StoreError> {
    let spec = decode_spec(&row.try_get::<Vec<u8>, _>("spec")?)?;
    let last: Option<i64> = row.try_get("last_tick")?;
    let created: i64 = row.try_get("created_at")?;
    let state: String = row.try_get("state")?;
    Ok(ScheduledAgent {
        agent_id: AgentId::from_string(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        namespace: spec.namespace.clone(),
        version: u64_col(row, "version")?,
        paused: state == AgentState::Paused.as_str(),
        overlap: spec.policy.overlap,
        schedule: spec.schedule,
        anchor: time::from_millis(last.unwrap_or(created)),
        fired: u64_col(row, "fired")?,
        missed: u64_col(row, "missed")?,
        updated_at: time::from_millis(row.try_get("updated_at")?),
    })
}

/// Rows per multi-row statement of [`Store::fire_ticks`] (at most 4 parameters per row: well
/// under SQLite's and Postgres' parameter limits). Not more: sqlx looks up each SQLite parameter
/// by name, a scan of the statement's parameter list, so binding costs the square of a
/// statement's parameters — at 500 rows it was 7 % of the process's CPU with 10,000 agents due
/// every second (`nightshift-bench e2e`); at 128 it is a quarter of that per row.
const FIRE_BATCH: usize = 128;

/// `($first, $first+1, ...), (...)`: `rows` tuples of `width` numbered placeholders.
fn values_placeholders(rows: usize, width: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * width + c).to_string());
        }
        out.push(')');
    }
    out
}

/// `$1, $2, ...`: an `IN` list of `n` placeholders.
fn in_placeholders(n: usize) -> String {
    numbered_placeholders(n, 1)
}

/// `$first, $first+1, ...`: `n` placeholders.
fn numbered_placeholders(n: usize, first: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// One run of [`Store::fire_ticks`] to insert: queued, or skipped for `reason`.
struct FiredRow<'a> {
    run: &'a RunId,
    tick: DateTime<Utc>,
    agent: &'a AgentId,
    reason: Option<String>,
}

/// Inserts fired runs as `status` (`Queued`, or `Skipped` with each row's reason) in multi-row
/// statements; returns the ids created (not those that existed).
async fn insert_fired(
    tx: &mut sqlx::AnyConnection,
    now: i64,
    rows: &[FiredRow<'_>],
    status: RunStatus,
) -> Result<HashSet<String>, StoreError> {
    let mut created = HashSet::with_capacity(rows.len());
    let skipped = status == RunStatus::Skipped;
    for chunk in rows.chunks(FIRE_BATCH) {
        let sql = if skipped {
            format!(
                "INSERT INTO runs (id, agent_id, agent_version, status, trigger_kind, scheduled_for, created_at, \
                 finished_at, reason) \
                 SELECT v.column1, a.id, a.version, 'skipped', 'schedule', v.column2, $1, $1, v.column4 \
                 FROM (VALUES {}) AS v JOIN agents a ON a.id = v.column3 WHERE true \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                values_placeholders(chunk.len(), 4, 2)
            )
        } else {
            format!(
                "INSERT INTO runs (id, agent_id, agent_version, status, trigger_kind, scheduled_for, created_at) \
                 SELECT v.column1, a.id, a.version, 'queued', 'schedule', v.column2, $1 \
                 FROM (VALUES {}) AS v JOIN agents a ON a.id = v.column3 WHERE true \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                values_placeholders(chunk.len(), 3, 2)
            )
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for r in chunk {
            q = q.bind(r.run.as_str()).bind(time::to_millis(r.tick)).bind(r.agent.as_str());
            if skipped {
                q = q.bind(r.reason.as_deref().unwrap_or_default());
            }
        }
        for row in q.fetch_all(&mut *tx).await? {
            created.insert(row.try_get("id")?);
        }
    }
    Ok(created)
}

/// The pending run ([`admission::decide_fire`]) of each agent of `fires` whose overlap policy
/// skips: queued, handed to the queue at least [`admission::PENDING_AFTER`] before `now` (the
/// `published` flag holds when it was set) and not started since.
async fn pending_runs(
    tx: &mut sqlx::AnyConnection,
    fires: &[TickFire],
    now: i64,
) -> Result<HashMap<String, RunId>, StoreError> {
    let agents: Vec<&AgentId> =
        fires.iter().filter(|f| f.overlap == OverlapPolicy::Skip && !f.runs.is_empty()).map(|f| &f.agent_id).collect();
    let cutoff = now - i64::try_from(admission::PENDING_AFTER.as_millis()).unwrap_or(i64::MAX);
    let mut pending = HashMap::new();
    for chunk in agents.chunks(FIRE_BATCH) {
        let sql = format!(
            "SELECT agent_id, MIN(id) AS id FROM runs WHERE status = 'queued' AND published > 0 \
             AND published <= $1 AND agent_id IN ({}) GROUP BY agent_id",
            numbered_placeholders(chunk.len(), 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff);
        for a in chunk {
            q = q.bind(a.as_str());
        }
        for row in q.fetch_all(&mut *tx).await? {
            pending.insert(row.try_get("agent_id")?, RunId::from_string(row.try_get::<String, _>("id")?));
        }
    }
    Ok(pending)
}

/// A queued run whose request is not known to be in the queue ([`Store::stale_queued_runs`]).
#[derive(Debug, Clone)]
pub struct StaleRun {
    /// The run.
    pub run: RunId,
    /// Its agent.
    pub agent: AgentId,
    /// Its schedule tick (scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Attempts so far: non-zero for a run that lease recovery put back (its request's dedup id).
    pub attempt: u32,
}

impl Store {
    /// Every agent with its schedule and progress.
    pub async fn scheduled_agents(&self) -> Result<Vec<ScheduledAgent>, StoreError> {
        let rows = sqlx::query(SCHEDULED_SQL).fetch_all(&self.pool).await?;
        rows.iter().map(scheduled_from_row).collect()
    }

    /// Agents changed at or after `since` (spec, pause/resume).
    pub async fn scheduled_agents_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<ScheduledAgent>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{SCHEDULED_SQL} WHERE a.updated_at >= $1")))
            .bind(time::to_millis(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(scheduled_from_row).collect()
    }

    /// One agent's schedule.
    pub async fn scheduled_agent(&self, id: &AgentId) -> Result<Option<ScheduledAgent>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SCHEDULED_SQL} WHERE a.id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(scheduled_from_row).transpose()
    }

    /// Records fired ticks in one transaction: the runs (queued, or skipped when
    /// [`admission::decide_fire`] says so; an existing id is left alone, which makes a tick fired
    /// twice a no-op) and the schedules' progress. Returns, per run, what happened to it. Each
    /// agent must appear at most once in `fires`.
    ///
    /// Rows are written with multi-row statements of up to [`FIRE_BATCH`] rows: a pass of
    /// 10,000 due agents is about 160 statements instead of 20,000, which is what keeps the fire
    /// lag of a large herd of agents due in the same millisecond within the tick.
    pub async fn fire_ticks(&self, fires: &[TickFire]) -> Result<Vec<Vec<TickOutcome>>, StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        // Progress first: it is a write, so on SQLite the transaction holds the write lock from
        // its first statement and never has to upgrade a read snapshot.
        for chunk in fires.chunks(FIRE_BATCH) {
            let sql = format!(
                "INSERT INTO schedule_state (agent_id, last_tick, fired, missed, updated_at) \
                 SELECT v.column1, v.column2, v.column3, v.column4, $1 FROM (VALUES {}) AS v \
                 WHERE v.column1 IN (SELECT id FROM agents) \
                 ON CONFLICT (agent_id) DO UPDATE SET \
                   last_tick = CASE WHEN excluded.last_tick > schedule_state.last_tick THEN excluded.last_tick ELSE schedule_state.last_tick END, \
                   fired = schedule_state.fired + excluded.fired, missed = schedule_state.missed + excluded.missed, \
                   updated_at = excluded.updated_at",
                values_placeholders(chunk.len(), 4, 2)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for f in chunk {
                q = q
                    .bind(f.agent_id.as_str())
                    .bind(time::to_millis(f.last_tick))
                    .bind(f.runs.len() as i64)
                    .bind(i64::try_from(f.missed).unwrap_or(i64::MAX));
            }
            q.execute(&mut *tx).await?;
        }
        let pending = pending_runs(&mut tx, fires, now).await?;
        let (mut queued, mut skipped) = (Vec::new(), Vec::new());
        for f in fires {
            for (run, tick) in &f.runs {
                match admission::decide_fire(f.overlap, pending.get(f.agent_id.as_str())) {
                    FireDecision::Queue => queued.push(FiredRow { run, tick: *tick, agent: &f.agent_id, reason: None }),
                    FireDecision::Skip { reason } => {
                        skipped.push(FiredRow { run, tick: *tick, agent: &f.agent_id, reason: Some(reason) })
                    }
                }
            }
        }
        let created = insert_fired(&mut tx, now, &queued, RunStatus::Queued).await?;
        let created_skipped = insert_fired(&mut tx, now, &skipped, RunStatus::Skipped).await?;
        let reasons: HashMap<&str, &str> =
            skipped.iter().filter_map(|r| Some((r.run.as_str(), r.reason.as_deref()?))).collect();
        // Runs not created either existed (a tick fired twice: another replica, or before a
        // restart) or lost their agent (deleted since the scheduler loaded it). Rare: only
        // these are looked up.
        let missing: Vec<&RunId> = queued
            .iter()
            .chain(&skipped)
            .map(|r| r.run)
            .filter(|r| !created.contains(r.as_str()) && !created_skipped.contains(r.as_str()))
            .collect();
        let mut existed: HashSet<String> = HashSet::new();
        for chunk in missing.chunks(FIRE_BATCH) {
            let sql = format!("SELECT id FROM runs WHERE id IN ({})", in_placeholders(chunk.len()));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.as_str());
            }
            for row in q.fetch_all(&mut *tx).await? {
                existed.insert(row.try_get("id")?);
            }
        }
        tx.commit().await?;
        Ok(fires
            .iter()
            .map(|f| {
                f.runs
                    .iter()
                    .map(|(r, _)| {
                        if let Some(reason) = reasons.get(r.as_str()).filter(|_| created_skipped.contains(r.as_str())) {
                            TickOutcome::Skipped { reason: (*reason).to_owned() }
                        } else if created.contains(r.as_str()) {
                            TickOutcome::Created
                        } else if existed.contains(r.as_str()) {
                            TickOutcome::Existed
                        } else {
                            TickOutcome::NoAgent
                        }
                    })
                    .collect()
            })
            .collect())
    }

    /// Restarts an agent's schedule from `at` (used on resume, so that ticks of the paused
    /// period are neither fired nor counted as missed).
    pub async fn reset_schedule_anchor(&self, id: &AgentId, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedule_state (agent_id, last_tick, updated_at) SELECT id, $1, $2 FROM agents WHERE id = $3 \
             ON CONFLICT (agent_id) DO UPDATE SET last_tick = excluded.last_tick, updated_at = excluded.updated_at",
        )
        .bind(time::to_millis(at))
        .bind(self.now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks runs as published to the queue (the outbox flag). The flag holds when it was set
    /// (unix ms; 0 = not published), which is how [`Store::fire_ticks`] tells a run that waits
    /// for a worker from one that was only just handed over.
    pub async fn mark_published(&self, runs: &[RunId]) -> Result<(), StoreError> {
        let now = self.now_ms();
        for chunk in runs.chunks(500) {
            let ids = numbered_placeholders(chunk.len(), 2);
            // Only a queued run's flag is ever read. On Postgres a row locked meanwhile is being
            // started (its StartRun's batch holds the lock until it commits): it needs no flag,
            // and waiting for it while holding the rows already updated deadlocked with those
            // batches. (SQLite's one writer has no row locks.)
            let sql = match self.backend {
                Backend::Postgres => format!(
                    "UPDATE runs SET published = $1 WHERE id IN \
                     (SELECT id FROM runs WHERE id IN ({ids}) AND status = 'queued' FOR UPDATE SKIP LOCKED)"
                ),
                Backend::Sqlite => format!("UPDATE runs SET published = $1 WHERE id IN ({ids}) AND status = 'queued'"),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for r in chunk {
                q = q.bind(r.as_str());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Clears the outbox flag of every queued run, so that the outbox sweep hands them to the
    /// queue again; returns how many. For a queue that does not outlive its process (`memory://`,
    /// `nightshift dev`): after a restart the runs it held are gone, and a queued run nobody
    /// delivers would never start — and, as a pending run, would keep its agent's ticks skipped.
    pub async fn unpublish_queued(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE runs SET published = 0 WHERE status = 'queued' AND published <> 0")
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Takes back ticks recorded ahead of their time that were never published (the agent was
    /// paused before the tick came, or the replica stops before it): deletes those of `runs`
    /// still queued and unpublished, lowers the fired count by as many, and moves the schedule's
    /// progress back from `recorded` to `restore` (unless it moved on meanwhile), so that the
    /// next owner of the schedule fires these ticks itself. Returns the runs deleted.
    pub async fn unprepare_ticks(
        &self,
        agent: &AgentId,
        runs: &[RunId],
        recorded: DateTime<Utc>,
        restore: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for chunk in runs.chunks(FIRE_BATCH) {
            let sql = format!(
                "DELETE FROM runs WHERE published = 0 AND status = 'queued' AND id IN ({})",
                in_placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.as_str());
            }
            deleted += q.execute(&mut *tx).await?.rows_affected();
        }
        if deleted > 0 {
            sqlx::query(
                "UPDATE schedule_state SET fired = fired - $1, \
                 last_tick = CASE WHEN last_tick = $2 THEN $3 ELSE last_tick END, updated_at = $4 \
                 WHERE agent_id = $5",
            )
            .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
            .bind(time::to_millis(recorded))
            .bind(time::to_millis(restore))
            .bind(self.now_ms())
            .bind(agent.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Queued runs created before `older_than` whose request never reached the queue (their
    /// publisher died between the store commit and the publish, or lease recovery put them back):
    /// to be published again.
    pub async fn stale_queued_runs(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<StaleRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, agent_id, scheduled_for, attempt FROM runs WHERE published = 0 AND status = 'queued' \
             AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(time::to_millis(older_than))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let at: Option<i64> = r.try_get("scheduled_for")?;
                Ok(StaleRun {
                    run: RunId::from_string(r.try_get::<String, _>("id")?),
                    agent: AgentId::from_string(r.try_get::<String, _>("agent_id")?),
                    scheduled_for: at.map(time::from_millis),
                    attempt: u32_col(r, "attempt")?,
                })
            })
            .collect()
    }
}
