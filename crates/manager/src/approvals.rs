//! Approvals at the manager: a worker parks a run on the tool calls that need a person
//! (RequestApproval), people list and decide them (ListApprovals, ApproveToolCall, DenyToolCall),
//! and a run whose last pending call is decided is queued and published again, to resume from
//! its checkpoint on any worker. The rules (which call needs approval, what a decision means to
//! the call) are `nightshift_core::governance`'s; the store records and serializes decisions.
use std::collections::BTreeMap;

use nightshift_core::governance::manifest::GovernanceManifest;
use nightshift_core::governance::{ApprovalStatus, Effect, OnTimeout, ToolPolicy};
use nightshift_core::{EventType, Namespace, Namespaces, RunId, TriggerKind, pb, time};
use nightshift_queue::RunRequest;
use nightshift_store::{ApprovalCall, ApprovalFilter, ApprovalRecord, ParkInput, RunRecord, Verdict};
use serde_json::json;
use tonic::Status;

use crate::error::{invalid, status_from_store};
use crate::request::{fence, token};
use crate::role::ManagerBuildError;
use crate::service::ManagerService;
use crate::{convert, scope};

/// Calls one RequestApproval may park on (one LLM turn's).
const MAX_CALLS: usize = 32;
/// Bytes of a call id or tool name.
const MAX_NAME: usize = 128;
/// Bytes of a call's arguments (asked or edited).
const MAX_ARGUMENTS: usize = 64 << 10;
/// Bytes of a decision's reason.
const MAX_REASON: usize = 1 << 10;
/// Approvals per ListApprovals page at most.
const MAX_APPROVALS_PAGE: u32 = 500;

/// The operator's namespace policies (`[governance.NAMESPACE]`), validated.
pub(crate) fn namespace_policies(
    sections: &BTreeMap<String, GovernanceManifest>,
) -> Result<BTreeMap<Namespace, pb::GovernanceSpec>, ManagerBuildError> {
    let mut out = BTreeMap::new();
    for (ns, section) in sections {
        let prefix = format!("governance.{ns}");
        let bad = |e: String| ManagerBuildError::Governance(format!("[{prefix}]: {e}"));
        let namespace = Namespace::parse(&prefix, ns).map_err(|e| bad(e.to_string()))?;
        let (spec, _) = section.to_policy(&prefix).map_err(|e| bad(e.to_string()))?;
        out.insert(namespace, spec);
    }
    Ok(out)
}

fn bounded(field: &str, text: &str, max: usize, required: bool) -> Result<(), Status> {
    if required && text.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    if text.len() > max {
        return Err(Status::invalid_argument(format!("{field}: at most {max} bytes")));
    }
    Ok(())
}

/// Edited arguments must be a JSON object, as the model's are.
fn check_arguments(field: &str, text: &str) -> Result<(), Status> {
    bounded(field, text, MAX_ARGUMENTS, true)?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(Status::invalid_argument(format!("{field}: must be a JSON object"))),
        Err(e) => Err(Status::invalid_argument(format!("{field}: not JSON: {e}"))),
    }
}

impl ManagerService {
    /// RequestApproval: parks the run on `calls` (fenced), with the agent's approval timeout.
    pub(crate) async fn park_for_approval(
        &self,
        req: pb::RequestApprovalRequest,
    ) -> Result<pb::RequestApprovalResponse, Status> {
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        if req.calls.is_empty() || req.calls.len() > MAX_CALLS {
            return Err(Status::invalid_argument(format!("calls: 1 to {MAX_CALLS} calls")));
        }
        let mut calls = Vec::with_capacity(req.calls.len());
        for (i, c) in req.calls.iter().enumerate() {
            bounded(&format!("calls[{i}].call_id"), &c.call_id, MAX_NAME, true)?;
            bounded(&format!("calls[{i}].tool_name"), &c.tool_name, MAX_NAME, true)?;
            bounded(&format!("calls[{i}].arguments_json"), &c.arguments_json, MAX_ARGUMENTS, false)?;
            calls.push(ApprovalCall {
                call_id: c.call_id.clone(),
                tool_name: c.tool_name.clone(),
                arguments_json: c.arguments_json.clone(),
                // A worker that says nothing: the safe reading.
                effect: Effect::from_pb(c.effect()).unwrap_or(Effect::Irreversible),
            });
        }
        let fence = fence(req.attempt, req.lease_token)?;
        let run = self.store().get_run(&id).await.map_err(status_from_store)?;
        let run = run.ok_or_else(|| Status::not_found(format!("run {id} not found")))?;
        let spec = self.store().get_agent_version(&run.agent_id, run.agent_version).await.map_err(status_from_store)?;
        // The stricter of the agent's and the operator's: the shorter wait, and failing the run
        // if either says so.
        let ns = self.namespace_policy(&run.namespace).and_then(|p| ToolPolicy::from_pb("governance", p).ok());
        let (mut timeout, mut on_timeout) = (spec.governance.approval_timeout, spec.governance.on_timeout);
        if let Some(ns) = ns {
            timeout = timeout.min(ns.approval_timeout);
            if ns.on_timeout == OnTimeout::Fail {
                on_timeout = OnTimeout::Fail;
            }
        }
        let usage = req.usage.unwrap_or_default();
        let input =
            ParkInput { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens, timeout, on_timeout };
        let (run, approvals) =
            self.store().park_for_approval(&id, fence, &calls, &input).await.map_err(status_from_store)?;
        self.watchers().changed(&id);
        tracing::info!(run = %id, status = %run.status, calls = calls.len(), "run parked for approval");
        for a in approvals.iter().filter(|a| a.status == ApprovalStatus::Pending) {
            metrics::counter!("nightshift_approvals_requested_total").increment(1);
            self.emit_approval(
                EventType::ApprovalRequested,
                a,
                json!({
                    "approval_id": a.id,
                    "tool": a.tool_name,
                    "arguments": a.arguments_json,
                    "effect": a.effect.as_str(),
                    "expires_at": time::to_pb(a.expires_at).seconds,
                }),
            );
        }
        // Decided while the attempt ran: queued again at once.
        self.publish_requeued(&run).await;
        Ok(pb::RequestApprovalResponse {
            run: Some(convert::run(&run)),
            approvals: approvals.iter().map(convert::approval).collect(),
        })
    }

