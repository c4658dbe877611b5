//! The runs page and a run's page: its header, and the timeline of its attempts and steps
//! (each LLM answer with its tool calls, each tool result), which `live.rs` keeps current while
//! the run runs.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use maud::{Markup, html};
use nightshift_proto::v1 as pb;
use pb::run_step::Payload;
use serde::Deserialize;

use super::agents::agent_path;
use super::{App, Posted, Signed};
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Nav};

/// Runs on one page of the runs list.
const PAGE: u32 = 50;
/// Longest text of one step shown (a tool's output can be large).
const MAX_STEP_TEXT: usize = 20_000;

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    /// Agent name.
    #[serde(default)]
    agent: String,
    #[serde(default)]
    ns: String,
    /// A run state's name.
    #[serde(default)]
    status: String,
    #[serde(default)]
    page: String,
}

impl Filter {
    fn query(&self, page: &str) -> String {
        let pairs = [("agent", self.agent.as_str()), ("ns", &self.ns), ("status", &self.status), ("page", page)];
        format!("/runs{}", view::query(&pairs))
    }
}

fn parse_status(name: &str) -> Result<Option<pb::RunStatus>, PageError> {
    if name.is_empty() {
        return Ok(None);
    }
    name.parse::<nightshift_core::RunStatus>()
        .map(|s| Some(s.to_pb()))
        .map_err(|_| PageError::BadRequest(format!("status: '{name}' is not a run state")))
}

/// `GET /runs`.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Query(f): Query<Filter>,
) -> Result<Markup, PageError> {
    let agent = (!f.agent.trim().is_empty()).then(|| pb::AgentRef::by_name_in(f.ns.trim(), f.agent.trim()));
    let statuses = parse_status(&f.status)?.map(|s| s as i32).into_iter().collect();
    let req = pb::ListRunsRequest {
        agent,
        statuses,
        page_size: PAGE,
        page_token: f.page.clone(),
        namespace: if f.agent.trim().is_empty() { f.ns.trim().to_owned() } else { String::new() },
    };
    let page = app.backends.manager(&s).list_runs(req).await?.into_inner();
    let states = [
        "queued",
        "running",
        "awaiting_approval",
        "awaiting_budget",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
        "timed_out",
    ];
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" role="search" {
            label { "Agent " input type="text" name="agent" value=(f.agent) placeholder="name"; }
            label { "Namespace " input type="text" name="ns" value=(f.ns) placeholder="all mine"; }
            (view::choice("State", "status", &f.status, &states))
            button type="submit" { "Filter" }
        }
        (runs_table(&page.runs, true))
        nav.pager aria-label="Pages" {
            @if !f.page.is_empty() { a href=(f.query("")) { "« First page" } }
            @if !page.next_page_token.is_empty() { a href=(f.query(&page.next_page_token)) { "Next page »" } }
        }
    };
    Ok(view::page("Runs", &s, Nav::Runs, body))
}

/// A table of runs, newest first.
pub(crate) fn runs_table(runs: &[pb::Run], with_agent: bool) -> Markup {
    html! {
        div.scroll { table.runs {
            thead { tr {
                th { "Run" } @if with_agent { th { "Agent" } } th { "State" } th { "Trigger" } th { "Attempt" }
                th { "Created" } th { "Duration" } th { "Tokens" }
            } }
            tbody {
                @for r in runs {
                    tr {
                        td { a href={ "/runs/" (view::encode(&r.id)) } { code { (view::clip(&r.id, 48)) } } }
                        @if with_agent { td { (r.agent_name) } }
                        td { (view::status(r.status)) }
                        td { (trigger(r.trigger)) }
                        td { (r.attempt) }
                        td { (view::time(r.created_at.as_ref())) }
                        td { (view::elapsed(r.started_at.as_ref(), r.finished_at.as_ref()).map(view::millis).unwrap_or_default()) }
                        td { (view::usage(r.usage.as_ref())) }
                    }
                }
                @if runs.is_empty() { tr { td colspan="8" .muted { "No runs." } } }
            }
        } }
    }
}

fn trigger(t: i32) -> &'static str {
    match pb::TriggerKind::try_from(t) {
        Ok(pb::TriggerKind::Schedule) => "schedule",
        Ok(pb::TriggerKind::Manual) => "manual",
        _ => "—",
    }
}

/// `GET /runs/{id}`.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let got = app.backends.manager(&s).get_run(pb::GetRunRequest { run_id: id.clone() }).await?.into_inner();
    let terminal = view::is_terminal(got.run.as_ref().map_or(0, |r| r.status));
    let live = (!terminal).then(|| format!("/runs/{}/live", view::encode(&id)));
    let body = html! {
        div #run data-live-run=[live] aria-live="polite" { (run_section(&s, &got, &app.trace_url)) }
    };
    Ok(view::page(&format!("Run {}", view::clip(&id, 40)), &s, Nav::Runs, body))
}

