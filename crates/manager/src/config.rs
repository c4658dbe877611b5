//! Manager options (`config/manager.toml`, env prefix `NIGHTSHIFT_MANAGER`).
use std::time::Duration;

use nightshift_queue::QueueSettings;
use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

/// Settings of the manager role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// `listen`, `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Lease granted when StartRun does not ask for one.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub default_lease_ttl: Duration,
    /// Scheduler to notify of schedule changes (`http://HOST:50052`); empty = none (the
    /// scheduler still picks changes up from the store within its sync interval).
    pub scheduler_endpoint: String,
    /// Work queue for manually triggered runs (`queue_url`: `nats://`, `redis://`; empty = none:
    /// the scheduler's sweep publishes them, after `republish_after`), `queue_name`,
    /// `queue_ack_wait`.
    #[serde(flatten)]
    pub queue: QueueSettings,
    /// Event service to publish agent lifecycle events to (`http://HOST:50055`); empty = none.
    pub events_endpoint: String,
    /// The workers' `[allow]` policy (keep it equal to theirs): agents that ask for another
    /// program, secret or private address are refused when applied.
    pub worker_allow: nightshift_core::operator_policy::OperatorPolicy,
    /// The operator's tool policy per namespace (`[governance.NAMESPACE]`, the shape of an
    /// agent's `governance:`): an agent's own policy can only tighten it.
    pub governance: std::collections::BTreeMap<String, nightshift_core::governance::manifest::GovernanceManifest>,
    /// The price of each model in USD per million tokens (`[prices."gpt-4o-mini"]`, `input`,
    /// `output`): the cost ledger prices every LLM call with it (a model is priced by its name
    /// or the longest configured prefix of it; an unpriced call costs nothing and is counted).
    pub prices: nightshift_core::cost::PriceTable,
    /// The operator's budget per namespace (`[budgets.NAMESPACE]`, the shape of an agent's
    /// `budget:`), checked with every agent's own.
    pub budgets: std::collections::BTreeMap<String, nightshift_core::budget::BudgetManifest>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50051"),
            database_url: "sqlite://nightshift.db".into(),
            default_lease_ttl: Duration::from_secs(30),
            scheduler_endpoint: String::new(),
            queue: QueueSettings::at(""),
            events_endpoint: String::new(),
            worker_allow: Default::default(),
            governance: Default::default(),
            prices: Default::default(),
            budgets: Default::default(),
        }
    }
}
