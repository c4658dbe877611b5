//! The events page: a live tail with filters (agent, run, type), pausable in the browser, and
//! replay from a time (`since`: an RFC 3339 instant or a duration ago such as `15m`).
use std::sync::Arc;

use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use nightshift_core::{EventType, pb};
use nightshift_events_client::{EventFilter, TailFrom, event_to_json};
use serde::Deserialize;

use super::{App, Signed};
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Nav};

/// The filter of the page and of its live stream (the same query string).
#[derive(Deserialize, Default, Clone)]
pub(crate) struct Filter {
    /// Agent name.
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub ns: String,
    #[serde(default)]
    pub run: String,
    /// An event type (`TOOL_CALL`, …).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Replay from: RFC 3339, or a duration ago (`15m`); empty = events from now on.
    #[serde(default)]
    pub since: String,
}

impl Filter {
    fn query(&self) -> String {
        view::query(&[
            ("agent", &self.agent),
            ("ns", &self.ns),
            ("run", &self.run),
            ("type", &self.kind),
            ("since", &self.since),
        ])
    }

    /// Where the tail starts.
    pub fn from(&self, now: DateTime<Utc>) -> Result<TailFrom, PageError> {
        let since = self.since.trim();
        if since.is_empty() {
            // From the moment the page asked, not from when the subscription is up: an event
            // published in between is not lost.
            return Ok(TailFrom::Since(now));
        }
        if let Ok(t) = nightshift_core::time::parse_rfc3339(since) {
            return Ok(TailFrom::Since(t));
        }
        let ago = nightshift_core::config::duration_text::parse(since)
            .map_err(|e| PageError::BadRequest(format!("since: an RFC 3339 time or a duration ago (15m): {e}")))?;
        let ago = chrono::Duration::from_std(ago).map_err(|_| PageError::BadRequest("since: too long ago".into()))?;
        Ok(TailFrom::Since(now - ago))
    }

    /// The event filter, agent names resolved to ids at the manager (events carry ids).
    pub async fn resolve(&self, app: &App, s: &Session) -> Result<EventFilter, PageError> {
        let mut filter = EventFilter::default();
        if !self.agent.trim().is_empty() {
            let agent = Some(pb::AgentRef::by_name_in(self.ns.trim(), self.agent.trim()));
            let a = app.backends.manager(s).get_agent(pb::GetAgentRequest { agent }).await?.into_inner();
            filter.agent_ids.push(a.agent.unwrap_or_default().id);
        } else if !self.ns.trim().is_empty() {
            filter.namespaces.push(self.ns.trim().to_owned());
        }
        if !self.run.trim().is_empty() {
            filter.run_ids.push(self.run.trim().to_owned());
        }
        if !self.kind.trim().is_empty() {
            let t = EventType::parse(self.kind.trim())
                .ok_or_else(|| PageError::BadRequest(format!("type: unknown event type '{}'", self.kind.trim())))?;
            filter.types.push(t);
        }
        Ok(filter)
    }
}

/// `GET /events`.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Query(f): Query<Filter>,
) -> Result<Markup, PageError> {
    // Checked here so that a bad filter is a page with the error, not a stream that ends.
    f.from(Utc::now())?;
    f.resolve(&app, &s).await?;
    let types = [
        "BACKGROUND_TASK_STARTED",
        "BACKGROUND_TASK_COMPLETED",
        "BACKGROUND_TASK_ERROR",
        "RUN_QUEUED",
        "RUN_SKIPPED",
        "RUN_RETRYING",
        "RUN_CANCELLED",
        "LLM_CALL",
        "TOOL_CALL",
        "SCHEDULE_FIRED",
        "SCHEDULE_MISSED",
        "AGENT_CREATED",
        "AGENT_UPDATED",
        "AGENT_DELETED",
        "AGENT_PAUSED",
        "AGENT_RESUMED",
        "AUDIT",
    ];
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/events" role="search" {
            label { "Agent " input type="text" name="agent" value=(f.agent) placeholder="name"; }
            label { "Namespace " input type="text" name="ns" value=(f.ns) placeholder="all mine"; }
            label { "Run " input type="text" name="run" value=(f.run) placeholder="run id"; }
            (view::choice("Type", "type", &f.kind, &types))
            label { "Replay from " input type="text" name="since" value=(f.since) placeholder="15m or 2026-12-05T10:00:00Z"; }
            button type="submit" { "Apply" }
        }
        p.tail-controls {
            button #tail-pause type="button" aria-pressed="false" { "Pause" }
            " " span #tail-state role="status" { "Connecting…" }
        }
        div.scroll {
            table.events data-live-events={ "/events/live" (f.query()) } {
                thead { tr { th { "Time" } th { "Type" } th { "Agent" } th { "Run" } th { "Data" } } }
                tbody {}
            }
        }
    };
    Ok(view::page("Events", &s, Nav::Events, body))
}

/// One event as a table row (newest rows go on top).
pub(crate) fn row(e: &pb::Event) -> Markup {
    let j = event_to_json(e);
    let kind = j.get("type").and_then(|v| v.as_str()).unwrap_or("UNKNOWN").to_owned();
    let data = j.get("data").map(|d| d.to_string()).unwrap_or_default();
    let agent = if e.agent_name.is_empty() { e.agent_id.as_str() } else { e.agent_name.as_str() };
    html! {
        tr data-type=(kind) data-cursor=(e.cursor) {
            td { (view::time(e.time.as_ref())) }
            td { code { (kind) } }
            td { (agent) }
            td { @if !e.run_id.is_empty() { a href={ "/runs/" (view::encode(&e.run_id)) } { code { (view::clip(&e.run_id, 40)) } } } }
            td.data { code { (view::clip(&data, 300)) } }
        }
    }
}
