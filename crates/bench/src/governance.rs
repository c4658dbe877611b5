//! What governing a tool call costs the agent loop: the worker's whole check of one call
//! (`nightshift_worker::governed::plan`: the tool's definition and annotations, the agent's and
//! the namespace's rules, and for an approved call the binding check — a SHA-256 of the call),
//! CPU per call, with policies of realistic size.
use nightshift_core::governance::manifest::GovernanceManifest;
use nightshift_core::{ToolsSpec, pb};
use nightshift_llm::ToolCall;
use nightshift_tools::{ToolRegistry, ToolsConfig};
use nightshift_worker::governed::{Governance, Plan, Resumed, plan};

use crate::Scenario;
use crate::stats::Row;

#[derive(clap::Args, Debug, Clone)]
pub struct GovernanceArgs {
    /// Checks timed per round (CPU per call = the round's CPU / this).
    #[arg(long, default_value_t = 200_000)]
    pub calls: usize,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

impl Default for GovernanceArgs {
    fn default() -> Self {
        Self { calls: 200_000, rounds: 5 }
    }
}

/// The agent's policy: twelve rules, the tool under test matched by the last (globs and hints
/// before it); the namespace's: four rules.
fn policies() -> anyhow::Result<(GovernanceManifest, GovernanceManifest)> {
    let mut agent = String::from("tools:\n");
    for i in 0..10 {
        agent.push_str(&format!("  - {{tools: [\"mail{i}.*\", \"db{i}_drop_*\"], action: deny}}\n"));
    }
    agent.push_str("  - {hint: destructive, action: require_approval}\n");
    agent.push_str("  - {tools: [format_data, \"calc*\"], action: require_approval, effect: irreversible}\n");
    let namespace = "tools:\n  - {tools: [\"shell*\"], action: deny}\n  - {tools: [\"rm_*\"], action: deny}\n  \
                     - {hint: open_world, effect: read}\n  - {tools: [\"pay_*\"], action: require_approval}\n";
    Ok((serde_norway::from_str(&agent)?, serde_norway::from_str(namespace)?))
}

fn time_per_call(args: &GovernanceArgs, mut check: impl FnMut() -> bool) -> Vec<f64> {
    let mut per_call_ns = Vec::new();
    for _ in 0..args.rounds {
        let cpu = crate::sys::cpu_time();
        for _ in 0..args.calls {
            std::hint::black_box(check());
        }
        let spent = crate::sys::cpu_time().saturating_sub(cpu);
        per_call_ns.push(spent.as_nanos() as f64 / args.calls as f64);
    }
    per_call_ns
}

pub async fn governance(args: &GovernanceArgs) -> anyhow::Result<Scenario> {
    let name = "governance";
    let (agent, namespace) = policies()?;
    let (_, agent) = agent.to_policy("governance").map_err(|e| anyhow::anyhow!("{e}"))?;
    let (namespace, _) = namespace.to_policy("namespace").map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = ToolsSpec {
        local: nightshift_core::BUILTIN_LOCAL_TOOLS.iter().map(|s| (*s).to_owned()).collect(),
        mcp: Vec::new(),
    };
    let tools = ToolRegistry::new(&spec, &ToolsConfig::default()).await?;
    let args_json = r#"{"shape": "rectangle", "width": 3, "height": 4, "note": "a typical small call"}"#;
    let call = ToolCall::new("call_1", "calculate_area", args_json);
    let allowed = ToolCall::new("call_2", "get_system_info", "{}");
    let approval = pb::Approval {
        call_id: "call_1".into(),
        call_hash: nightshift_core::governance::call_hash("calculate_area", args_json),
        status: pb::ApprovalStatus::Approved as i32,
        ..Default::default()
    };
    let none = Governance::new(agent.clone(), Some(&namespace), Vec::new());
    let decided = Governance::new(agent, Some(&namespace), vec![approval]);
    let fresh = Resumed::default();
    let resumed = Resumed { resumed: true, intents_recorded: true, ..Resumed::default() };
    // Sanity: the three paths decide what they are meant to.
    anyhow::ensure!(matches!(plan(&none, &tools, &allowed, &fresh), Plan::Run { mark: false, .. }));
    anyhow::ensure!(matches!(plan(&none, &tools, &call, &fresh), Plan::Wait(_)));
    anyhow::ensure!(matches!(plan(&decided, &tools, &call, &resumed), Plan::Run { mark: true, .. }));

    let rows = vec![
        Row::new(
            name,
            "allowed call (16 rules checked, CPU)",
            "ns",
            "round",
            &time_per_call(args, || matches!(plan(&none, &tools, &allowed, &fresh), Plan::Run { .. })),
        ),
        Row::new(
            name,
            "call needing approval, none yet (CPU)",
            "ns",
            "round",
            &time_per_call(args, || matches!(plan(&none, &tools, &call, &fresh), Plan::Wait(_))),
        ),
        Row::new(
            name,
            "approved call, binding checked (SHA-256, CPU)",
            "ns",
            "round",
            &time_per_call(args, || matches!(plan(&decided, &tools, &call, &resumed), Plan::Run { .. })),
        ),
    ];
    Ok(Scenario {
        name: name.into(),
        params: serde_json::json!({"calls": args.calls, "rounds": args.rounds, "agent_rules": 12, "namespace_rules": 4}),
        rows,
        counters: serde_json::json!({}),
    })
}
