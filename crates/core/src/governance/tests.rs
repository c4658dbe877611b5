use std::time::Duration;

use super::*;
use crate::AgentManifest;

fn policy(yaml: &str) -> ToolPolicy {
    let m: manifest::GovernanceManifest = serde_norway::from_str(yaml).unwrap();
    m.to_policy("governance").unwrap().1
}

fn tool(name: &str) -> ToolFacts<'_> {
    ToolFacts { name, qualified: None, hints: Hints::default() }
}

#[test]
fn first_matching_rule_decides_and_unmatched_tools_are_allowed() {
    let p = policy(
        r#"
tools:
  - tools: [send_mail]
    action: require_approval
  - tools: ["send_*", "drop_table"]
    action: deny
"#,
    );
    assert_eq!(judge(&p, None, &tool("send_mail")).action, Action::RequireApproval);
    assert_eq!(judge(&p, None, &tool("send_sms")).action, Action::Deny);
    assert_eq!(judge(&p, None, &tool("drop_table")).action, Action::Deny);
    assert_eq!(judge(&p, None, &tool("http_get")).action, Action::Allow);
    // An MCP tool matches by its qualified name too.
    let mcp = ToolFacts { name: "mail_send", qualified: Some("mail.send"), hints: Hints::default() };
    assert_eq!(judge(&policy("tools: [{tools: ['mail.*'], action: deny}]"), None, &mcp).action, Action::Deny);
}

#[test]
fn an_agent_tightens_the_namespace_policy_but_never_loosens_it() {
    let ns = policy("tools: [{hint: destructive, action: require_approval}]");
    let loosen = policy("tools: [{tools: ['*'], action: allow}]");
    let tighten = policy("tools: [{tools: [rm], action: deny}]");
    let rm = ToolFacts { name: "rm", qualified: None, hints: Hints { destructive: true, ..Hints::default() } };
    assert_eq!(judge(&loosen, Some(&ns), &rm).action, Action::RequireApproval);
    assert_eq!(judge(&tighten, Some(&ns), &rm).action, Action::Deny);
    assert_eq!(judge(&ToolPolicy::default(), Some(&ns), &rm).action, Action::RequireApproval);
    assert_eq!(judge(&ToolPolicy::default(), Some(&ns), &tool("ls")).action, Action::Allow);
}

#[test]
fn effects_come_from_rules_then_hints_and_the_operator_cannot_be_softened() {
    let read_only = ToolFacts { name: "get", qualified: None, hints: Hints { read_only: true, ..Hints::default() } };
    let idem = ToolFacts { name: "put", qualified: None, hints: Hints { idempotent: true, ..Hints::default() } };
    let none = ToolPolicy::default();
    assert_eq!(judge(&none, None, &read_only).effect, Effect::Read);
    assert_eq!(judge(&none, None, &idem).effect, Effect::Idempotent);
    assert_eq!(judge(&none, None, &tool("mystery")).effect, Effect::Irreversible, "no hints: assume the worst");
    let agent = policy("tools: [{tools: [mystery, put], effect: read}]");
    assert_eq!(judge(&agent, None, &tool("mystery")).effect, Effect::Read);
    let ns = policy("tools: [{tools: [put], effect: irreversible}]");
    assert_eq!(judge(&agent, Some(&ns), &idem).effect, Effect::Irreversible);
    assert!(!Effect::Irreversible.repeatable() && Effect::Idempotent.repeatable());
}

#[test]
fn approvals_bind_to_the_exact_call() {
    let args = r#"{"to":"a@example.com"}"#;
    let hash = call_hash("send_mail", args);
    let approved = Decision {
        status: ApprovalStatus::Approved,
        call_hash: &hash,
        approved_arguments: None,
        reason: "",
        decided_by: "key:ops",
    };
    assert_eq!(resolve("send_mail", args, None), Resolution::Wait);
    assert_eq!(resolve("send_mail", args, Some(&approved)), Resolution::Run { arguments_json: args.into() });
    let edited = Decision { approved_arguments: Some(r#"{"to":"b@example.com"}"#), ..approved.clone() };
    assert_eq!(
        resolve("send_mail", args, Some(&edited)),
        Resolution::Run { arguments_json: r#"{"to":"b@example.com"}"#.into() }
    );
    // Other arguments than the ones approved: refused, whatever the status.
    assert!(matches!(resolve("send_mail", r#"{"to":"c@example.com"}"#, Some(&approved)), Resolution::Refuse { .. }));
    let denied = Decision { status: ApprovalStatus::Denied, reason: "not today", ..approved.clone() };
    let Resolution::Refuse { message } = resolve("send_mail", args, Some(&denied)) else { panic!() };
    assert!(message.contains("key:ops denied") && message.contains("not today"), "{message}");
    let expired = Decision { status: ApprovalStatus::Expired, ..approved };
    assert!(matches!(resolve("send_mail", args, Some(&expired)), Resolution::Refuse { .. }));
    assert_ne!(call_hash("a", "bc"), call_hash("ab", "c"), "the NUL separator keeps fields apart");
}

#[test]
fn manifest_round_trips_and_errors_name_their_field() {
    let yaml = r#"
name: mailer
model: {provider: openai, model: m, base_url: "http://127.0.0.1:1/v1"}
task: {query: q}
governance:
  tools:
    - tools: [send_mail]
      action: require_approval
      effect: irreversible
    - hint: read_only
      action: allow
  approval_timeout: 2h
  on_approval_timeout: fail
"#;
    let spec = crate::AgentSpec::from_yaml(yaml).unwrap();
    assert_eq!(spec.governance.rules.len(), 2);
    assert_eq!(spec.governance.approval_timeout, Duration::from_secs(7200));
    assert_eq!(spec.governance.on_timeout, OnTimeout::Fail);
    let again = AgentManifest::from_proto(&spec.to_proto()).validate().unwrap();
    assert_eq!(again, spec);

    let bad = yaml.replace("hint: read_only", "hint: read_only\n      tools: [x]").replace("2h", "31d");
    let err = crate::AgentSpec::from_yaml(&bad).unwrap_err();
    let fields: Vec<&str> = err.fields().collect();
    assert!(fields.contains(&"governance.tools[1]"), "{err}");
    assert!(fields.contains(&"governance.approval_timeout"), "{err}");
    let err = crate::AgentSpec::from_yaml(&yaml.replace("require_approval", "ask")).unwrap_err();
    assert!(err.fields().any(|f| f == "governance.tools[0].action"), "{err}");
    let err = crate::AgentSpec::from_yaml(&yaml.replace("[send_mail]", "['[oops']")).unwrap_err();
    assert!(err.fields().any(|f| f == "governance.tools[0].tools[0]"), "{err}");
}

#[test]
fn an_agent_without_governance_stores_none() {
    let spec = crate::AgentSpec::from_yaml("name: a\nmodel: {provider: openai, model: m}\ntask: {query: q}\n").unwrap();
    assert!(spec.governance.is_default());
    assert!(spec.to_proto().governance.is_none());
}
