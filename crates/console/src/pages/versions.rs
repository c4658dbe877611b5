//! An agent's version history, and the difference between two versions' manifests.
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use nightshift_core::AgentManifest;
use nightshift_proto::v1 as pb;
use serde::Deserialize;
use similar::{ChangeTag, TextDiff};

use super::{App, Signed};
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Nav};

/// Versions listed on the agent's page.
pub(crate) const LISTED: u32 = 20;

/// The version history table of an agent's page: each version with a link to its changes.
pub(crate) fn history(path: &str, versions: &[pb::AgentVersion]) -> Markup {
    html! {
        div.scroll { table.versions {
            thead { tr { th { "Version" } th { "Recorded" } th { "Schedule" } th { "Model" } th { span.sr { "Changes" } } } }
            tbody {
                @for v in versions {
                    @let spec = v.spec.clone().unwrap_or_default();
                    tr data-version=(v.version) {
                        td { "v" (v.version) }
                        td { (view::time(v.created_at.as_ref())) }
                        td { (nightshift_core::schedule::summary(spec.schedule.as_ref())) }
                        td { code { (spec.model.as_ref().map(|m| m.model.as_str()).unwrap_or_default()) } }
                        td { @if v.version > 1 {
                            a href={ (path) "/diff?from=" (v.version - 1) "&to=" (v.version) } { "changes from v" (v.version - 1) }
                        } }
                    }
                }
            }
        } }
    }
}

#[derive(Deserialize)]
pub(super) struct Between {
    from: u64,
    to: u64,
}

async fn version(app: &App, s: &Session, agent: &pb::AgentRef, n: u64) -> Result<pb::AgentVersion, PageError> {
    let req =
        pb::ListAgentVersionsRequest { agent: Some(agent.clone()), page_size: 1, before_version: n.saturating_add(1) };
    let found = app.backends.manager(s).list_agent_versions(req).await?.into_inner().versions.into_iter().next();
    found.filter(|v| v.version == n).ok_or_else(|| PageError::NotFound(format!("no version {n} of this agent")))
}

/// `GET /agents/{namespace}/{name}/diff?from=A&to=B`: B's manifest against A's, line by line.
pub(super) async fn diff(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<Between>,
) -> Result<Markup, PageError> {
    if q.from == 0 || q.to == 0 {
        return Err(PageError::BadRequest("from and to: version numbers (1, 2, …)".into()));
    }
    let agent = pb::AgentRef::by_name_in(namespace.clone(), name.clone());
    let (from, to) = (version(&app, &s, &agent, q.from).await?, version(&app, &s, &agent, q.to).await?);
    let yaml = |v: &pb::AgentVersion| AgentManifest::from_proto(&v.spec.clone().unwrap_or_default()).to_yaml();
    let (old, new) = (yaml(&from), yaml(&to));
    let diff = TextDiff::from_lines(&old, &new);
    let path = format!("/agents/{}/{}", view::encode(&namespace), view::encode(&name));
    let body = html! {
        h1 { a href=(path) { (name) } ": v" (q.from) " → v" (q.to) }
        p.muted { "v" (q.from) " recorded " (view::time(from.created_at.as_ref())) ", v" (q.to) " recorded " (view::time(to.created_at.as_ref())) }
        @if old == new {
            p { "The two manifests are the same." }
        } @else {
            pre.diff aria-label="Changes" {
                @for group in diff.grouped_ops(3) {
                    span.hunk { "@@" }
                    @for op in group {
                        @for change in diff.iter_changes(&op) {
                            @let line = change.value().trim_end_matches('\n');
                            @match change.tag() {
                                ChangeTag::Delete => span.del { "- " (line) },
                                ChangeTag::Insert => span.ins { "+ " (line) },
                                ChangeTag::Equal => span { "  " (line) },
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(view::page(&format!("{name} v{} → v{}", q.from, q.to), &s, Nav::Agents, body))
}
