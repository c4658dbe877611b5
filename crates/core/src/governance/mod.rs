//! Governance of tool calls: which tools the model may call, which wait for a person's
//! approval, and what each call does to the world (its effect class, which decides whether it
//! may run again after a crash).
//!
//! Pure values and functions: the worker asks [`judge`] about every call the model makes and
//! the store executes approvals. The agent's policy lives in its spec ([`spec`], `governance:`
//! in the manifest, [`manifest`]); the operator's policy of a namespace is the same shape and
//! can only be tightened by an agent.
pub mod manifest;
pub mod spec;

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::pb;

/// What a tool call does to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// Reads only: safe to repeat.
    Read,
    /// Repeating it with the same arguments changes nothing more.
    Idempotent,
    /// Never repeated after a crash: its outcome is reported as unknown instead.
    Irreversible,
}

impl Effect {
    /// Storage / CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Idempotent => "idempotent",
            Self::Irreversible => "irreversible",
        }
    }

    /// Whether a call interrupted by a crash may simply run again.
    pub fn repeatable(self) -> bool {
        self != Self::Irreversible
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::ToolEffect {
        match self {
            Self::Read => pb::ToolEffect::Read,
            Self::Idempotent => pb::ToolEffect::Idempotent,
            Self::Irreversible => pb::ToolEffect::Irreversible,
        }
    }

    /// From the proto enum; `None` for `UNSPECIFIED`.
    pub fn from_pb(v: pb::ToolEffect) -> Option<Self> {
        match v {
            pb::ToolEffect::Unspecified => None,
            pb::ToolEffect::Read => Some(Self::Read),
            pb::ToolEffect::Idempotent => Some(Self::Idempotent),
            pb::ToolEffect::Irreversible => Some(Self::Irreversible),
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Read, Self::Idempotent, Self::Irreversible].into_iter().find(|e| e.as_str() == s)
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What may happen to a call. Ordered by strictness, so the stricter of two is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Action {
    /// It runs.
    #[default]
    Allow,
    /// The run parks until a person approves or denies the exact call.
    RequireApproval,
    /// It never runs; the model is told.
    Deny,
}

impl Action {
    /// Manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::RequireApproval => "require_approval",
            Self::Deny => "deny",
        }
    }
}

/// The annotations a tool carries (MCP `ToolAnnotations`; local tools declare theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hints {
    /// `readOnlyHint`.
    pub read_only: bool,
    /// `destructiveHint`.
    pub destructive: bool,
    /// `idempotentHint`.
    pub idempotent: bool,
    /// `openWorldHint`.
    pub open_world: bool,
}

impl Hints {
    /// The effect the hints imply: read-only reads, idempotent repeats, anything else is
    /// irreversible (the safe assumption for a tool that says nothing).
    pub fn effect(self) -> Effect {
        if self.read_only {
            Effect::Read
        } else if self.idempotent && !self.destructive {
            Effect::Idempotent
        } else {
            Effect::Irreversible
        }
    }

    fn has(self, hint: Hint) -> bool {
        match hint {
            Hint::ReadOnly => self.read_only,
            Hint::Destructive => self.destructive,
            Hint::Idempotent => self.idempotent,
            Hint::OpenWorld => self.open_world,
        }
    }
}

/// One annotation a rule can select tools by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    /// `readOnlyHint`.
    ReadOnly,
    /// `destructiveHint`.
    Destructive,
    /// `idempotentHint`.
    Idempotent,
    /// `openWorldHint`.
    OpenWorld,
}

/// Which tools a rule selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// By name or glob (`*`, `?`, `[abc]`).
    Names(Vec<glob::Pattern>),
    /// Every tool carrying this annotation.
    Hint(Hint),
}

/// One rule of a [`ToolPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The tools it applies to.
    pub selector: Selector,
    /// What may happen to their calls, if the rule says.
    pub action: Option<Action>,
    /// Their effect, if the rule says (overrides the tool's own hints).
    pub effect: Option<Effect>,
}

/// What becomes of a call whose approval nobody gave in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnTimeout {
    /// The call is denied; the model is told.
    #[default]
    Deny,
    /// The run fails.
    Fail,
}

impl OnTimeout {
    /// Storage / manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Fail => "fail",
        }
    }

    /// Parses the storage spelling (anything else is `deny`, the safe reading).
    pub fn parse(s: &str) -> Self {
        if s == "fail" { Self::Fail } else { Self::Deny }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::ApprovalTimeoutAction {
        match self {
            Self::Deny => pb::ApprovalTimeoutAction::Deny,
            Self::Fail => pb::ApprovalTimeoutAction::Fail,
        }
    }
}

/// Default time an approval request waits for a person.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A tool policy: the agent's (`governance:`) or the operator's for a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPolicy {
    /// In order: the first rule that matches and sets an action decides it; likewise the effect.
    pub rules: Vec<Rule>,
    /// How long an approval request waits.
    pub approval_timeout: Duration,
    /// What an unanswered request becomes.
    pub on_timeout: OnTimeout,
}

impl Default for ToolPolicy {
    fn default() -> Self {
        Self { rules: Vec::new(), approval_timeout: DEFAULT_APPROVAL_TIMEOUT, on_timeout: OnTimeout::Deny }
    }
}

/// A tool as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct ToolFacts<'a> {
    /// The name the model calls it by.
    pub name: &'a str,
    /// `server.tool` for an MCP tool (its own name on its server).
    pub qualified: Option<&'a str>,
    /// Its annotations.
    pub hints: Hints,
}

