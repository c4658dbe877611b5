//! The agents page (filter, search, one page of 50 at a time) and the agent actions.
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use futures::future::join_all;
use maud::{Markup, html};
use nightshift_proto::v1 as pb;
use serde::Deserialize;

use super::{App, Posted, Signed, back_to};
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Nav};

/// Agents on one page.
const PAGE: u32 = 50;
/// Longest query override accepted from the trigger form.
const MAX_QUERY: usize = 16 * 1024;

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    /// Name contains.
    #[serde(default)]
    q: String,
    /// `active` or `paused`.
    #[serde(default)]
    state: String,
    /// `key=value`.
    #[serde(default)]
    label: String,
    #[serde(default)]
    ns: String,
    /// Page token.
    #[serde(default)]
    page: String,
}

impl Filter {
    fn request(&self) -> Result<pb::ListAgentsRequest, PageError> {
        let state = match self.state.as_str() {
            "" => pb::AgentState::Unspecified,
            "active" => pb::AgentState::Active,
            "paused" => pb::AgentState::Paused,
            other => return Err(PageError::BadRequest(format!("state: '{other}' is not active or paused"))),
        };
        let mut label_selector = std::collections::BTreeMap::new();
        if !self.label.trim().is_empty() {
            let (k, v) = self
                .label
                .split_once('=')
                .ok_or_else(|| PageError::BadRequest("label: write it as key=value".into()))?;
            label_selector.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(pb::ListAgentsRequest {
            page_size: PAGE,
            page_token: self.page.clone(),
            label_selector,
            state: state as i32,
            namespace: self.ns.trim().to_owned(),
            name_contains: self.q.trim().to_owned(),
        })
    }

    /// The query string of this filter on another page.
    fn with_page(&self, page: &str) -> String {
        let pairs =
            [("q", self.q.as_str()), ("state", &self.state), ("label", &self.label), ("ns", &self.ns), ("page", page)];
        format!("/agents{}", view::query(&pairs))
    }
}

/// The path of an agent's page.
pub(crate) fn agent_path(spec: Option<&pb::AgentSpec>) -> String {
    let (ns, name) = spec.map_or(("default", ""), |s| {
        (if s.namespace.is_empty() { "default" } else { s.namespace.as_str() }, s.name.as_str())
    });
    format!("/agents/{}/{}", view::encode(ns), view::encode(name))
}

/// `GET /agents`.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Query(filter): Query<Filter>,
) -> Result<Markup, PageError> {
    let mut manager = app.backends.manager(&s);
    let page = manager.list_agents(filter.request()?).await?.into_inner();
    // The status of each agent on the page (last run, next run, counts), at once.
    let statuses = join_all(page.agents.iter().map(|a| {
        let mut m = manager.clone();
        let agent = Some(pb::AgentRef::by_id(a.id.clone()));
        async move { m.get_agent_status(pb::GetAgentStatusRequest { agent }).await.ok().map(|r| r.into_inner()) }
    }))
    .await;
    let here = filter.with_page(&filter.page);
    let body = html! {
        h1 { "Agents" }
        form.filters method="get" action="/agents" role="search" {
            label { "Name " input type="search" name="q" value=(filter.q) placeholder="contains…"; }
            (view::choice("State", "state", &filter.state, &["active", "paused"]))
            label { "Label " input type="text" name="label" value=(filter.label) placeholder="key=value"; }
            label { "Namespace " input type="text" name="ns" value=(filter.ns) placeholder="all mine"; }
            button type="submit" { "Filter" }
        }
        div.scroll {
            table.agents {
                thead { tr {
                    th { "Name" } th { "Namespace" } th { "State" } th { "Schedule" } th { "Last run" }
                    th { "Next run" } th { "Last 24 h" } th { "Labels" } th { span.sr { "Actions" } }
                } }
                tbody {
                    @for (agent, status) in page.agents.iter().zip(&statuses) {
                        (row(&s, agent, status.as_ref(), &here))
                    }
                    @if page.agents.is_empty() {
                        tr { td colspan="9" .muted { "No agent matches." } }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !filter.page.is_empty() { a href=(filter.with_page("")) { "« First page" } }
            @if !page.next_page_token.is_empty() { a href=(filter.with_page(&page.next_page_token)) { "Next page »" } }
        }
    };
    Ok(view::page("Agents", &s, Nav::Agents, body))
}

fn row(s: &Session, agent: &pb::Agent, status: Option<&pb::GetAgentStatusResponse>, back: &str) -> Markup {
    let spec = agent.spec.as_ref();
    let path = agent_path(spec);
    let name = spec.map_or("", |s| s.name.as_str());
    let ns = spec.map_or("", |s| s.namespace.as_str());
    let paused = agent.state == pb::AgentState::Paused as i32;
    html! {
        tr data-agent=(name) {
            td { a href=(path) { (name) } }
            td { (if ns.is_empty() { "default" } else { ns }) }
            td { (view::agent_state(agent.state)) }
            td { (nightshift_core::schedule::summary(spec.and_then(|s| s.schedule.as_ref()))) }
            td {
                @match status.and_then(|st| st.last_run.as_ref()) {
                    Some(run) => { a href={ "/runs/" (view::encode(&run.id)) } { (view::status(run.status)) } " " (view::time(run.created_at.as_ref())) }
                    None => span.muted { "none yet" },
                }
            }
            td { (view::time(status.and_then(|st| st.next_run_at.as_ref()))) }
            td { @if let Some(st) = status { (view::day_chart(&st.last_24h)) } }
            td { @for (k, v) in spec.map(|s| &s.labels).into_iter().flatten() { span.label { (k) "=" (v) } " " } }
            td.actions { (actions(s, &path, paused, false, back)) }
        }
    }
}

/// The pause / resume and trigger buttons of an agent (disabled, with the reason, for a role
/// that may not use them; the services refuse them anyway).
pub(crate) fn actions(s: &Session, path: &str, paused: bool, with_query: bool, back: &str) -> Markup {
    let (disabled, why) =
        if s.may_control() { (false, None) } else { (true, Some("needs the operator or admin role")) };
    html! {
        form.inline method="post" action={ (path) "/" (if paused { "resume" } else { "pause" }) } {
            (view::csrf(s))
            input type="hidden" name="back" value=(back);
            button type="submit" disabled[disabled] title=[why] { (if paused { "Resume" } else { "Pause" }) }
        }
        form.inline method="post" action={ (path) "/trigger" } {
            (view::csrf(s))
            @if with_query {
                label.sr for="query" { "Query for this run" }
                textarea #query name="query" rows="2" maxlength=(MAX_QUERY) placeholder="Query for this run (empty: the agent's task)" disabled[disabled] {}
            }
            button type="submit" disabled[disabled || paused] title=[why.or(paused.then_some("the agent is paused"))] { "Trigger" }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    /// Trigger: the query for this run (empty = the agent's task).
    #[serde(default)]
    query: String,
    /// Delete: the agent's name, typed again.
    #[serde(default)]
    confirm: String,
    /// Pause / resume: the page to go back to.
    back: Option<String>,
}

/// `POST /agents/{namespace}/{name}/{pause|resume|trigger|delete}`.
pub(super) async fn act(
    State(app): State<Arc<App>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    posted: Posted<ActionForm>,
) -> Result<Redirect, PageError> {
    let Posted { session, form } = posted;
    let mut manager = app.backends.manager(&session);
    let agent = Some(pb::AgentRef::by_name_in(namespace.clone(), name.clone()));
    let here = format!("/agents/{}/{}", view::encode(&namespace), view::encode(&name));
    match action.as_str() {
        "pause" => {
            manager.pause_agent(pb::PauseAgentRequest { agent }).await?;
        }
        "resume" => {
            manager.resume_agent(pb::ResumeAgentRequest { agent }).await?;
        }
        "trigger" => {
            let query = form.query.trim();
            if query.len() > MAX_QUERY {
                return Err(PageError::BadRequest(format!("query: at most {MAX_QUERY} bytes")));
            }
            let query_override = (!query.is_empty()).then(|| query.to_owned());
            let run = manager.trigger_agent(pb::TriggerAgentRequest { agent, query_override }).await?.into_inner().run;
            // To the new run's timeline, which fills in as it runs.
            return Ok(back_to(run.map(|r| format!("/runs/{}", view::encode(&r.id))).as_deref(), &here));
        }
        "delete" => {
            if form.confirm.trim() != name {
                return Err(PageError::BadRequest(format!("type the agent's name ({name}) to delete it")));
            }
            manager.delete_agent(pb::DeleteAgentRequest { agent }).await?;
            return Ok(Redirect::to("/agents"));
        }
        other => return Err(PageError::NotFound(format!("no action '{other}'"))),
    }
    Ok(back_to(form.back.as_deref(), &here))
}
