//! Summarize: compacting the episodic history of a scope into one summary record written by an
//! LLM, and what happens to the records it replaces ([`Retention`]).
//!
//! Two ways in: the Summarize RPC (a caller's budget and retention), and automatically after a
//! Store of episodes ([`AutoSummarize`], from `[summarizer]`). The automatic one is the memory
//! service's job, not the worker's: the service owns the history, the summarizer model and the
//! retention policy, so every writer (workers, operators with `grpcurl`) gets the same compaction,
//! and a run does not wait for an LLM call it has no use for.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

use nightshift_llm::{ChatModel, ChatRequest};

use super::{MemoryService, Summarizer};
use crate::error::MemoryError;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope, to_millis_precision};

/// What happens to the records a summary replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep them as they are.
    Keep,
    /// Exclude them from Recall; still readable by id.
    Archive,
    /// Delete them.
    Delete,
}

/// When an episodic history is too long: over either limit (0 = no limit of that kind).
/// A summary keeps the newest records within half of each limit and replaces the older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Estimated tokens ([`estimate_tokens`]) of the unarchived history.
    pub tokens: usize,
    /// Unarchived records (episodes and earlier summaries).
    pub records: usize,
}

impl Budget {
    /// True when nothing is ever over this budget.
    pub fn is_unlimited(&self) -> bool {
        self.tokens == 0 && self.records == 0
    }

    /// How many of the newest records decide whether a history is over this budget: one more
    /// than the smaller limit (every record is at least one token, as content is never empty).
    /// `None` when unlimited.
    fn window(&self) -> Option<usize> {
        [self.tokens, self.records].into_iter().filter(|&n| n > 0).map(|n| n.saturating_add(1)).min()
    }

    fn exceeded_by(&self, tokens: usize, records: usize) -> bool {
        (self.tokens > 0 && tokens > self.tokens) || (self.records > 0 && records > self.records)
    }

    /// Whether `records` newest records of `tokens` still fit in what a summary keeps: half of
    /// each limit, so that the next few stores do not trigger another summary at once.
    fn keeps(&self, tokens: usize, records: usize) -> bool {
        (self.tokens == 0 || tokens <= self.tokens / 2) && (self.records == 0 || records <= self.records / 2)
    }
}

/// Rough token count (~4 characters per token for English text); good enough for budgets.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Most records one summary replaces.
const MAX_HISTORY: usize = 10_000;

const SUMMARY_SYSTEM: &str = "You compress the episodic memory of a background agent. Write one concise summary \
    of the entries below that keeps the facts, decisions, results, failures and open questions a later run \
    needs. Plain text, no preamble.";

/// The LLM call that summarizes `records` (oldest first). Public so that a test can ask a
/// seeded model the same question and compare.
pub fn summary_request(records: &[MemoryRecord]) -> ChatRequest {
    let mut prompt = String::from("Entries, oldest first:\n");
    for r in records {
        let tag = if r.summary { " (earlier summary)" } else { "" };
        prompt.push_str(&format!("- [{}{tag}] {}\n", r.created_at.to_rfc3339(), r.content));
    }
    ChatRequest::new(SUMMARY_SYSTEM, prompt)
}

/// Automatic summarization after a Store of episodes (`[summarizer]` budgets and retention).
#[derive(Debug, Clone)]
pub(super) struct AutoSummarize {
    pub(super) budget: Budget,
    pub(super) retention: Retention,
    /// Scopes with an automatic task in this process, and whether another Store arrived
    /// meanwhile (then the task goes round once more instead of a second task queueing behind
    /// the first on the scope's lock).
    running: Arc<Mutex<HashMap<Scope, bool>>>,
}

impl AutoSummarize {
    pub(super) fn new(budget: Budget, retention: Retention) -> Self {
        Self { budget, retention, running: Arc::default() }
    }

    /// Claims `scope` for a new task; false if one is running (it is told to go round again).
    fn claim(&self, scope: &Scope) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(scope) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                running.insert(scope.clone(), false);
                true
            }
        }
    }

    /// Ends a pass over `scope`: true if the task must go round again.
    fn again(&self, scope: &Scope) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(scope) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(scope);
                false
            }
        }
    }
}

/// The scopes being summarized in this process, whoever asked (the Summarize RPC or a Store's
/// automatic pass): two passes over one scope at once would summarize the same episodes twice.
#[derive(Debug, Default)]
pub(super) struct ScopeLocks(Mutex<HashMap<Scope, Arc<tokio::sync::Mutex<()>>>>);