    /// ListApprovals, within the caller's namespaces.
    pub(crate) async fn approvals_page(
        &self,
        scope: &Namespaces,
        req: pb::ListApprovalsRequest,
    ) -> Result<pb::ListApprovalsResponse, Status> {
        let limit = match req.page_size {
            0 => 100,
            n if n <= MAX_APPROVALS_PAGE => n,
            n => return Err(Status::invalid_argument(format!("page_size: at most {MAX_APPROVALS_PAGE} (got {n})"))),
        };
        let mut statuses = Vec::new();
        for (i, s) in req.statuses().enumerate() {
            statuses.push(
                ApprovalStatus::from_pb(s)
                    .ok_or_else(|| Status::invalid_argument(format!("statuses[{i}]: UNSPECIFIED is not a status")))?,
            );
        }
        if statuses.is_empty() {
            statuses.push(ApprovalStatus::Pending);
        }
        let run_id = match req.run_id.as_str() {
            "" => None,
            r => Some(RunId::parse("run_id", r).map_err(invalid)?),
        };
        let filter = ApprovalFilter {
            statuses,
            namespaces: scope::visible(scope, &req.namespace)?,
            run_id,
            limit,
            page_token: token(&req.page_token),
        };
        let page = self.store().list_approvals(&filter).await.map_err(status_from_store)?;
        Ok(pb::ListApprovalsResponse {
            approvals: page.items.iter().map(convert::approval).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    }

    /// ApproveToolCall / DenyToolCall by `by`.
    pub(crate) async fn decide(
        &self,
        scope: &Namespaces,
        by: String,
        id: &str,
        approve: bool,
        reason: String,
        arguments_json: Option<String>,
    ) -> Result<pb::Approval, Status> {
        bounded("approval_id", id, 64, true)?;
        bounded("reason", &reason, MAX_REASON, false)?;
        if let Some(args) = &arguments_json {
            check_arguments("arguments_json", args)?;
        }
        // An approval outside the caller's namespaces does not exist for it.
        let found = self.store().get_approval(id).await.map_err(status_from_store)?;
        if found.as_ref().is_none_or(|a| !scope.contains(&a.namespace)) {
            return Err(Status::not_found(format!("approval {id} not found")));
        }
        let verdict = Verdict { approve, by, reason, arguments_json };
        let decided = self.store().decide_approval(id, &verdict).await.map_err(status_from_store)?;
        if let Some(run) = &decided.run {
            self.watchers().changed(&run.id);
        }
        let a = &decided.approval;
        let decision = a.status.as_str();
        metrics::counter!("nightshift_approvals_total", "decision" => decision).increment(1);
        tracing::info!(approval = %a.id, run = %a.run_id, tool = %a.tool_name, decision, by = %verdict.by,
            "approval decided");
        self.emit_approval(
            EventType::ApprovalDecided,
            a,
            json!({
                "approval_id": a.id,
                "tool": a.tool_name,
                "decision": decision,
                "by": verdict.by,
                "reason": verdict.reason,
                "edited_arguments": a.approved_arguments_json.is_some(),
            }),
        );
        if let Some(run) = &decided.run {
            self.publish_requeued(run).await;
        }
        Ok(convert::approval(a))
    }

    fn emit_approval(&self, ty: EventType, a: &ApprovalRecord, data: serde_json::Value) {
        if let Some(p) = self.events() {
            p.event(ty)
                .agent(&a.agent_id)
                .agent_name(a.agent_name.clone())
                .namespace(&a.namespace)
                .run(&a.run_id)
                .data(data)
                .emit();
        }
    }

    /// Publishes a run an approval decision queued again. Its request may collide with an
    /// earlier one of the same attempt in the queue's dedup window only if it was already
    /// published, so the dedup suffix names the attempt it resumes after; if this publish is
    /// lost the outbox sweep publishes it (the store left it unpublished).
    async fn publish_requeued(&self, run: &RunRecord) {
        if run.status != nightshift_core::RunStatus::Queued {
            return;
        }
        let Some(queue) = self.queue() else { return };
        let request = RunRequest {
            run_id: run.id.to_string(),
            agent_id: run.agent_id.to_string(),
            trigger: if run.scheduled_for.is_some() { TriggerKind::Schedule } else { TriggerKind::Manual }.to_pb()
                as i32,
            scheduled_for: run.scheduled_for.map(time::to_pb),
            enqueued_at: Some(time::to_pb(self.clock().now())),
            trace_context: Default::default(),
            redelivery: format!("attempt-{}", run.attempt),
        };
        match queue.publish(&request, None).await {
            Ok(_) => {
                if let Err(e) = self.store().mark_published(std::slice::from_ref(&run.id)).await {
                    tracing::warn!(run = %run.id, error = %e, "marking a run as published failed");
                }
            }
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "publishing an approved run failed; it will be republished")
            }
        }
    }
}