/// A run's header and timeline: the part of its page the live stream replaces.
pub(crate) fn run_section(s: &Session, got: &pb::GetRunResponse, trace_url: &str) -> Markup {
    let default = pb::Run::default();
    let run = got.run.as_ref().unwrap_or(&default);
    let terminal = view::is_terminal(run.status);
    let costs: HashMap<u32, Option<i64>> = got.costs.iter().map(|c| (c.seq, c.cost_micro_usd)).collect();
    let priced: Vec<i64> = costs.values().flatten().copied().collect();
    let agent = pb::AgentSpec { name: run.agent_name.clone(), namespace: run.namespace.clone(), ..Default::default() };
    html! {
        header.title {
            h1 { "Run " code { (run.id) } " " (view::status(run.status)) }
            p.muted {
                "agent " a href=(agent_path(Some(&agent))) { (run.agent_name) } " v" (run.agent_version)
                " · " (trigger(run.trigger)) " · attempt " (run.attempt) " · retries " (run.retries)
                @if !run.worker_id.is_empty() { " · worker " code { (run.worker_id) } }
                @if !run.replay_of.is_empty() {
                    " · replay of " a href={ "/runs/" (view::encode(&run.replay_of)) } { code { (view::clip(&run.replay_of, 40)) } }
                }
            }
        }
        section.stats aria-label="Run" {
            dl {
                div { dt { "Scheduled for" } dd { (view::time(run.scheduled_for.as_ref())) } }
                div { dt { "Created" } dd { (view::time(run.created_at.as_ref())) } }
                div { dt { "Started" } dd { (view::time(run.started_at.as_ref())) } }
                div { dt { "Finished" } dd { (view::time(run.finished_at.as_ref())) } }
                div { dt { "Duration" } dd { (view::elapsed(run.started_at.as_ref(), run.finished_at.as_ref()).map(view::millis).unwrap_or_else(|| "—".into())) } }
                div { dt { "Tokens" } dd { (view::usage(run.usage.as_ref())) } }
                div { dt { "Cost" } dd title="LLM calls priced at the manager's [prices] table" {
                    (cost(priced.iter().sum::<i64>(), costs.len() - priced.len()))
                } }
            }
            @if let Some(q) = &run.query_override { p { "Query for this run: " q { (q) } } }
            @if !run.reason.is_empty() { p { "Reason: " (run.reason) } }
            @if !run.error.is_empty() { p.error { "Error: " (view::clip(&run.error, 2000)) } }
            @if run.status == pb::RunStatus::AwaitingApproval as i32 {
                p.waiting { "Waiting for a person's approval of a tool call: "
                    a href={ "/approvals" (view::query(&[("run", &run.id)])) } { "decide" } }
            } @else if run.attempt > 1 {
                p { a href={ "/approvals" (view::query(&[("run", &run.id)])) } { "Approvals of this run" } }
            }
        }
        section.actions aria-label="Actions" {
            @if !terminal && s.may_control() {
                form.inline method="post" action={ "/runs/" (view::encode(&run.id)) "/cancel" } {
                    (view::csrf(s))
                    button.danger type="submit" { "Cancel run" }
                }
            }
            @if !trace_url.is_empty() {
                a href=(trace_url.replace("{run_id}", &view::encode(&run.id))) rel="noopener" { "Trace" }
            }
        }
        section aria-label="Timeline" {
            h2 { "Timeline" }
            ol.timeline { (timeline(run, &costs, terminal)) }
        }
    }
}

/// Money in USD, and how many calls had no price ("—" when none was priced).
fn cost(micros: i64, unpriced: usize) -> String {
    let usd = |m: i64| nightshift_core::cost::format_usd(u64::try_from(m).unwrap_or(0));
    match (micros, unpriced) {
        (0, 0) => "—".into(),
        (m, 0) => usd(m),
        (m, n) => format!("{} + {n} unpriced call{}", usd(m), if n == 1 { "" } else { "s" }),
    }
}

/// The steps of every attempt in order, then the answer (or a "running" mark while it runs).
fn timeline(run: &pb::Run, costs: &HashMap<u32, Option<i64>>, terminal: bool) -> Markup {
    html! {
        @for (i, step) in run.steps.iter().enumerate() {
            @if i == 0 || run.steps[i - 1].attempt != step.attempt {
                @if step.attempt == 0 {
                    li.attempt { "Reused from run " a href={ "/runs/" (view::encode(&run.replay_of)) } { code { (view::clip(&run.replay_of, 40)) } } }
                } @else {
                    li.attempt { "Attempt " (step.attempt) }
                }
            }
            @if let Some(Payload::LlmResponse(r)) = &step.payload
                && let Some(recall) = r.prompt.as_ref().and_then(|p| p.recall.as_ref()) {
                (recall_item(recall))
            }
            (step_item(step, costs.get(&step.seq).copied()))
        }
        @if run.status == pb::RunStatus::Succeeded as i32 {
            li.step.answer data-step="answer" {
                div.what { strong { "Answer" } }
                pre.text { (view::clip(&run.result, MAX_STEP_TEXT)) }
            }
        } @else if !terminal {
            li.step.pending data-step="pending" { span.spinner aria-hidden="true" {} " " (view::status_name(run.status)) "…" }
        }
    }
}

