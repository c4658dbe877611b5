//! The cost ledger at the manager: each checkpointed LLM answer becomes a ledger row priced at
//! the operator's price table (`[prices]`, `nightshift_core::cost`), and GetCosts sums the
//! ledger by agent, model or namespace.
use nightshift_core::cost::PriceTable;
use nightshift_core::{Namespaces, pb, time};
use nightshift_store::{CostGroup, LlmCall};
use tonic::Status;

use crate::error::status_from_store;
use crate::scope;
use crate::service::ManagerService;

impl ManagerService {
    /// The ledger row of a checkpointed LLM answer (the tokens its provider reported).
    pub(crate) fn ledger_entry(&self, r: &pb::LlmResponse) -> LlmCall {
        let usage = r.usage.unwrap_or_default();
        let cost_micros =
            self.prices().cost_micros(&r.model, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens);
        if let Some(cost) = cost_micros {
            metrics::counter!("nightshift_llm_cost_micro_usd_total", "model" => r.model.clone()).increment(cost);
        }
        LlmCall {
            model: r.model.clone(),
            input_tokens: usage.input_tokens,
            cached_input_tokens: usage.cached_input_tokens,
            output_tokens: usage.output_tokens,
            cost_micros,
        }
    }

    /// GetCosts, within the caller's namespaces.
    pub(crate) async fn costs_report(
        &self,
        scope: &Namespaces,
        req: pb::GetCostsRequest,
    ) -> Result<pb::GetCostsResponse, Status> {
        let group = match req.group_by() {
            pb::CostGrouping::Unspecified | pb::CostGrouping::Agent => CostGroup::Agent,
            pb::CostGrouping::Model => CostGroup::Model,
            pb::CostGrouping::Namespace => CostGroup::Namespace,
        };
        let since = match &req.since {
            None => None,
            Some(t) => Some(time::from_pb(t).ok_or_else(|| Status::invalid_argument("since: not a valid instant"))?),
        };
        let namespaces = scope::visible(scope, &req.namespace)?;
        let rows = self.store().costs(group, since, namespaces.as_deref()).await.map_err(status_from_store)?;
        Ok(pb::GetCostsResponse {
            rows: rows
                .into_iter()
                .map(|r| pb::CostRow {
                    key: r.key,
                    calls: r.calls,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_micro_usd: r.cost_micros,
                    unpriced_calls: r.unpriced_calls,
                })
                .collect(),
        })
    }
}

/// Validates the `[prices]` table.
pub(crate) fn checked(prices: &PriceTable) -> Result<PriceTable, crate::role::ManagerBuildError> {
    prices.validate().map_err(crate::role::ManagerBuildError::Governance)?;
    Ok(prices.clone())
}

/// The operator's namespace budgets (`[budgets.NAMESPACE]`), validated.
pub(crate) fn namespace_budgets(
    sections: &std::collections::BTreeMap<String, nightshift_core::budget::BudgetManifest>,
) -> Result<
    std::collections::BTreeMap<nightshift_core::Namespace, nightshift_core::budget::Budget>,
    crate::role::ManagerBuildError,
> {
    let mut out = std::collections::BTreeMap::new();
    for (ns, section) in sections {
        let prefix = format!("budgets.{ns}");
        let bad = |e: String| crate::role::ManagerBuildError::Governance(format!("[{prefix}]: {e}"));
        let namespace = nightshift_core::Namespace::parse(&prefix, ns).map_err(|e| bad(e.to_string()))?;
        let budget = section.to_budget(&prefix).map_err(|e| bad(e.to_string()))?;
        out.insert(namespace, budget);
    }
    Ok(out)
}