impl Rule {
    fn matches(&self, tool: &ToolFacts<'_>) -> bool {
        match &self.selector {
            Selector::Names(globs) => {
                globs.iter().any(|g| g.matches(tool.name) || tool.qualified.is_some_and(|q| g.matches(q)))
            }
            Selector::Hint(h) => tool.hints.has(*h),
        }
    }
}

impl ToolPolicy {
    /// A policy under which every call needs approval (what a worker applies when it cannot
    /// read the operator's policy: failing closed).
    pub fn approve_everything() -> Self {
        let all = glob::Pattern::new("*").map(|g| vec![g]).unwrap_or_default();
        Self {
            rules: vec![Rule { selector: Selector::Names(all), action: Some(Action::RequireApproval), effect: None }],
            ..Self::default()
        }
    }

    /// This policy's action and effect for `tool`, if any rule sets them.
    fn lookup(&self, tool: &ToolFacts<'_>) -> (Option<Action>, Option<Effect>) {
        let mut action = None;
        let mut effect = None;
        for rule in self.rules.iter().filter(|r| r.matches(tool)) {
            action = action.or(rule.action);
            effect = effect.or(rule.effect);
            if action.is_some() && effect.is_some() {
                break;
            }
        }
        (action, effect)
    }
}

/// The verdict on calling one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What may happen to the call.
    pub action: Action,
    /// What it does to the world.
    pub effect: Effect,
}

/// The governance rule: the agent's action for `tool` and the namespace's, the stricter of the
/// two (an agent can tighten the operator's policy, never loosen it); the effect the agent's
/// rules give it, else the namespace's, else the tool's own hints — except that an agent cannot
/// call a tool the operator marks irreversible anything milder.
pub fn judge(agent: &ToolPolicy, namespace: Option<&ToolPolicy>, tool: &ToolFacts<'_>) -> Verdict {
    let (a_action, a_effect) = agent.lookup(tool);
    let (n_action, n_effect) = namespace.map(|n| n.lookup(tool)).unwrap_or_default();
    let action = a_action.unwrap_or_default().max(n_action.unwrap_or_default());
    let effect = match (a_effect, n_effect) {
        (Some(a), Some(n)) => a.max(n),
        (a, n) => a.or(n).unwrap_or_else(|| tool.hints.effect()),
    };
    Verdict { action, effect }
}

/// What an approval is bound to: SHA-256 (hex) of the tool name, a NUL byte and the arguments
/// text as the model wrote them.
pub fn call_hash(tool: &str, arguments_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(tool.as_bytes());
    h.update([0u8]);
    h.update(arguments_json.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalStatus {
    /// Waiting for a person.
    Pending,
    /// Approved (perhaps with edited arguments).
    Approved,
    /// Denied by a person.
    Denied,
    /// Nobody decided in time.
    Expired,
}

impl ApprovalStatus {
    /// Every status.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Approved, Self::Denied, Self::Expired];

    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::ApprovalStatus {
        match self {
            Self::Pending => pb::ApprovalStatus::Pending,
            Self::Approved => pb::ApprovalStatus::Approved,
            Self::Denied => pb::ApprovalStatus::Denied,
            Self::Expired => pb::ApprovalStatus::Expired,
        }
    }

    /// From the proto enum; `None` for `UNSPECIFIED`.
    pub fn from_pb(v: pb::ApprovalStatus) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_pb() == v)
    }
}

/// What a resumed run does with a call that needed approval, given the decision on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Run it, with these arguments (the approver's edit, or the model's).
    Run {
        /// Arguments JSON.
        arguments_json: String,
    },
    /// Do not run it; tell the model this.
    Refuse {
        /// The tool result the model reads.
        message: String,
    },
    /// No decision yet: park the run.
    Wait,
}

/// A decision on one call, as the worker reads it from the run's approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Its status.
    pub status: ApprovalStatus,
    /// The call it is bound to ([`call_hash`]).
    pub call_hash: &'a str,
    /// Edited arguments, when approved with them.
    pub approved_arguments: Option<&'a str>,
    /// The approver's reason.
    pub reason: &'a str,
    /// Who decided.
    pub decided_by: &'a str,
}

/// The approval rule for a call the policy says needs approval: run it only when approved for
/// exactly this call (tool and arguments), refuse it when denied or expired, else wait.
pub fn resolve(tool: &str, arguments_json: &str, decision: Option<&Decision<'_>>) -> Resolution {
    let Some(d) = decision else { return Resolution::Wait };
    if d.call_hash != call_hash(tool, arguments_json) {
        return Resolution::Refuse {
            message: format!(
                "the approval on record for this call does not match it (another tool or other arguments); \
                 the call to {tool} was not run"
            ),
        };
    }
    let why = if d.reason.is_empty() { String::new() } else { format!(": {}", d.reason) };
    match d.status {
        ApprovalStatus::Pending => Resolution::Wait,
        ApprovalStatus::Approved => {
            Resolution::Run { arguments_json: d.approved_arguments.unwrap_or(arguments_json).to_owned() }
        }
        ApprovalStatus::Denied => {
            let by = if d.decided_by.is_empty() { "a person".to_owned() } else { d.decided_by.to_owned() };
            Resolution::Refuse { message: format!("{by} denied the call to {tool}{why}. It was not run.") }
        }
        ApprovalStatus::Expired => {
            Resolution::Refuse { message: format!("nobody approved the call to {tool} in time; it was not run.") }
        }
    }
}

/// The tool result a call denied by policy gives the model.
pub fn denied_by_policy(tool: &str) -> String {
    format!("the call to {tool} is denied by this agent's tool policy; it was not run. Do not call it again.")
}

#[cfg(test)]
mod tests;
