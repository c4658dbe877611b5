//! `nightshift approvals ...`
use nightshift_core::governance::ApprovalStatus;
use nightshift_core::{pb, time};
use serde::Serialize;

use crate::Server;
use crate::args::{ApprovalsCommand, Output};
use crate::output;

/// One approval request as the CLI shows it.
#[derive(Debug, Serialize)]
struct ApprovalView {
    id: String,
    status: String,
    agent: String,
    namespace: String,
    run: String,
    tool: String,
    effect: String,
    arguments: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_arguments: Option<String>,
    requested_at: Option<String>,
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    decided_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

impl ApprovalView {
    fn from_pb(a: &pb::Approval) -> Self {
        let ts = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().and_then(time::from_pb).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        let status = ApprovalStatus::from_pb(a.status()).map_or("unknown", ApprovalStatus::as_str);
        let effect = nightshift_core::governance::Effect::from_pb(a.effect()).map_or("unknown", |e| e.as_str());
        Self {
            id: a.id.clone(),
            status: status.to_owned(),
            agent: a.agent_name.clone(),
            namespace: a.namespace.clone(),
            run: a.run_id.clone(),
            tool: a.tool_name.clone(),
            effect: effect.to_owned(),
            arguments: a.arguments_json.clone(),
            approved_arguments: a.approved_arguments_json.clone(),
            requested_at: ts(&a.requested_at),
            expires_at: ts(&a.expires_at),
            decided_by: a.decided_by.clone(),
            reason: a.reason.clone(),
        }
    }
}

fn table(rows: &[ApprovalView]) -> String {
    let mut t = output::new_table(&["ID", "STATUS", "AGENT", "TOOL", "EFFECT", "ARGUMENTS", "EXPIRES", "DECIDED BY"]);
    for a in rows {
        let args = a.approved_arguments.as_ref().map_or_else(|| a.arguments.clone(), |e| format!("{e} (edited)"));
        t.add_row(vec![
            a.id.clone(),
            a.status.clone(),
            a.agent.clone(),
            a.tool.clone(),
            a.effect.clone(),
            args.chars().take(60).collect(),
            a.expires_at.clone().unwrap_or_default(),
            a.decided_by.clone(),
        ]);
    }
    format!("{t}\n")
}

pub(crate) async fn run(server: &Server, out: Output, cmd: ApprovalsCommand) -> anyhow::Result<()> {
    let mut client = server.manager().await?;
    let one = |a: Option<pb::Approval>| vec![ApprovalView::from_pb(&a.unwrap_or_default())];
    let rows = match cmd {
        ApprovalsCommand::List { status, run, limit } => {
            let statuses = status
                .iter()
                .map(|s| {
                    ApprovalStatus::parse(s)
                        .map(|s| s.to_pb() as i32)
                        .ok_or_else(|| anyhow::anyhow!("unknown status {s}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let resp = client
                .list_approvals(pb::ListApprovalsRequest {
                    statuses,
                    namespace: server.namespace().to_owned(),
                    run_id: run.unwrap_or_default(),
                    page_size: limit.clamp(1, 500),
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            resp.approvals.iter().map(ApprovalView::from_pb).collect()
        }
        ApprovalsCommand::Approve { id, args, reason } => {
            let req = pb::ApproveToolCallRequest { approval_id: id, arguments_json: args, reason };
            one(client.approve_tool_call(req).await?.into_inner().approval)
        }
        ApprovalsCommand::Deny { id, reason } => {
            one(client.deny_tool_call(pb::DenyToolCallRequest { approval_id: id, reason }).await?.into_inner().approval)
        }
    };
    output::print(out, &rows, |r| table(r))
}

/// One row of `nightshift costs`.
#[derive(Debug, Serialize)]
struct CostView {
    key: String,
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: String,
    cost_micro_usd: u64,
    unpriced_calls: u64,
}

/// `nightshift costs --by agent|model|namespace [--since 7d]`.
pub(crate) async fn costs(server: &Server, out: Output, by: &str, since: Option<&str>) -> anyhow::Result<()> {
    let group_by = match by {
        "model" => pb::CostGrouping::Model,
        "namespace" => pb::CostGrouping::Namespace,
        _ => pb::CostGrouping::Agent,
    };
    let since = since
        .map(|s| {
            let d = nightshift_core::duration::parse_signed(s)
                .ok()
                .filter(|d| !d.negative)
                .ok_or_else(|| anyhow::anyhow!("--since {s}: not a duration (e.g. 7d, 24h, 30m)"))?;
            let back = chrono::Duration::from_std(d.abs).map_err(|e| anyhow::anyhow!("--since {s}: {e}"))?;
            Ok::<_, anyhow::Error>(time::to_pb(chrono::Utc::now() - back))
        })
        .transpose()?;
    let req = pb::GetCostsRequest { group_by: group_by as i32, since, namespace: server.namespace().to_owned() };
    let rows: Vec<CostView> = server
        .manager()
        .await?
        .get_costs(req)
        .await?
        .into_inner()
        .rows
        .into_iter()
        .map(|r| CostView {
            cost_usd: nightshift_core::cost::format_usd(r.cost_micro_usd),
            key: r.key,
            calls: r.calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_micro_usd: r.cost_micro_usd,
            unpriced_calls: r.unpriced_calls,
        })
        .collect();
    output::print(out, &rows, |rows| {
        let mut t =
            output::new_table(&[by.to_uppercase().as_str(), "CALLS", "INPUT", "OUTPUT", "COST", "UNPRICED CALLS"]);
        for r in rows {
            t.add_row(vec![
                r.key.clone(),
                r.calls.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cost_usd.clone(),
                r.unpriced_calls.to_string(),
            ]);
        }
        format!("{t}\n")
    })
}
