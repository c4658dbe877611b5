//! Server-Sent Events that keep pages current: a run's header and timeline while it runs, and
//! the event tail. Each stream is fed by a task that ends when the browser goes away, the run
//! ends, or the console shuts down (so that serving can stop).
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use nightshift_core::pb;
use nightshift_events_client::{EventFilter, TailFrom, TailOptions, tail};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::PageError;
use crate::pages::{App, Signed};
use crate::view;

/// How often a running run is read again when no event announces a change (events can be off
/// or lag; a step is visible within this).
const RUN_POLL: Duration = Duration::from_secs(1);
/// The same floor for a run that waits (queued, for a person, for its budget), which can take
/// days: its events still wake the page at once.
const WAITING_POLL: Duration = Duration::from_secs(10);

fn poll_of(run: &pb::GetRunResponse) -> Duration {
    match run.run.as_ref().map(|r| r.status()) {
        Some(pb::RunStatus::Running) => RUN_POLL,
        _ => WAITING_POLL,
    }
}

type EventStream = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

fn sse(rx: mpsc::Receiver<Result<Event, Infallible>>) -> EventStream {
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// `GET /runs/{id}/live`: `run` events carrying the run's section whenever it changes, then
/// `end` once the run is over.
pub(crate) async fn run(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> Result<EventStream, PageError> {
    // The first read answers the request: a run the user may not see fails here, as a page.
    let mut manager = app.backends.manager(&s);
    let first = manager.get_run(pb::GetRunRequest { run_id: id.clone() }).await?.into_inner();
    let (tx, rx) = mpsc::channel(8);
    // The run's events wake the loop at once; the poll is the floor.
    let changed = Arc::new(Notify::new());
    let watch = {
        let (app, s, id, changed, tx) = (app.clone(), s.clone(), id.clone(), changed.clone(), tx.clone());
        tokio::spawn(async move {
            let options = TailOptions {
                filter: EventFilter { run_ids: vec![id], ..EventFilter::default() },
                from: TailFrom::Since(chrono::Utc::now()),
                follow: true,
            };
            let mut events = app.backends.events(&s);
            let ended = tail(&mut events, options, |_| {
                changed.notify_one();
                if tx.is_closed() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            });
            tokio::select! {
                r = ended => if let Err(e) = r { tracing::debug!(error = %e, "run events unavailable; polling") },
                () = tx.closed() => {}
            }
        })
    };
    let closing = app.closing.clone();
    tokio::spawn(async move {
        let mut run = first;
        let mut last = String::new();
        loop {
            let html = crate::pages::run_section(&s, &run, &app.trace_url).into_string();
            if html != last {
                if tx.send(Ok(Event::default().event("run").data(html.as_str()))).await.is_err() {
                    break;
                }
                last = html;
            }
            if view::is_terminal(run.run.as_ref().map_or(0, |r| r.status)) {
                let _ = tx.send(Ok(Event::default().event("end").data(""))).await;
                break;
            }
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(poll_of(&run)) => {}
                () = tx.closed() => break,
                () = closing.cancelled() => break,
            }
            match manager.get_run(pb::GetRunRequest { run_id: id.clone() }).await {
                Ok(r) => run = r.into_inner(),
                Err(e) => {
                    tracing::debug!(error = %e, run = %id, "live run: reading the run failed");
                    let _ = tx.send(Ok(Event::default().event("error").data(e.message()))).await;
                    break;
                }
            }
        }
        watch.abort();
    });
    Ok(sse(rx))
}

/// `GET /events/live?…`: an `event` per matching event (a table row), from `since` or from now.
///
/// Each event carries its cursor as the SSE id: a browser that reconnects sends it back
/// (`Last-Event-ID`) and the tail resumes right after it, with no gap and no duplicate.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Signed(s): Signed,
    headers: axum::http::HeaderMap,
    Query(f): Query<crate::pages::EventsFilter>,
) -> Result<EventStream, PageError> {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|c| !c.is_empty() && c.len() <= 128);
    let from = match resume {
        Some(cursor) => TailFrom::After(cursor.to_owned()),
        None => f.from(chrono::Utc::now())?,
    };
    let options = TailOptions { filter: f.resolve(&app, &s).await?, from, follow: true };
    let (tx, rx) = mpsc::channel(256);
    let closing = app.closing.clone();
    let _ = tx.try_send(Ok(Event::default().event("ready").data("")));
    tokio::spawn(async move {
        let mut client = app.backends.events(&s);
        let sender = tx.clone();
        let ended = tail(&mut client, options, move |e| {
            let row = crate::pages::event_row(e).into_string();
            match sender.try_send(Ok(Event::default().event("event").id(e.cursor.clone()).data(row))) {
                Ok(()) => ControlFlow::Continue(()),
                // A browser that reads slower than events come is dropped; the page says so
                // and offers to reconnect (from its last cursor, nothing lost).
                Err(_) => ControlFlow::Break(()),
            }
        });
        tokio::select! {
            r = ended => {
                let why = match r { Ok(_) => "the event stream ended".to_owned(), Err(e) => e.message().to_owned() };
                let _ = tx.send(Ok(Event::default().event("error").data(why))).await;
            }
            () = tx.closed() => {}
            () = closing.cancelled() => {}
        }
    });
    Ok(sse(rx))
}
