//! What the agent loop does with each tool call the model asks for, under the agent's tool
//! policy and the operator's for its namespace (`nightshift_core::governance`): run it (marking
//! an irreversible call as started first), refuse it (denied by policy or by a person, expired,
//! or interrupted mid-call and not repeatable), or wait for a person's approval (the run parks).
use std::collections::{HashMap, HashSet};

use nightshift_core::governance::{self, ApprovalStatus, Decision, Effect, Resolution, ToolFacts, ToolPolicy, Verdict};
use nightshift_core::pb;
use nightshift_llm::ToolCall;
use nightshift_tools::{ToolRegistry, ToolSource};

/// The policies and decisions a run's calls are judged by.
#[derive(Debug, Clone, Default)]
pub struct Governance {
    /// The agent's `governance:`.
    pub agent: ToolPolicy,
    /// The operator's policy of the agent's namespace.
    pub namespace: Option<ToolPolicy>,
    /// The run's approvals so far, by call id.
    pub approvals: HashMap<String, pb::Approval>,
    /// Its per-run budget.
    pub budget: RunBudget,
    /// A replay's tool rules (ReplayRun).
    pub replay: Option<std::sync::Arc<crate::replay::Replay>>,
}

impl Governance {
    /// From what StartRun handed over; a namespace policy that does not validate here (a newer
    /// manager's) is applied as "everything needs approval" rather than ignored.
    pub fn new(agent: ToolPolicy, namespace: Option<&pb::GovernanceSpec>, approvals: Vec<pb::Approval>) -> Self {
        let namespace = namespace.map(|p| {
            ToolPolicy::from_pb("namespace_governance", p).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the namespace's tool policy does not validate here; every call needs approval");
                ToolPolicy::approve_everything()
            })
        });
        let approvals = approvals.into_iter().map(|a| (a.call_id.clone(), a)).collect();
        Self { agent, namespace, approvals, budget: RunBudget::default(), replay: None }
    }

    /// The verdict on calling `name` (unknown tools are left to the registry, which refuses
    /// them without running anything).
    pub fn verdict(&self, tools: &ToolRegistry, name: &str) -> Verdict {
        let Some(def) = tools.definition(name) else {
            return Verdict { action: governance::Action::Allow, effect: Effect::Read };
        };
        let qualified = match &def.source {
            ToolSource::Mcp { server, tool } => Some(format!("{server}.{tool}")),
            ToolSource::Local => None,
        };
        let facts = ToolFacts { name, qualified: qualified.as_deref(), hints: def.hints };
        governance::judge(&self.agent, self.namespace.as_ref(), &facts)
    }
}

/// What becomes of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run it with these arguments; `mark`: checkpoint a `ToolCallStarted` first (irreversible).
    Run {
        /// Arguments JSON.
        arguments: String,
        /// Mark it as started before it runs.
        mark: bool,
    },
    /// Do not run it; the model reads this error.
    Refuse(String),
    /// Park the run until a person decides.
    Wait(Effect),
    /// A frozen replay's recorded result: nothing runs.
    Recorded(nightshift_tools::ToolOutput),
}

/// How the calls of a turn resumed after a crash or a park may have got: which started without
/// a result (a `ToolCallStarted` step), and whether the turn recorded such marks at all (an
/// older worker's turn did not: then any unanswered irreversible call may have run).
#[derive(Debug, Clone, Default)]
pub struct Resumed {
    /// Call ids with a `ToolCallStarted` step.
    pub started: HashSet<String>,
    /// The turn's `LlmResponse.intents_recorded`.
    pub intents_recorded: bool,
    /// Whether these calls are the turn an earlier attempt left (else a fresh turn).
    pub resumed: bool,
}

fn unknown_outcome(tool: &str) -> String {
    format!(
        "the call to {tool} was interrupted by a worker failure and may or may not have taken effect; \
         it was not repeated because it is irreversible. Check its effect before calling it again."
    )
}

/// The plan for `call`.
pub fn plan(gov: &Governance, tools: &ToolRegistry, call: &ToolCall, resumed: &Resumed) -> Plan {
    let verdict = gov.verdict(tools, &call.name);
    // A frozen replay answers from its recording (touching nothing, so no approval is needed)
    // and refuses anything else, unless it may run reads live.
    if let Some(replay) = gov.replay.as_deref().filter(|r| r.frozen) {
        if let Some(out) = replay.recorded(&call.name, &call.arguments) {
            return Plan::Recorded(out);
        }
        if !(replay.live_reads && verdict.effect.repeatable()) {
            return Plan::Refuse(replay.refusal(&call.name));
        }
    }
    let irreversible = !verdict.effect.repeatable();
    if resumed.resumed && irreversible {
        let may_have_run =
            resumed.started.contains(&call.id) || (!resumed.intents_recorded && !gov.approvals.contains_key(&call.id));
        if may_have_run {
            return Plan::Refuse(unknown_outcome(&call.name));
        }
    }
    let run = |arguments: String| Plan::Run { arguments, mark: irreversible };
    match verdict.action {
        governance::Action::Allow => run(call.arguments.clone()),
        governance::Action::Deny => Plan::Refuse(governance::denied_by_policy(&call.name)),
        governance::Action::RequireApproval => {
            let approval = gov.approvals.get(&call.id);
            let decision = approval.and_then(|a| {
                Some(Decision {
                    status: ApprovalStatus::from_pb(a.status())?,
                    call_hash: &a.call_hash,
                    approved_arguments: a.approved_arguments_json.as_deref(),
                    reason: &a.reason,
                    decided_by: &a.decided_by,
                })
            });
            match governance::resolve(&call.name, &call.arguments, decision.as_ref()) {
                Resolution::Run { arguments_json } => run(arguments_json),
                Resolution::Refuse { message } => Plan::Refuse(message),
                Resolution::Wait => Plan::Wait(verdict.effect),
            }
        }
    }
}

/// A run's per-run budget as the loop checks it before each LLM call
/// (`nightshift_core::budget::next_call`).
#[derive(Debug, Clone, Default)]
pub struct RunBudget {
    /// The agent's `budget:`.
    pub agent: nightshift_core::budget::Budget,
    /// The operator's budget of its namespace.
    pub namespace: nightshift_core::budget::Budget,
    /// The model's price, to count money (`None`: the run's money is not counted).
    pub price: Option<nightshift_core::cost::Price>,
    /// What the run's earlier attempts spent (tokens only: their money is counted below).
    pub prior: nightshift_llm::Usage,
}

impl RunBudget {
    /// `usage` as tokens and money at the model's price.
    pub fn spend(&self, usage: nightshift_llm::Usage) -> nightshift_core::budget::Spend {
        let micros =
            self.price.map_or(0, |p| p.cost_micros(usage.input_tokens, usage.cached_input_tokens, usage.output_tokens));
        nightshift_core::budget::Spend { tokens: usage.input_tokens.saturating_add(usage.output_tokens), micros }
    }

    /// Whether the run may make another LLM call, having spent `attempt` in this attempt and
    /// `last` on its last call.
    pub fn next_call(&self, attempt: nightshift_llm::Usage, last: nightshift_llm::Usage) -> Result<(), String> {
        if !self.agent.per_run.is_set() && !self.namespace.per_run.is_set() {
            return Ok(());
        }
        let mut total = self.prior;
        total += attempt;
        let spent = self.spend(total);
        nightshift_core::budget::next_call(&self.agent, &self.namespace, spent, self.spend(last))
    }
}
