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

use nightshift_llm::{ChatModel, ChatRequest};

use super::MemoryService;
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
    /// A budget of `tokens` only.
    pub fn tokens(tokens: usize) -> Self {
        Self { tokens, records: 0 }
    }

    /// True when nothing is ever over this budget.
    pub fn is_unlimited(&self) -> bool {
        self.tokens == 0 && self.records == 0
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

const SUMMARY_SYSTEM: &str = "You compress the episodic memory of a background agent. Write one concise summary \
    of the entries below that keeps the facts, decisions, results, failures and open questions a later run \
    needs. Plain text, no preamble.";

/// Automatic summarization after a Store of episodes (`[summarizer]` budgets and retention).
#[derive(Debug, Clone)]
pub(super) struct AutoSummarize {
    pub(super) budget: Budget,
    pub(super) retention: Retention,
    /// Scopes being summarized by this process, and whether another Store arrived meanwhile
    /// (then the task goes round once more instead of a second task racing the first).
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

impl MemoryService {
    /// Summarizes the episodic history of `scope` when it exceeds `budget`: the oldest records
    /// (keeping the newest within half the budget) are replaced by one summary record written by
    /// `model`, and handled per `retention`. Returns the summary (none if within budget) and how
    /// many records it replaced.
    pub async fn summarize_scope(
        &self,
        model: &dyn ChatModel,
        scope: &Scope,
        budget: Budget,
        retention: Retention,
    ) -> Result<(Option<MemoryRecord>, usize), MemoryError> {
        let store = self.store(MemoryType::Episodic);
        // Newest first; bounded so one call cannot load an unbounded history.
        let history = store.recent(&RecallQuery::new(scope.clone(), MemoryType::Episodic, 10_000)).await?;
        let total: usize = history.iter().map(|r| estimate_tokens(&r.content)).sum();
        if !budget.exceeded_by(total, history.len()) {
            return Ok((None, 0));
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
        let mut prompt = String::from("Entries, oldest first:\n");
        for r in &old {
            let tag = if r.summary { " (earlier summary)" } else { "" };
            prompt.push_str(&format!("- [{}{tag}] {}\n", r.created_at.to_rfc3339(), r.content));
        }
        let answer = model
            .chat(&ChatRequest::new(SUMMARY_SYSTEM, prompt))
            .await
            .map_err(|e| MemoryError::backend("summarizer", e))?;
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
        let (Some(model), Some(auto)) = (&self.summarizer, &self.auto_summarize) else { return };
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
        let tokens_only = Budget::tokens(100);
        assert!(!tokens_only.exceeded_by(100, 10_000));
        assert!(tokens_only.keeps(50, 10_000));
        assert!(Budget::default().is_unlimited() && !Budget::default().exceeded_by(usize::MAX, usize::MAX));
    }

    #[test]
    fn a_scope_is_claimed_once_and_goes_round_again_after_a_store_meanwhile() {
        let auto = AutoSummarize::new(Budget::tokens(10), Retention::Archive);
        let s = Scope::new("a", "agent");
        assert!(auto.claim(&s));
        assert!(!auto.claim(&s), "a second store while running does not start a second task");
        assert!(auto.again(&s), "it makes the running task go round once more");
        assert!(!auto.again(&s), "then the scope is released");
        assert!(auto.claim(&s));
    }
}
