//! `governance:` as written in YAML (an agent manifest) or TOML (the operator's namespace
//! policies), and its conversion to and from [`pb::GovernanceSpec`]. Text parsing only: the
//! rules are checked by [`ToolPolicy::from_pb`](super::ToolPolicy::from_pb) and the spec's
//! validation.
use serde::{Deserialize, Serialize};

use crate::error::{Errors, ValidationErrors};
use crate::manifest::{DurationText, pick, spelling};
use crate::pb;

/// `governance:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceManifest {
    /// Tool rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolRuleManifest>,
    /// How long an approval request waits (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<DurationText>,
    /// `deny` (default) or `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_approval_timeout: Option<String>,
}

/// One rule: `tools` (names or globs) or `hint`, then `action` and/or `effect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRuleManifest {
    /// Tool names or globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// `read_only`, `destructive`, `idempotent` or `open_world`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// `allow`, `require_approval` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `read`, `idempotent` or `irreversible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

const HINTS: &[(&str, pb::ToolHint)] = &[
    ("read_only", pb::ToolHint::ReadOnly),
    ("destructive", pb::ToolHint::Destructive),
    ("idempotent", pb::ToolHint::Idempotent),
    ("open_world", pb::ToolHint::OpenWorld),
];
const ACTIONS: &[(&str, pb::ToolAction)] = &[
    ("allow", pb::ToolAction::Allow),
    ("require_approval", pb::ToolAction::RequireApproval),
    ("deny", pb::ToolAction::Deny),
];
const EFFECTS: &[(&str, pb::ToolEffect)] = &[
    ("read", pb::ToolEffect::Read),
    ("idempotent", pb::ToolEffect::Idempotent),
    ("irreversible", pb::ToolEffect::Irreversible),
];
const ON_TIMEOUT: &[(&str, pb::ApprovalTimeoutAction)] =
    &[("deny", pb::ApprovalTimeoutAction::Deny), ("fail", pb::ApprovalTimeoutAction::Fail)];

impl GovernanceManifest {
    /// To the proto form, validated as a policy of its own (the operator's namespace policies);
    /// `prefix` names the section in errors.
    pub fn to_policy(&self, prefix: &str) -> Result<(pb::GovernanceSpec, super::ToolPolicy), ValidationErrors> {
        let mut errs = Errors::default();
        let spec = self.to_pb(&mut errs, prefix);
        errs.finish(|| ())?;
        let policy = super::ToolPolicy::from_pb(prefix, &spec)?;
        Ok((spec, policy))
    }

    /// To the proto form; `prefix` names the section in errors.
    pub(crate) fn to_pb(&self, errs: &mut Errors, prefix: &str) -> pb::GovernanceSpec {
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{prefix}.tools[{i}]");
                pb::ToolRule {
                    tools: r.tools.clone(),
                    hint: pick(errs, &format!("{f}.hint"), &r.hint, HINTS),
                    action: pick(errs, &format!("{f}.action"), &r.action, ACTIONS),
                    effect: pick(errs, &format!("{f}.effect"), &r.effect, EFFECTS),
                }
            })
            .collect();
        let approval_timeout =
            self.approval_timeout.as_ref().and_then(|d| errs.take(d.to_pb(&format!("{prefix}.approval_timeout"))));
        pb::GovernanceSpec {
            tools,
            approval_timeout,
            on_approval_timeout: pick(
                errs,
                &format!("{prefix}.on_approval_timeout"),
                &self.on_approval_timeout,
                ON_TIMEOUT,
            ),
        }
    }

    /// From the proto form (defaults spelled out as stored).
    pub fn from_pb(p: &pb::GovernanceSpec) -> Self {
        Self {
            tools: p
                .tools
                .iter()
                .map(|r| ToolRuleManifest {
                    tools: r.tools.clone(),
                    hint: spelling(HINTS, r.hint()),
                    action: spelling(ACTIONS, r.action()),
                    effect: spelling(EFFECTS, r.effect()),
                })
                .collect(),
            approval_timeout: p.approval_timeout.as_ref().map(DurationText::from_pb),
            on_approval_timeout: spelling(ON_TIMEOUT, p.on_approval_timeout()),
        }
    }
}