impl ScopeLocks {
    /// Waits until no other pass holds `scope`, then holds it until the guard is dropped.
    async fn lock(self: &Arc<Self>, scope: &Scope) -> ScopeGuard {
        let lock = self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(scope.clone()).or_default().clone();
        ScopeGuard { locks: self.clone(), scope: scope.clone(), guard: Some(lock.lock_owned().await) }
    }
}

/// A scope held by one summarizing pass.
struct ScopeGuard {
    locks: Arc<ScopeLocks>,
    scope: Scope,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let mut locks = self.locks.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under the map's lock: held by the map and this guard alone, nobody
        // waits for the scope, and its entry goes (the map would otherwise grow with every scope
        // ever summarized).
        if let Some(guard) = self.guard.take()
            && Arc::strong_count(OwnedMutexGuard::mutex(&guard)) == 2
        {
            locks.remove(&self.scope);
        }
    }
}

impl MemoryService {
    /// Summarizes the episodic history of `scope` when it exceeds `budget`: the oldest records
    /// (keeping the newest within half the budget) are replaced by one summary record written by
    /// `model`, and handled per `retention`. Returns the summary (none if within budget) and how
    /// many records it replaced. One pass per scope at a time in this process: a second waits.
    pub async fn summarize_scope(
        &self,
        model: &dyn ChatModel,
        scope: &Scope,
        budget: Budget,
        retention: Retention,
    ) -> Result<(Option<MemoryRecord>, usize), MemoryError> {
        let Some(window) = budget.window() else { return Ok((None, 0)) };
        let _held = self.summarizing.lock(scope).await;
        let store = self.store(MemoryType::Episodic);
        // Newest first. This runs after every Store of an episode: read only what decides
        // whether the history is over budget, not the whole history.
        let mut history = store.recent(&RecallQuery::new(scope.clone(), MemoryType::Episodic, window)).await?;
        let total: usize = history.iter().map(|r| estimate_tokens(&r.content)).sum();
        if !budget.exceeded_by(total, history.len()) {
            return Ok((None, 0));
        }
        if history.len() == window {
            // Over budget, and there may be more: the summary replaces the whole older history
            // (bounded so one call cannot load an unbounded one).
            history = store.recent(&RecallQuery::new(scope.clone(), MemoryType::Episodic, MAX_HISTORY)).await?;
        }
        let mut kept_tokens = 0;
        let mut split = 0;
        for r in &history {
            let t = estimate_tokens(&r.content);
            if !budget.keeps(kept_tokens + t, split + 1) {
                break;
            }
            kept_tokens += t;
            split += 1;
        }
        let mut old: Vec<MemoryRecord> = history[split..].to_vec();
        if old.len() < 2 && split > 0 {
            // Summarizing a single record saves little; fold in the next newest as well.
            split -= 1;
            old = history[split..].to_vec();
        }
        old.reverse();
        let answer = model.chat(&summary_request(&old)).await.map_err(|e| MemoryError::backend("summarizer", e))?;
        let content = answer.content.trim().to_owned();
        if content.is_empty() {
            return Err(MemoryError::backend("summarizer", "the model returned an empty summary"));
        }
        let newest = old.last().map(|r| r.created_at).unwrap_or_else(|| self.clock.now());
        let ids: Vec<String> = old.iter().map(|r| r.id.clone()).collect();
        let summary = MemoryRecord {
            id: uuid::Uuid::now_v7().to_string(),
            kind: MemoryType::Episodic,
            scope: scope.clone(),
            content,
            metadata: [
                ("summarized_records".to_owned(), old.len().to_string()),
                ("summary_from".to_owned(), old.first().map(|r| r.created_at.to_rfc3339()).unwrap_or_default()),
                ("summary_to".to_owned(), newest.to_rfc3339()),
                // Provenance: the model the server says wrote it.
                ("summarized_by".to_owned(), answer.model.clone()),
            ]
            .into(),
            run_id: String::new(),
            // Where the history it replaces ended, so Recall keeps chronological order.
            created_at: to_millis_precision(newest),
            expires_at: None,
            summary: true,
            archived: false,
        };
        self.store_records(vec![summary.clone()]).await?;
        match retention {
            Retention::Keep => {}
            Retention::Archive => {
                store.set_archived(scope, &ids, true).await?;
            }
            Retention::Delete => {
                store.delete(scope, Some(MemoryType::Episodic), &ids).await?;
                if let Some(index) = &self.index
                    && self.indexed.contains(&MemoryType::Episodic)
                {
                    index.delete(&ids).await?;
                }
            }
        }
        tracing::info!(
            agent = %scope.agent_id,
            session = %scope.session,
            summarized = old.len(),
            kept = split,
            "episodic history summarized"
        );
        Ok((Some(summary), old.len()))
    }

