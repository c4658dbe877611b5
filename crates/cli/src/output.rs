//! Rendering of results as tables, JSON or YAML.
use std::collections::BTreeMap;

use comfy_table::{Table, presets::NOTHING};
use nightshift_core::{AgentManifest, RunStatus, duration, pb, time};
use serde::Serialize;

use crate::args::Output;

/// Prints `value` as JSON / YAML, or calls `table` for the table form.
pub(crate) fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_norway::to_string(value)?,
        Output::Table => table(value),
    };
    print!("{text}");
    Ok(())
}

pub(crate) fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header.iter().copied());
    t
}

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref().and_then(time::from_pb).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn state_name(v: i32) -> String {
    match pb::AgentState::try_from(v) {
        Ok(pb::AgentState::Active) => "active".into(),
        Ok(pb::AgentState::Paused) => "paused".into(),
        _ => "unknown".into(),
    }
}

pub(crate) fn status_name(v: i32) -> String {
    pb::RunStatus::try_from(v)
        .ok()
        .and_then(RunStatus::from_pb)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Serialize)]
pub(crate) struct AgentView {
    id: String,
    pub(crate) name: String,
    version: u64,
    state: String,
    schedule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    spec: AgentManifest,
}

impl AgentView {
    pub(crate) fn from_pb(a: &pb::Agent) -> Self {
        let spec = a.spec.clone().unwrap_or_default();
        Self {
            id: a.id.clone(),
            name: spec.name.clone(),
            version: a.version,
            state: state_name(a.state),
            schedule: nightshift_core::schedule::summary(spec.schedule.as_ref()),
            created_at: ts(&a.created_at),
            updated_at: ts(&a.updated_at),
            spec: AgentManifest::from_proto(&spec),
        }
    }
}

pub(crate) fn agents_table(agents: &[AgentView]) -> String {
    let mut t = new_table(&["NAMESPACE", "NAME", "STATE", "VERSION", "SCHEDULE", "LABELS"]);
    for a in agents {
        let labels: Vec<String> = a.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row(vec![
            a.spec.namespace.clone(),
            a.name.clone(),
            a.state.clone(),
            a.version.to_string(),
            a.schedule.clone(),
            labels.join(","),
        ]);
    }
    format!("{t}\n")
}

pub(crate) fn agent_table(a: &AgentView) -> String {
    let mut t = new_table(&["FIELD", "VALUE"]);
    t.add_row(vec!["namespace".into(), a.spec.namespace.clone()]);
    t.add_row(vec!["name".into(), a.name.clone()]);
    t.add_row(vec!["id".into(), a.id.clone()]);
    t.add_row(vec!["version".into(), a.version.to_string()]);
    t.add_row(vec!["state".into(), a.state.clone()]);
    t.add_row(vec!["schedule".into(), a.schedule.clone()]);
    t.add_row(vec!["updated".into(), a.updated_at.clone().unwrap_or_default()]);
    format!("{t}\n{}", a.spec.to_yaml())
}

#[derive(Serialize)]
pub(crate) struct StatusView {
    name: String,
    id: String,
    state: String,
    version: u64,
    running: u32,
    counts: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_run: Option<RunView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run_at: Option<String>,
    tools: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_duration: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    /// The cost ledger's total, micro-USD.
    cost_micro_usd: u64,
}

impl StatusView {
    pub(crate) fn from_pb(s: &pb::GetAgentStatusResponse) -> Self {
        let usage = s.total_usage.unwrap_or_default();
        Self {
            name: s.name.clone(),
            id: s.agent_id.clone(),
            state: state_name(s.state),
            version: s.version,
            running: s.running,
            counts: BTreeMap::from([
                ("total", s.total_runs),
                ("queued", s.queued),
                ("awaiting_approval", s.awaiting_approval),
                ("succeeded", s.succeeded),
                ("failed", s.failed),
                ("skipped", s.skipped),
                ("cancelled", s.cancelled),
                ("timed_out", s.timed_out),
            ]),
            last_run: s.last_run.as_ref().map(RunView::from_pb),
            last_error: s.last_error.clone(),
            last_error_at: ts(&s.last_error_at),
            next_run_at: ts(&s.next_run_at),
            tools: s.tools.clone(),
            mean_duration: s.mean_duration.as_ref().map(duration::format_pb),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_micro_usd: s.cost_micro_usd,
        }
    }
}