/// What memory an attempt's prompt was given.
fn recall_item(r: &pb::MemoryRecall) -> Markup {
    html! {
        li.step.memory data-step="recall" {
            div.what {
                strong { "Memory recalled" } " · " (r.episodes) " episodes · " (r.facts) " facts · " (r.notes) " notes"
                @if r.working { " · notes of earlier attempts" }
                " · " (view::duration(r.latency.as_ref()))
                @if r.errors > 0 { " · " span.error { (r.errors) " memory calls failed (the run went on without them)" } }
            }
        }
    }
}

/// What an LLM call was sent: the whole prompt for an attempt's first call, else what it added.
fn prompt_sent(p: &pb::PromptSent) -> Markup {
    html! {
        details.prompt {
            summary {
                "Sent: " @if p.first { "system prompt, " } @else { "the system prompt and task above, then " }
                (p.messages) " message" @if p.messages != 1 { "s" } " · " (p.tools) " tool" @if p.tools != 1 { "s" } " offered"
                @if p.final_only { " · asked for a final answer (no more tool calls)" }
            }
            @if p.first {
                div.call { "system" pre.text { (view::clip(&p.system, MAX_STEP_TEXT)) } }
                div.call { "user" pre.text { (view::clip(&p.user, MAX_STEP_TEXT)) } }
            }
        }
    }
}

fn step_item(step: &pb::RunStep, cost_micros: Option<Option<i64>>) -> Markup {
    match &step.payload {
        Some(Payload::LlmResponse(r)) => html! {
            li.step.llm data-step="llm" {
                div.what {
                    strong { "LLM" } " " code { (r.model) } " · " (view::usage(r.usage.as_ref()))
                    @match cost_micros { Some(Some(m)) => { " · " span.cost { (cost(m, 0)) } } Some(None) => { " · " span.cost { "unpriced" } } None => {} }
                    " · " (view::duration(r.latency.as_ref())) " · " (r.finish_reason) " · " (view::time(step.created_at.as_ref()))
                }
                @if let Some(p) = &r.prompt { (prompt_sent(p)) }
                @if !r.content.is_empty() { pre.text { (view::clip(&r.content, MAX_STEP_TEXT)) } }
                @for call in &r.tool_calls {
                    div.call { "calls " code { (call.name) } pre.json { (view::clip(&view::pretty_json(&call.arguments_json), MAX_STEP_TEXT)) } }
                }
            }
        },
        Some(Payload::ToolResult(t)) => html! {
            li class={ "step tool" @if t.is_error { " failed" } } data-step="tool" {
                div.what {
                    strong { "Tool" } " " code { (t.tool_name) } " · " (view::duration(t.duration.as_ref()))
                    " · " (if t.is_error { "error" } else { "ok" }) " · " (view::time(step.created_at.as_ref()))
                }
                pre.text { (view::clip(&view::pretty_json(&t.output), MAX_STEP_TEXT)) }
            }
        },
        Some(Payload::ToolStarted(t)) => html! {
            li.step.started data-step="started" {
                div.what {
                    strong { "Started" } " " code { (t.tool_name) } " · irreversible: not repeated after a crash · "
                    (view::time(step.created_at.as_ref()))
                }
                pre.json { (view::clip(&view::pretty_json(&t.arguments_json), MAX_STEP_TEXT)) }
            }
        },
        Some(Payload::MemoryStored(m)) => html! {
            li class={ "step memory" @if !m.error.is_empty() { " failed" } } data-step="memory" {
                div.what {
                    strong { "Memory stored" } " episode " code { (m.record_id) } " · " (view::duration(m.latency.as_ref()))
                    " · " (view::time(step.created_at.as_ref()))
                }
                @if !m.error.is_empty() { p.error { "Not stored: " (m.error) } }
            }
        },
        None => html! {},
    }
}

#[derive(Deserialize)]
pub(super) struct CancelForm {
    #[serde(default)]
    reason: String,
}

/// `POST /runs/{id}/cancel`.
pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    posted: Posted<CancelForm>,
) -> Result<Redirect, PageError> {
    let reason = match posted.form.reason.trim() {
        "" => format!("cancelled in the console by {}", posted.session.name),
        r => view::clip(r, 500),
    };
    app.backends.manager(&posted.session).cancel_run(pb::CancelRunRequest { run_id: id.clone(), reason }).await?;
    Ok(Redirect::to(&format!("/runs/{}", view::encode(&id))))
}
