//! Summarize: compacting the episodic history of a scope into one summary record written by an
//! LLM, and what happens to the records it replaces ([`Retention`]).
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

/// Rough token count (~4 characters per token for English text); good enough for budgets.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

const SUMMARY_SYSTEM: &str = "You compress the episodic memory of a background agent. Write one concise summary \
    of the entries below that keeps the facts, decisions, results, failures and open questions a later run \
    needs. Plain text, no preamble.";

impl MemoryService {
    /// Summarizes the episodic history of `scope` when it exceeds `budget` tokens: the oldest
    /// records (keeping the newest that fit in half the budget) are replaced by one summary record
    /// written by `model`, and handled per `retention`. Returns the summary (none if within
    /// budget) and how many records it replaced.
    pub async fn summarize_scope(
        &self,
        model: &dyn ChatModel,
        scope: &Scope,
        budget: usize,
        retention: Retention,
    ) -> Result<(Option<MemoryRecord>, usize), MemoryError> {
        let store = self.store(MemoryType::Episodic);
        // Newest first; bounded so one call cannot load an unbounded history.
        let history = store.recent(&RecallQuery::new(scope.clone(), MemoryType::Episodic, 10_000)).await?;
        let total: usize = history.iter().map(|r| estimate_tokens(&r.content)).sum();
        if total <= budget {
            return Ok((None, 0));
        }
        let mut kept_tokens = 0;
        let mut split = 0;
        for r in &history {
            let t = estimate_tokens(&r.content);
            if kept_tokens + t > budget / 2 {
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
        Ok((Some(summary), old.len()))
    }
}
