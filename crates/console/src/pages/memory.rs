//! An agent's memory: what its runs read before they start — the newest episodes, its
//! long-term facts and procedural notes, the record counts per type — and a semantic search.
//! Reading memory needs the operator or admin role (the memory service decides).
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use nightshift_core::{Namespace, SessionScope};
use nightshift_proto::v1 as pb;
use serde::Deserialize;

use super::{App, Signed};
use crate::error::PageError;
use crate::view::{self, Nav};

/// Records listed per memory type.
const LISTED: u32 = 20;
/// Search hits shown.
const HITS: u32 = 10;
/// Longest search text.
const MAX_QUERY: usize = 1000;

#[derive(Deserialize, Default)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

fn type_name(t: i32) -> &'static str {
    match pb::MemoryType::try_from(t) {
        Ok(pb::MemoryType::Working) => "working",
        Ok(pb::MemoryType::Episodic) => "episodic",
        Ok(pb::MemoryType::LongTerm) => "long-term",
        Ok(pb::MemoryType::Procedural) => "procedural",
        _ => "unknown",
    }
}

fn records(title: &str, list: &[pb::MemoryRecord]) -> Markup {
    html! {
        h2 { (title) }
        @if list.is_empty() { p.muted { "None." } }
        ol.memory { @for r in list {
            li data-memory-type=(type_name(r.r#type)) {
                div.what {
                    (view::time(r.created_at.as_ref()))
                    @if !r.run_id.is_empty() { " · run " a href={ "/runs/" (view::encode(&r.run_id)) } { code { (view::clip(&r.run_id, 40)) } } }
                    @if r.summary { " · " span.badge.skipped { "summary" } }
                }
                pre.text { (view::clip(&r.content, 4000)) }
            }
        } }
    }
}

/// `GET /agents/{namespace}/{name}/memory?q=`.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Path((namespace, name)): Path<(String, String)>,
    Query(search): Query<Search>,
) -> Result<Markup, PageError> {
    let q = search.q.trim();
    if q.len() > MAX_QUERY {
        return Err(PageError::BadRequest(format!("q: at most {MAX_QUERY} bytes")));
    }
    let agent = Some(pb::AgentRef::by_name_in(namespace.clone(), name.clone()));
    let agent = app.backends.manager(&s).get_agent(pb::GetAgentRequest { agent }).await?.into_inner().agent;
    let agent = agent.unwrap_or_default();
    let spec = agent.spec.clone().unwrap_or_default();
    let path = format!("/agents/{}/{}", view::encode(&namespace), view::encode(&name));
    let session = spec.memory.as_ref().map(|m| m.session.as_str()).unwrap_or_default();
    let scope = SessionScope::parse("memory.session", session).map_err(|e| PageError::BadRequest(e.to_string()))?;
    let ns =
        Namespace::parse_or_default("namespace", &spec.namespace).map_err(|e| PageError::BadRequest(e.to_string()))?;
    let header = html! {
        h1 { a href=(path) { (name) } ": memory" }
        p.muted { "session scope " code { (scope) } }
    };
    if scope == SessionScope::Run {
        let body = html! { (header) p { "This agent's memory is per run (" code { "memory.session: run" } "): each run reads and writes only its own." } };
        return Ok(view::page(&format!("{name} memory"), &s, Nav::Agents, body));
    }
    let scope = Some(pb::MemoryScope { agent_id: agent.id.clone(), session: scope.session_key(&ns, "") });
    let mut memory = app.backends.memory(&s);
    let stats = memory.stats(pb::MemoryStatsRequest { scope: scope.clone() }).await;
    let stats = match stats {
        Ok(r) => r.into_inner().types,
        Err(e) if e.code() == tonic::Code::PermissionDenied => {
            let body = html! { (header) p.error { "Reading an agent's memory needs the operator or admin role." } };
            return Ok(view::page(&format!("{name} memory"), &s, Nav::Agents, body));
        }
        Err(e) => return Err(e.into()),
    };
    let recall = |t: pb::MemoryType, limit: u32| {
        let mut m = memory.clone();
        let req = pb::RecallRequest { scope: scope.clone(), r#type: t as i32, limit, ..Default::default() };
        async move { m.recall(req).await.map(|r| r.into_inner().records) }
    };
    let (episodes, facts, notes) = tokio::join!(
        recall(pb::MemoryType::Episodic, LISTED),
        recall(pb::MemoryType::LongTerm, LISTED),
        recall(pb::MemoryType::Procedural, LISTED),
    );
    let hits = if q.is_empty() {
        Vec::new()
    } else {
        let req =
            pb::SearchMemoryRequest { scope: scope.clone(), query: q.to_owned(), top_k: HITS, ..Default::default() };
        memory.search(req).await?.into_inner().hits
    };
    let body = html! {
        (header)
        section.stats { dl { @for t in &stats { div { dt { (type_name(t.r#type)) } dd { (t.records) } } } } }
        form.filters method="get" action={ (path) "/memory" } role="search" {
            label { "Search " input type="search" name="q" value=(q) maxlength=(MAX_QUERY) placeholder="by meaning"; }
            button type="submit" { "Search" }
        }
        @if !q.is_empty() {
            h2 { "Search: " q { (q) } }
            @if hits.is_empty() { p.muted { "No match (semantic search needs a vector index; see the memory service's settings)." } }
            ol.memory { @for h in &hits { @if let Some(r) = &h.record {
                li data-memory-type=(type_name(r.r#type)) {
                    div.what { (type_name(r.r#type)) " · score " (format!("{:.3}", h.score)) " · " (view::time(r.created_at.as_ref())) }
                    pre.text { (view::clip(&r.content, 4000)) }
                }
            } } }
        }
        (records("Episodes (newest first)", &episodes?))
        (records("Long-term facts", &facts?))
        (records("Procedural notes", &notes?))
    };
    Ok(view::page(&format!("{name} memory"), &s, Nav::Agents, body))
}
