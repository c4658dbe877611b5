//! The cost ledger's sums (`llm_calls`, written with each LLM step by `checkpoint.rs`): by
//! agent, model or namespace since an instant, within namespaces.
use chrono::{DateTime, Utc};
use nightshift_core::{Namespace, time};
use sqlx::Row;

use crate::db::{Store, u64_col};
use crate::error::StoreError;

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