    /// After a Store: summarizes, in the background, each of `scopes` whose episodic history is
    /// now over the automatic budget. Does nothing without a summarizer or automatic budget.
    /// Failures are logged and counted; the next Store of the scope tries again.
    pub(super) fn summarize_in_background(&self, scopes: impl IntoIterator<Item = Scope>) {
        let Some(Summarizer { model, auto: Some(auto) }) = &self.summarizer else { return };
        for scope in scopes {
            if !auto.claim(&scope) {
                continue;
            }
            let (me, model, auto) = (self.clone(), model.clone(), auto.clone());
            tokio::spawn(async move {
                loop {
                    match me.summarize_scope(model.as_ref(), &scope, auto.budget, auto.retention).await {
                        Ok((Some(_), _)) => count_summary("auto", "ok"),
                        Ok((None, _)) => {}
                        Err(e) => {
                            count_summary("auto", "error");
                            tracing::warn!(
                                agent = %scope.agent_id,
                                session = %scope.session,
                                error = %e,
                                "automatic summary failed; the next store of this scope tries again"
                            );
                        }
                    }
                    if !auto.again(&scope) {
                        break;
                    }
                }
            });
        }
    }
}

/// Counts a summary written (`ok`) or failed (`error`), by what asked for it (`auto`, `rpc`).
pub(super) fn count_summary(trigger: &'static str, outcome: &'static str) {
    metrics::counter!("nightshift_memory_summaries_total", "trigger" => trigger, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_exceeded_by_either_limit_and_keeps_half_of_each() {
        let b = Budget { tokens: 100, records: 4 };
        assert!(!b.exceeded_by(100, 4));
        assert!(b.exceeded_by(101, 1));
        assert!(b.exceeded_by(10, 5));
        assert!(b.keeps(50, 2) && !b.keeps(51, 1) && !b.keeps(1, 3));
        let tokens_only = Budget { tokens: 100, records: 0 };
        assert!(!tokens_only.exceeded_by(100, 10_000));
        assert!(tokens_only.keeps(50, 10_000));
        assert!(Budget::default().is_unlimited() && !Budget::default().exceeded_by(usize::MAX, usize::MAX));
    }

    #[test]
    fn the_window_read_to_decide_is_one_past_the_smaller_limit() {
        assert_eq!(Budget { tokens: 100, records: 4 }.window(), Some(5));
        assert_eq!(Budget { tokens: 3, records: 50 }.window(), Some(4));
        assert_eq!(Budget { tokens: 0, records: 50 }.window(), Some(51));
        assert_eq!(Budget { tokens: usize::MAX, records: 0 }.window(), Some(usize::MAX));
        assert_eq!(Budget::default().window(), None);
    }

    #[tokio::test]
    async fn a_second_pass_over_a_scope_waits_for_the_first_and_the_lock_goes_with_the_last() {
        let locks = Arc::new(ScopeLocks::default());
        let (a, b) = (Scope::new("a", "agent"), Scope::new("b", "agent"));
        let first = locks.lock(&a).await;
        let _other_scope = locks.lock(&b).await;
        let second = tokio::spawn({
            let (locks, a) = (locks.clone(), a.clone());
            async move { drop(locks.lock(&a).await) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the scope is held by the first pass");
        drop(first);
        second.await.unwrap();
        let held = locks.0.lock().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(held, [b], "nobody holds or waits for `a`: its entry is gone");
    }

    #[test]
    fn a_scope_is_claimed_once_and_goes_round_again_after_a_store_meanwhile() {
        let auto = AutoSummarize::new(Budget { tokens: 10, records: 0 }, Retention::Archive);
        let s = Scope::new("a", "agent");
        assert!(auto.claim(&s));
        assert!(!auto.claim(&s), "a second store while running does not start a second task");
        assert!(auto.again(&s), "it makes the running task go round once more");
        assert!(!auto.again(&s), "then the scope is released");
        assert!(auto.claim(&s));
    }
}