pub(crate) fn status_table(s: &StatusView) -> String {
    let mut t = new_table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    row("name", s.name.clone());
    row("state", if s.running > 0 { format!("{} (running: {})", s.state, s.running) } else { s.state.clone() });
    row("version", s.version.to_string());
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    row("runs", counts.join(" "));
    row(
        "last run",
        s.last_run
            .as_ref()
            .map(|r| format!("{} {} {}", r.id, r.status, r.created_at.clone().unwrap_or_default()))
            .unwrap_or_else(|| "-".into()),
    );
    row("last error", if s.last_error.is_empty() { "-".into() } else { s.last_error.clone() });
    row("next run", s.next_run_at.clone().unwrap_or_else(|| "-".into()));
    row("tools", if s.tools.is_empty() { "-".into() } else { s.tools.join(", ") });
    row("mean duration", s.mean_duration.clone().unwrap_or_else(|| "-".into()));
    row("tokens", format!("in={} out={}", s.input_tokens, s.output_tokens));
    row("cost", nightshift_core::cost::format_usd(s.cost_micro_usd));
    format!("{t}\n")
}

#[derive(Serialize)]
pub(crate) struct StepView {
    seq: u32,
    attempt: u32,
    kind: &'static str,
    summary: String,
}

#[derive(Serialize)]
pub(crate) struct RunView {
    id: String,
    agent: String,
    status: String,
    trigger: String,
    attempt: u32,
    retries: u32,
    /// The tick a scheduled run is for (milliseconds: ticks of one agent are told apart by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    worker: String,
    /// The run this one replays.
    #[serde(skip_serializing_if = "String::is_empty")]
    replay_of: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<StepView>,
}

impl RunView {
    pub(crate) fn from_pb(r: &pb::Run) -> Self {
        let usage = r.usage.unwrap_or_default();
        let trigger = match r.trigger() {
            pb::TriggerKind::Manual => "manual",
            _ => "schedule",
        };
        Self {
            id: r.id.clone(),
            agent: r.agent_name.clone(),
            status: status_name(r.status),
            trigger: trigger.into(),
            attempt: r.attempt,
            retries: r.retries,
            scheduled_for: r
                .scheduled_for
                .as_ref()
                .and_then(time::from_pb)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            created_at: ts(&r.created_at),
            started_at: ts(&r.started_at),
            finished_at: ts(&r.finished_at),
            worker: r.worker_id.clone(),
            replay_of: r.replay_of.clone(),
            result: r.result.clone(),
            error: r.error.clone(),
            reason: r.reason.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            steps: r.steps.iter().map(step_view).collect(),
        }
    }
}

fn step_view(s: &pb::RunStep) -> StepView {
    use pb::run_step::Payload;
    let (kind, summary) = match &s.payload {
        Some(Payload::LlmResponse(l)) => {
            let calls: Vec<&str> = l.tool_calls.iter().map(|c| c.name.as_str()).collect();
            let text = if calls.is_empty() { l.content.clone() } else { format!("tool calls: {}", calls.join(", ")) };
            ("llm_response", text)
        }
        Some(Payload::ToolResult(t)) => {
            ("tool_result", format!("{}{}: {}", t.tool_name, if t.is_error { " (error)" } else { "" }, t.output))
        }
        Some(Payload::ToolStarted(t)) => ("tool_started", format!("{} {}", t.tool_name, t.arguments_json)),
        Some(Payload::MemoryStored(m)) => {
            ("memory_stored", if m.error.is_empty() { m.record_id.clone() } else { format!("failed: {}", m.error) })
        }
        None => ("unknown", String::new()),
    };
    StepView { seq: s.seq, attempt: s.attempt, kind, summary: summary.chars().take(200).collect() }
}

pub(crate) fn runs_table(runs: &[RunView]) -> String {
    let mut t = new_table(&["ID", "AGENT", "STATUS", "TRIGGER", "ATTEMPT", "CREATED", "DETAIL"]);
    for r in runs {
        let detail = [&r.error, &r.reason, &r.result].into_iter().find(|s| !s.is_empty()).cloned().unwrap_or_default();
        t.add_row(vec![
            r.id.clone(),
            r.agent.clone(),
            r.status.clone(),
            r.trigger.clone(),
            r.attempt.to_string(),
            r.created_at.clone().unwrap_or_default(),
            detail.chars().take(60).collect(),
        ]);
    }
    format!("{t}\n")
}

pub(crate) fn run_table(r: &RunView) -> String {
    let mut out = runs_table(std::slice::from_ref(r));
    if !r.steps.is_empty() {
        let mut t = new_table(&["SEQ", "ATTEMPT", "KIND", "SUMMARY"]);
        for s in &r.steps {
            t.add_row(vec![s.seq.to_string(), s.attempt.to_string(), s.kind.to_owned(), s.summary.clone()]);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !r.result.is_empty() {
        out.push_str(&format!("result:\n{}\n", r.result));
    }
    out
}
