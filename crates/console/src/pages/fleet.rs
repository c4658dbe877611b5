//! The workers and schedules page: each configured worker's capacity, active runs, draining
//! state and tools (`WorkerService.GetWorkerStatus`), the scheduler replicas and the shards each
//! holds (`GetSchedulerStatus`), and every schedule (`ListSchedules`: next fire, fired and missed
//! ticks).
use std::sync::Arc;

use axum::extract::{Query, State};
use futures::future::join_all;
use maud::{Markup, html};
use nightshift_proto::v1 as pb;
use serde::Deserialize;

use super::{App, Signed};
use crate::error::PageError;
use crate::view::{self, Nav};

/// Schedules on one page.
const PAGE: u32 = 100;

#[derive(Deserialize, Default)]
pub(super) struct Paging {
    #[serde(default)]
    page: String,
}

/// Shard numbers as ranges (`0-31, 40`).
fn shard_ranges(shards: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1] == shards[j] + 1 {
            j += 1;
        }
        out.push(if i == j { shards[i].to_string() } else { format!("{}-{}", shards[i], shards[j]) });
        i = j + 1;
    }
    out.join(", ")
}

/// `GET /workers`.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Query(p): Query<Paging>,
) -> Result<Markup, PageError> {
    let workers = join_all(app.backends.workers(&s).await.into_iter().map(|(uri, client)| async move {
        let status = match client {
            Ok(mut c) => c.get_worker_status(pb::GetWorkerStatusRequest {}).await.map(|r| r.into_inner()),
            Err(e) => Err(tonic::Status::unavailable(e)),
        };
        (uri, status)
    }))
    .await;
    let mut scheduler = app.backends.scheduler(&s);
    let members = scheduler.get_scheduler_status(pb::GetSchedulerStatusRequest {}).await.map(|r| r.into_inner());
    let schedules =
        scheduler.list_schedules(pb::ListSchedulesRequest { page_size: PAGE, page_token: p.page.clone() }).await;
    let body = html! {
        h1 { "Workers" }
        @if workers.is_empty() {
            p.muted { "No worker is configured (" code { "worker_endpoints" } " or " code { "worker_discovery" } " of the console)." }
        }
        @for (uri, status) in &workers {
            section.worker aria-label={ "Worker " (uri) } {
                @match status {
                    Ok(w) => {
                        h2 { code { (w.worker_id) } " " @if w.draining { span.badge.paused { "draining" } } @else { span.badge.active { "taking runs" } } }
                        p.muted { (uri) " · up since " (view::time(w.started_at.as_ref())) }
                        section.stats { dl {
                            div { dt { "Active runs" } dd data-active=(w.active_runs.len()) { (w.active_runs.len()) " / " (w.capacity) } }
                            div { dt { "Completed" } dd { (w.runs_completed) } }
                            div { dt { "Tools" } dd { (w.tools.len()) } }
                        } }
                        @if !w.active_runs.is_empty() {
                            div.scroll { table {
                                thead { tr { th { "Run" } th { "Agent" } th { "Attempt" } th { "LLM turns" } th { "Started" } } }
                                tbody { @for r in &w.active_runs { tr {
                                    td { a href={ "/runs/" (view::encode(&r.run_id)) } { code { (view::clip(&r.run_id, 40)) } } }
                                    td { (r.agent_name) } td { (r.attempt) } td { (r.step) }
                                    td { (view::time(r.started_at.as_ref())) }
                                } } }
                            } }
                        }
                    }
                    Err(e) => {
                        h2 { code { (uri) } " " span.badge.failed { "unreachable" } }
                        p.error { (format!("{:?}", e.code())) ": " (e.message()) }
                    }
                }
            }
        }
        h1 { "Schedulers" }
        @match &members {
            Ok(st) => {
                p.muted { (st.shard_count) " shards; answered by " code { (st.member_id) } }
                div.scroll { table.schedulers {
                    thead { tr { th { "Member" } th { "Last heartbeat" } th { "Shards held" } } }
                    tbody {
                        @for m in &st.members { tr data-member=(m.member_id) {
                            td { code { (m.member_id) } }
                            td { (view::time(m.heartbeat_at.as_ref())) }
                            td data-shards=(m.shards.len()) { (m.shards.len()) @if !m.shards.is_empty() { " (" (shard_ranges(&m.shards)) ")" } }
                        } }
                    }
                } }
                @if !st.unowned_shards.is_empty() {
                    p.error { (st.unowned_shards.len()) " shards held by nobody (" (shard_ranges(&st.unowned_shards)) "): their schedules fire once a member claims them." }
                }
            }
            Err(e) => p.error { "The scheduler did not answer: " (format!("{:?}", e.code())) ": " (e.message()) },
        }
        h1 { "Schedules" }
        @match &schedules {
            Ok(page) => {
                @let page = page.get_ref();
                div.scroll { table.schedules {
                    thead { tr { th { "Agent" } th { "Schedule" } th { "State" } th { "Next fire" } th { "Last fired" } th { "Fired" } th { "Missed" } } }
                    tbody {
                        @for sc in &page.schedules { tr {
                            td { (sc.agent_name) " " span.muted { "v" (sc.agent_version) } }
                            td { (nightshift_core::schedule::summary(sc.spec.as_ref())) }
                            td { @if sc.paused { span.badge.paused { "paused" } } @else { span.badge.active { "active" } } }
                            td { (view::time(sc.next_fire_at.as_ref())) }
                            td { (view::time(sc.last_fired_at.as_ref())) }
                            td { (sc.fired) } td { (sc.missed_ticks) }
                        } }
                        @if page.schedules.is_empty() { tr { td colspan="7" .muted { "No schedules." } } }
                    }
                } }
                nav.pager aria-label="Pages" {
                    @if !p.page.is_empty() { a href="/workers" { "« First page" } }
                    @if !page.next_page_token.is_empty() { a href={ "/workers?page=" (view::encode(&page.next_page_token)) } { "Next page »" } }
                }
            }
            Err(e) => p.error { "The scheduler did not answer: " (format!("{:?}", e.code())) ": " (e.message()) },
        }
    };
    Ok(view::page("Workers and schedules", &s, Nav::Workers, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shards_read_as_ranges() {
        assert_eq!(super::shard_ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3, 7, 9-10");
        assert_eq!(super::shard_ranges(&[]), "");
    }
}
