//! Fencing of a worker's calls on the attempt it holds: the attempt number and a random lease
//! token, both checked by the same `UPDATE` that acts, so no takeover slips in between.
use nightshift_core::{RunId, RunStatus};
use sqlx::Any;

use crate::error::StoreError;
use crate::model::RunRecord;

/// What a worker presents to act on the attempt it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The attempt number.
    pub attempt: u32,
    /// The attempt's lease token. `None` checks the attempt only: for in-process callers (tests,
    /// benchmarks) that drive the store directly; the manager always passes the token a worker
    /// sent, and refuses a call without one.
    pub token: Option<String>,
}

impl From<u32> for Fence {
    fn from(attempt: u32) -> Self {
        Self { attempt, token: None }
    }
}

impl Fence {
    /// Binds the token (when there is one) as the last parameter of [`Fence::condition`].
    pub(crate) fn bind_token<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        match &self.token {
            Some(token) => query.bind(token.clone()),
            None => query,
        }
    }

    /// The SQL condition that fences an update of `runs` (attempt `$n-1`, token `$n`).
    pub(crate) fn condition(&self, n: usize) -> String {
        self.condition_at(n - 1, n)
    }

    /// The same condition with the attempt in parameter `$attempt` and the token in `$token`.
    pub(crate) fn condition_at(&self, attempt: usize, token: usize) -> String {
        match self.token {
            Some(_) => format!("attempt = ${attempt} AND lease_token = ${token} AND status = 'running'"),
            None => format!("attempt = ${attempt} AND status = 'running'"),
        }
    }
}

/// Explains why a fenced call was refused.
pub(crate) fn fenced(run: Option<RunRecord>, id: &RunId, attempt: u32) -> StoreError {
    match run {
        None => StoreError::NotFound(format!("run {id}")),
        Some(r) if r.status != RunStatus::Running => {
            StoreError::Fenced(format!("run {id} is {} (no longer running); stop working on it", r.status))
        }
        Some(r) if r.attempt != attempt => StoreError::Fenced(format!(
            "stale fencing token for run {id}: attempt {attempt} was superseded by attempt {}",
            r.attempt
        )),
        Some(_) => StoreError::Fenced(format!("the lease token does not match the attempt holding run {id}")),
    }
}

/// A fresh lease token: 128 random bits as hex.
pub(crate) fn new_lease_token() -> String {
    rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect()
}
