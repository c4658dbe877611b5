//! [`tail`]: print history and/or follow the event stream, as `nightshift events tail` does.
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use nightshift_core::pb;
use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_rpc::CallChannel;
use tonic::Status;

use crate::convert::{filter_to_pb, page_token_after};
use crate::filter::EventFilter;

/// Where a tail starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TailFrom {
    /// Only new events (with `follow = false` there is nothing to show).
    #[default]
    Now,
    /// The whole retained history.
    Beginning,
    /// Strictly after this cursor.
    After(String),
    /// Events from this instant on.
    Since(DateTime<Utc>),
}

/// What to tail.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Agent / run / type filter (applied by the server).
    pub filter: EventFilter,
    /// Start position.
    pub from: TailFrom,
    /// Keep following new events (Subscribe) instead of stopping at the end of history
    /// (ListEvents).
    pub follow: bool,
}

/// Calls `on_event` for every matching event, oldest first, until the history is exhausted
/// (`follow = false`), the callback returns `Break`, or the server ends the stream. When
/// following, a `Lagged` signal is handled by resubscribing after the resume cursor, so the
/// callback sees every event exactly once. Returns the cursor of the last event seen.
pub async fn tail<F>(
    client: &mut EventServiceClient<CallChannel>,
    options: TailOptions,
    mut on_event: F,
) -> Result<Option<String>, Status>
where
    F: FnMut(&pb::Event) -> ControlFlow<()>,
{
    let filter = filter_to_pb(&options.filter);
    let mut last: Option<String> = None;
    if !options.follow {
        let (mut page_token, since) = match &options.from {
            TailFrom::Now => return Ok(None),
            TailFrom::Beginning => (String::new(), None),
            TailFrom::After(c) => (page_token_after(c), None),
            TailFrom::Since(t) => (String::new(), Some(nightshift_core::time::to_pb(*t))),
        };
        loop {
            let page = client
                .list_events(pb::ListEventsRequest {
                    filter: Some(filter.clone()),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    since,
                    until: None,
                })
                .await?
                .into_inner();
            for e in &page.events {
                last = Some(e.cursor.clone());
                if on_event(e).is_break() {
                    return Ok(last);
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(last);
            }
            page_token = page.next_page_token;
        }
    }
    use pb::subscribe_request::From;
    let mut from = match options.from {
        TailFrom::Now => None,
        TailFrom::Beginning => Some(From::FromBeginning(true)),
        TailFrom::After(c) => Some(From::AfterCursor(c)),
        TailFrom::Since(t) => Some(From::Since(nightshift_core::time::to_pb(t))),
    };
    loop {
        let req = pb::SubscribeRequest { filter: Some(filter.clone()), from: from.clone() };
        let mut stream = client.subscribe(req).await?.into_inner();
        let mut lagged = None;
        while let Some(resp) = stream.message().await? {
            match resp.item {
                Some(pb::subscribe_response::Item::Event(e)) => {
                    last = Some(e.cursor.clone());
                    if on_event(&e).is_break() {
                        return Ok(last);
                    }
                }
                Some(pb::subscribe_response::Item::Lagged(l)) => {
                    tracing::warn!(resume_after = l.resume_after_cursor, dropped = l.dropped, "fell behind; resuming");
                    lagged = Some(l.resume_after_cursor);
                }
                None => {}
            }
        }
        match lagged {
            Some(cursor) => from = Some(From::AfterCursor(cursor)),
            None => return Ok(last),
        }
    }
}
