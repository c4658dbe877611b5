//! The proto form of a tool policy ([`pb::GovernanceSpec`], an agent spec's `governance` and the
//! operator's namespace policy) and its validation, with the same field names in errors as the
//! manifest.
use std::time::Duration;

use super::{Action, Effect, Hint, OnTimeout, Rule, Selector, ToolPolicy};
use crate::error::{Errors, ValidationErrors};
use crate::{duration, pb};

/// Rules per policy.
pub const MAX_RULES: usize = 64;
/// Names or globs per rule.
pub const MAX_NAMES: usize = 64;
/// Bytes per name or glob.
const MAX_NAME: usize = 128;
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

impl Hint {
    fn from_pb(v: pb::ToolHint) -> Option<Self> {
        match v {
            pb::ToolHint::Unspecified => None,
            pb::ToolHint::ReadOnly => Some(Self::ReadOnly),
            pb::ToolHint::Destructive => Some(Self::Destructive),
            pb::ToolHint::Idempotent => Some(Self::Idempotent),
            pb::ToolHint::OpenWorld => Some(Self::OpenWorld),
        }
    }

    fn to_pb(self) -> pb::ToolHint {
        match self {
            Self::ReadOnly => pb::ToolHint::ReadOnly,
            Self::Destructive => pb::ToolHint::Destructive,
            Self::Idempotent => pb::ToolHint::Idempotent,
            Self::OpenWorld => pb::ToolHint::OpenWorld,
        }
    }
}

impl Action {
    fn from_pb(v: pb::ToolAction) -> Option<Self> {
        match v {
            pb::ToolAction::Unspecified => None,
            pb::ToolAction::Allow => Some(Self::Allow),
            pb::ToolAction::RequireApproval => Some(Self::RequireApproval),
            pb::ToolAction::Deny => Some(Self::Deny),
        }
    }

    fn to_pb(self) -> pb::ToolAction {
        match self {
            Self::Allow => pb::ToolAction::Allow,
            Self::RequireApproval => pb::ToolAction::RequireApproval,
            Self::Deny => pb::ToolAction::Deny,
        }
    }
}

impl ToolPolicy {
    /// Validates a policy; `prefix` is its field (`governance`, or a config section).
    pub(crate) fn from_pb_into(errs: &mut Errors, prefix: &str, p: Option<&pb::GovernanceSpec>) -> Self {
        let d = Self::default();
        let Some(p) = p else { return d };
        if p.tools.len() > MAX_RULES {
            errs.push(format!("{prefix}.tools"), format!("at most {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(p.tools.len().min(MAX_RULES));
        for (i, r) in p.tools.iter().enumerate().take(MAX_RULES) {
            let f = format!("{prefix}.tools[{i}]");
            let hint = Hint::from_pb(r.hint());
            let selector = match (r.tools.is_empty(), hint) {
                (false, None) => {
                    if r.tools.len() > MAX_NAMES {
                        errs.push(format!("{f}.tools"), format!("at most {MAX_NAMES} names"));
                    }
                    let globs = r
                        .tools
                        .iter()
                        .enumerate()
                        .take(MAX_NAMES)
                        .filter_map(|(j, name)| {
                            let field = format!("{f}.tools[{j}]");
                            if name.is_empty() || name.len() > MAX_NAME {
                                errs.push(field, format!("a tool name or glob of 1-{MAX_NAME} bytes"));
                                return None;
                            }
                            glob::Pattern::new(name)
                                .map_err(|e| errs.push(field, format!("'{name}' is not a valid glob: {e}")))
                                .ok()
                        })
                        .collect();
                    Some(Selector::Names(globs))
                }
                (true, Some(h)) => Some(Selector::Hint(h)),
                (false, Some(_)) => {
                    errs.push(&f, "select tools either by name (tools) or by annotation (hint), not both");
                    None
                }
                (true, None) => {
                    errs.push(&f, "select tools by name (tools) or by annotation (hint)");
                    None
                }
            };
            let action = Action::from_pb(r.action());
            let effect = Effect::from_pb(r.effect());
            if action.is_none() && effect.is_none() {
                errs.push(
                    &f,
                    "set an action (allow, require_approval, deny) or an effect (read, idempotent, irreversible)",
                );
            }
            if let Some(selector) = selector {
                rules.push(Rule { selector, action, effect });
            }
        }
        let approval_timeout = crate::spec::opt_duration(
            errs,
            &format!("{prefix}.approval_timeout"),
            &p.approval_timeout,
            d.approval_timeout,
        );
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&approval_timeout) {
            errs.push(format!("{prefix}.approval_timeout"), "must be between 1s and 30d");
        }
        let on_timeout = match p.on_approval_timeout() {
            pb::ApprovalTimeoutAction::Fail => OnTimeout::Fail,
            _ => OnTimeout::Deny,
        };
        Self { rules, approval_timeout, on_timeout }
    }

    /// Validates a policy on its own (the operator's namespace policies); `prefix` names it in
    /// errors.
    pub fn from_pb(prefix: &str, p: &pb::GovernanceSpec) -> Result<Self, ValidationErrors> {
        let mut errs = Errors::default();
        let policy = Self::from_pb_into(&mut errs, prefix, Some(p));
        errs.finish(|| policy)
    }

    /// Whether this is the default policy (no rules, default timeout and outcome): an agent
    /// without `governance:` stores none, so its stored spec is unchanged.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The proto form, every default spelled out.
    pub fn to_pb(&self) -> pb::GovernanceSpec {
        pb::GovernanceSpec {
            tools: self
                .rules
                .iter()
                .map(|r| {
                    let (tools, hint) = match &r.selector {
                        Selector::Names(globs) => (globs.iter().map(|g| g.as_str().to_owned()).collect(), None),
                        Selector::Hint(h) => (Vec::new(), Some(*h)),
                    };
                    pb::ToolRule {
                        tools,
                        hint: hint.map_or(0, |h| h.to_pb() as i32),
                        action: r.action.map_or(0, |a| a.to_pb() as i32),
                        effect: r.effect.map_or(0, |e| e.to_pb() as i32),
                    }
                })
                .collect(),
            approval_timeout: Some(duration::to_pb(self.approval_timeout)),
            on_approval_timeout: self.on_timeout.to_pb() as i32,
        }
    }
}
