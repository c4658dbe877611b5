//! An agent's page: its state and actions, its numbers, a chart of its recent runs, the runs,
//! its manifest, and deletion (confirmed by typing its name).
use std::sync::Arc;

use axum::extract::{Path, State};
use maud::{Markup, html};
use nightshift_core::AgentManifest;
use nightshift_proto::v1 as pb;

use super::agents::{actions, agent_path};
use super::runs::runs_table;
use super::versions::{LISTED, history};
use super::{App, Signed};
use crate::error::PageError;
use crate::view::{self, Nav};

/// Runs listed (and charted) on the page.
const RECENT_RUNS: u32 = 50;

/// `GET /agents/{namespace}/{name}`.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    let mut manager = app.backends.manager(&s);
    let agent_ref = || Some(pb::AgentRef::by_name_in(namespace.clone(), name.clone()));
    let agent =
        manager.get_agent(pb::GetAgentRequest { agent: agent_ref() }).await?.into_inner().agent.unwrap_or_default();
    let by_id = || Some(pb::AgentRef::by_id(agent.id.clone()));
    let (mut m2, mut m3) = (manager.clone(), manager.clone());
    let (status, runs, versions) = tokio::join!(
        manager.get_agent_status(pb::GetAgentStatusRequest { agent: by_id() }),
        m2.list_runs(pb::ListRunsRequest { agent: by_id(), page_size: RECENT_RUNS, ..Default::default() }),
        m3.list_agent_versions(pb::ListAgentVersionsRequest { agent: by_id(), page_size: LISTED, before_version: 0 }),
    );
    let status = status?.into_inner();
    let runs = runs?.into_inner().runs;
    let versions = versions?.into_inner().versions;
    let spec = agent.spec.clone().unwrap_or_default();
    let path = agent_path(Some(&spec));
    let paused = agent.state == pb::AgentState::Paused as i32;
    let manifest = AgentManifest::from_proto(&spec).to_yaml();
    let may = s.may_control();
    let body = html! {
        header.title {
            h1 { (spec.name) " " (view::agent_state(agent.state)) }
            p.muted {
                "namespace " (if spec.namespace.is_empty() { "default" } else { &spec.namespace })
                " · version " (agent.version) " · " (nightshift_core::schedule::summary(spec.schedule.as_ref()))
                " · next run " (view::time(status.next_run_at.as_ref()))
            }
            @if !spec.description.is_empty() { p { (spec.description) } }
        }
        section.actions aria-label="Actions" { (actions(&s, &path, paused, true, &path)) }
        section.stats aria-label="Numbers" {
            dl {
                div { dt { "Runs" } dd { (status.total_runs) } }
                div { dt { "Succeeded" } dd { (status.succeeded) } }
                div { dt { "Failed" } dd { (status.failed) } }
                div { dt { "Timed out" } dd { (status.timed_out) } }
                div { dt { "Skipped" } dd { (status.skipped) } }
                div { dt { "Cancelled" } dd { (status.cancelled) } }
                div { dt { "Running" } dd { (status.running) } }
                div { dt { "Queued" } dd { (status.queued) } }
                div { dt { "Mean duration" } dd { (view::duration(status.mean_duration.as_ref())) } }
                div { dt { "Tokens" } dd { (view::usage(status.total_usage.as_ref())) } }
                div { dt { "Cost" } dd title="LLM calls priced at the manager's [prices] table" { (nightshift_core::cost::format_usd(status.cost_micro_usd)) } }
                div { dt { "Last 24 h" } dd { (view::day_chart(&status.last_24h)) } }
            }
            @if !status.last_error.is_empty() {
                p.error { "Last error (" (view::time(status.last_error_at.as_ref())) "): " (view::clip(&status.last_error, 500)) }
            }
        }
        section aria-label="Recent runs" {
            h2 { "Recent runs" }
            (chart(&runs))
            (runs_table(&runs, false))
            p {
                a href={ "/runs?agent=" (view::encode(&spec.name)) "&ns=" (view::encode(&spec.namespace)) } { "All runs of " (spec.name) " »" }
                " · " a href={ (path) "/memory" } { "Memory »" }
                " · " a href={ "/events?agent=" (view::encode(&spec.name)) "&ns=" (view::encode(&spec.namespace)) } { "Events »" }
            }
        }
        section aria-label="Manifest" {
            h2 { "Manifest" }
            pre.code { code { (manifest) } }
        }
        section aria-label="Versions" {
            h2 { "Versions" }
            (history(&path, &versions))
        }
        @if may {
            section.danger aria-label="Delete" {
                h2 { "Delete" }
                form method="post" action={ (path) "/delete" } {
                    (view::csrf(&s))
                    label for="confirm" { "Type " code { (spec.name) } " to delete this agent, its schedule and its history" }
                    input #confirm type="text" name="confirm" autocomplete="off" required;
                    button.danger type="submit" { "Delete agent" }
                }
            }
        }
    };
    Ok(view::page(&spec.name, &s, Nav::Agents, body))
}

/// The recent runs as bars, oldest left: height = duration, colour = outcome. An SVG in the
/// page (no script, no style attribute: the content security policy allows neither inline).
fn chart(runs: &[pb::Run]) -> Markup {
    let durations: Vec<f64> =
        runs.iter().map(|r| view::elapsed(r.started_at.as_ref(), r.finished_at.as_ref()).unwrap_or(0.0)).collect();
    let longest = durations.iter().copied().fold(1.0_f64, f64::max);
    let (w, h) = (8usize, 40.0_f64);
    html! {
        svg.chart width=(runs.len().max(1) * w) height=(h as u32 + 2) role="img"
            aria-label={ "Durations of the last " (runs.len()) " runs" } {
            @for (i, (run, ms)) in runs.iter().rev().zip(durations.iter().rev()).enumerate() {
                @let bar = (ms / longest * h).max(2.0);
                rect class=(view::status_name(run.status)) x=(i * w) y=(format!("{:.1}", h - bar + 1.0))
                    width=(w - 2) height=(format!("{bar:.1}")) {
                    title { (run.id) ": " (view::status_name(run.status)) ", " (view::millis(*ms)) }
                }
            }
        }
    }
}
