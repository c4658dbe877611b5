//! Approvals: the tool calls waiting for a person (`/approvals`, or one run's with `?run=`),
//! each with its arguments, effect and expiry, and Approve (optionally with edited arguments) /
//! Deny (with a reason the model reads) for users who may decide. The manager decides who may:
//! the buttons are only hidden from viewers.
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use maud::{Markup, html};
use nightshift_proto::v1 as pb;
use serde::Deserialize;

use super::{App, Posted, Signed};
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Nav};

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    /// Only this run's (every state); else the pending ones of every run.
    #[serde(default)]
    run: String,
}

/// `GET /approvals`.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Query(f): Query<Filter>,
) -> Result<Markup, PageError> {
    let statuses = if f.run.is_empty() {
        vec![pb::ApprovalStatus::Pending as i32]
    } else {
        [
            pb::ApprovalStatus::Pending,
            pb::ApprovalStatus::Approved,
            pb::ApprovalStatus::Denied,
            pb::ApprovalStatus::Expired,
        ]
        .map(|s| s as i32)
        .to_vec()
    };
    let req = pb::ListApprovalsRequest { statuses, run_id: f.run.clone(), page_size: 100, ..Default::default() };
    let approvals = app.backends.manager(&s).list_approvals(req).await?.into_inner().approvals;
    let title =
        if f.run.is_empty() { "Approvals".to_owned() } else { format!("Approvals of run {}", view::clip(&f.run, 40)) };
    let body = html! {
        header.title {
            h1 { (title) }
            p.muted { "Tool calls that wait for a person. A run waiting here holds no worker; once every call of it is decided it resumes on any worker and runs exactly the approved call." }
        }
        @if approvals.is_empty() { p.muted { "Nothing waits for approval." } }
        @for a in &approvals { (card(&s, a)) }
    };
    Ok(view::page(&title, &s, Nav::Approvals, body))
}

fn card(s: &Session, a: &pb::Approval) -> Markup {
    let status = view::approval_status(a.status());
    let effect = nightshift_core::governance::Effect::from_pb(a.effect()).map_or("unknown", |e| e.as_str());
    let action = |verb: &str| format!("/approvals/{}/{verb}", view::encode(&a.id));
    html! {
        section.approval data-approval=(a.id) aria-label={ "Approval " (a.id) } {
            h2 {
                code { (a.tool_name) } " " span class={ "badge " (status) } { (status) }
            }
            p.muted {
                "agent " (a.agent_name) " · run " a href={ "/runs/" (view::encode(&a.run_id)) } { code { (a.run_id) } }
                " · effect " (effect) " · asked " (view::time(a.requested_at.as_ref()))
                @if a.status() == pb::ApprovalStatus::Pending { " · expires " (view::time(a.expires_at.as_ref())) }
            }
            pre.json { (view::clip(&view::pretty_json(&a.arguments_json), 8000)) }
            @if let Some(edited) = &a.approved_arguments_json {
                p { "Approved with edited arguments:" }
                pre.json { (view::clip(&view::pretty_json(edited), 8000)) }
            }
            @if !a.decided_by.is_empty() || !a.reason.is_empty() {
                p { "Decided by " (a.decided_by) @if !a.reason.is_empty() { ": " (a.reason) } }
            }
            @if a.status() == pb::ApprovalStatus::Pending && s.may_control() {
                form.approve method="post" action=(action("approve")) {
                    (view::csrf(s))
                    input type="hidden" name="asked" value=(a.arguments_json);
                    label { "Arguments (edit to run the call with others)"
                        textarea name="arguments" rows="4" { (view::pretty_json(&a.arguments_json)) }
                    }
                    label { "Reason " input type="text" name="reason" maxlength="1024"; }
                    button type="submit" { "Approve" }
                }
                form.deny method="post" action=(action("deny")) {
                    (view::csrf(s))
                    label { "Reason (the model reads it) " input type="text" name="reason" maxlength="1024"; }
                    button.danger type="submit" { "Deny" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Decision {
    /// The arguments as shown (re-indented), perhaps edited.
    #[serde(default)]
    arguments: Option<String>,
    /// The arguments the model asked for.
    #[serde(default)]
    asked: String,
    #[serde(default)]
    reason: String,
}

/// `POST /approvals/{id}/{approve|deny}`: back to the run's approvals.
pub(super) async fn decide(
    State(app): State<Arc<App>>,
    Path((id, verb)): Path<(String, String)>,
    posted: Posted<Decision>,
) -> Result<Redirect, PageError> {
    let mut manager = app.backends.manager(&posted.session);
    let reason = posted.form.reason.trim().to_owned();
    let approval = match verb.as_str() {
        "approve" => {
            // Unchanged arguments (re-indented for the textarea) are the model's: no edit.
            let edited = posted.form.arguments.as_deref().map(str::trim).filter(|t| !t.is_empty());
            let edited = edited.filter(|t| !same_json(t, &posted.form.asked)).map(str::to_owned);
            let req = pb::ApproveToolCallRequest { approval_id: id.clone(), arguments_json: edited, reason };
            manager.approve_tool_call(req).await?.into_inner().approval
        }
        "deny" => {
            manager
                .deny_tool_call(pb::DenyToolCallRequest { approval_id: id.clone(), reason })
                .await?
                .into_inner()
                .approval
        }
        _ => return Err(PageError::NotFound(format!("no action {verb}"))),
    };
    let run = approval.map(|a| a.run_id).unwrap_or_default();
    Ok(Redirect::to(&format!("/approvals{}", view::query(&[("run", &run)]))))
}

/// Whether two JSON texts hold the same value (formatting aside).
fn same_json(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
