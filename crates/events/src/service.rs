//! `nightshift.v1.EventService` over any [`EventLog`].
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use nightshift_core::{Clock, SystemClock, ValidationError, pb};
use nightshift_events_client::{EventFilter, cursor_from_page_token, page_token_after};
use tonic::{Request, Response, Status, Streaming};

use crate::log::{EventLog, ReadQuery, StartAt, SubscriptionItem};
use crate::validate::{check_event, filter_from_pb};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Events appended per call while a PublishStream is read, so that a long stream is neither
/// buffered whole nor written one event at a time.
const STREAM_BATCH: usize = 256;

/// The event service. Cheap to clone (clones share the log and the shutdown switch).
#[derive(Clone)]
pub struct EventService {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    /// Set by [`EventService::close_streams`]: Subscribe streams never end on their own, so a
    /// graceful shutdown has to end them.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for EventService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventService").field("backend", &self.log.backend()).finish_non_exhaustive()
    }
}

impl EventService {
    /// A service publishing to and reading from `log`.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log, clock: Arc::new(SystemClock), closing: Arc::new(tokio::sync::watch::Sender::new(false)) }
    }

    /// Ends every open Subscribe stream with UNAVAILABLE (clients resume after their last
    /// cursor elsewhere) and refuses new ones. Call it when shutdown begins, before the server
    /// waits for in-flight calls, which would otherwise wait forever for the streams:
    /// `server.serve(listener, async move { shutdown_signal().await; service.close_streams() })`.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Uses `clock` for the time of events published without one.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> pb::event_service_server::EventServiceServer<Self> {
        // One event is at most 256 KiB of data plus its envelope.
        pb::event_service_server::EventServiceServer::new(self).max_decoding_message_size(1 << 20)
    }

    /// Validates an event to publish and fills in what the server assigns: an id (UUID v7) if
    /// empty and the time if unset. A cursor sent by the client is ignored (the log assigns it).
    fn prepare(&self, field: &str, mut ev: pb::Event) -> Result<pb::Event, Status> {
        check_event(field, &ev).map_err(invalid)?;
        if ev.id.is_empty() {
            ev.id = uuid::Uuid::now_v7().to_string();
        }
        if ev.time.is_none() {
            ev.time = Some(nightshift_core::time::to_pb(self.clock.now()));
        }
        ev.cursor.clear();
        Ok(ev)
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the event service is shutting down; subscribe again after your last cursor")
}

fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn timestamp(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
    ts.map(|t| {
        nightshift_core::time::from_pb(t)
            .ok_or_else(|| Status::invalid_argument(format!("{field}: is not a valid timestamp")))
    })
    .transpose()
}

/// The server-streaming response of Subscribe.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventService {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let ev = request.into_inner().event.ok_or_else(|| Status::invalid_argument("event: is required"))?;
        let ev = self.prepare("event", ev)?;
        let appended = self.log.append(ev).await.map_err(|e| e.into_status("event"))?;
        Ok(Response::new(pb::PublishResponse { cursor: appended.cursor }))
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let mut incoming = request.into_inner();
        let mut batch = Vec::with_capacity(STREAM_BATCH);
        let mut published = 0u64;
        let mut last_cursor = String::new();
        let mut index = 0usize;
        loop {
            let next = incoming.message().await?;
            if let Some(req) = &next {
                let field = format!("events[{index}]");
                index += 1;
                let ev =
                    req.event.clone().ok_or_else(|| Status::invalid_argument(format!("{field}.event: is required")))?;
                batch.push(self.prepare(&field, ev)?);
            }
            if batch.len() >= STREAM_BATCH || (next.is_none() && !batch.is_empty()) {
                let appended =
                    self.log.append_batch(std::mem::take(&mut batch)).await.map_err(|e| e.into_status("events"))?;
                published += appended.len() as u64;
                if let Some(a) = appended.last() {
                    last_cursor.clone_from(&a.cursor);
                }
            }
            if next.is_none() {
                break;
            }
        }
        Ok(Response::new(pb::PublishBatchResponse { published, last_cursor }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        use pb::subscribe_request::From;
        let scope = nightshift_rpc::caller_namespaces(&request);
        let req = request.into_inner();
        let filter = confine(&scope, filter_from_pb("filter", req.filter.as_ref()).map_err(invalid)?)?;
        let start = match req.from {
            None | Some(From::FromBeginning(false)) => StartAt::Now,
            Some(From::FromBeginning(true)) => StartAt::Beginning,
            Some(From::AfterCursor(c)) if c.is_empty() => {
                return Err(Status::invalid_argument("after_cursor: must not be empty"));
            }
            Some(From::AfterCursor(c)) => StartAt::After(c),
            Some(From::Since(t)) => StartAt::Since(timestamp("since", Some(&t))?.unwrap_or_default()),
        };
        let field = match &start {
            StartAt::After(_) => "after_cursor",
            StartAt::Since(_) => "since",
            _ => "from",
        };
        if *self.closing.borrow() {
            return Err(shutting_down());
        }
        let sub = self.log.subscribe(start, filter).await.map_err(|e| e.into_status(field))?;
        let items = sub.map(|item| {
            use pb::subscribe_response::Item;
            match item {
                Ok(SubscriptionItem::Event(e)) => Ok(pb::SubscribeResponse { item: Some(Item::Event(e)) }),
                Ok(SubscriptionItem::Lagged { resume_after_cursor, dropped }) => {
                    tracing::info!(resume_after_cursor, dropped, "subscriber lagged; ending its stream");
                    Ok(pb::SubscribeResponse { item: Some(Item::Lagged(pb::Lagged { resume_after_cursor, dropped })) })
                }
                Err(e) => Err(e.into_status("after_cursor")),
            }
        });
        let closing = self.closing.subscribe();
        let stream = futures::stream::unfold((Box::pin(items), Some(closing)), |(mut items, closing)| async move {
            let mut closing = closing?;
            let closed = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => None,
                item = items.next() => Some(item),
            };
            match closed {
                None => Some((Err(shutting_down()), (items, None))),
                Some(item) => item.map(|i| (i, (items, Some(closing)))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let scope = nightshift_rpc::caller_namespaces(&request);
        let req = request.into_inner();
        let filter = confine(&scope, filter_from_pb("filter", req.filter.as_ref()).map_err(invalid)?)?;
        let limit = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!("page_size: must be at most {MAX_PAGE} (got {n})")));
            }
            n => n,
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            let c = cursor_from_page_token(&req.page_token)
                .ok_or_else(|| Status::invalid_argument("page_token: is not a token returned by ListEvents"))?;
            Some(c.to_owned())
        };
        let since = timestamp("since", req.since.as_ref())?;
        let until = timestamp("until", req.until.as_ref())?;
        if let (Some(s), Some(u)) = (since, until)
            && u <= s
        {
            return Err(Status::invalid_argument("until: must be after since"));
        }
        let query = ReadQuery { after, since, until, filter, limit: limit as usize };
        let page = self.log.read(&query).await.map_err(|e| e.into_status("page_token"))?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.events,
            next_page_token: page.next_after.map(|c| page_token_after(&c)).unwrap_or_default(),
        }))
    }
}

/// `filter` cut down to the caller's namespaces: a caller that holds only some sees only events
/// of agents in them (and none about no agent).
fn confine(scope: &nightshift_core::Namespaces, mut filter: EventFilter) -> Result<EventFilter, Status> {
    use nightshift_core::namespace::Visible;
    let requested: Vec<_> =
        filter.namespaces.iter().map(|n| nightshift_core::Namespace::from_stored(n.as_str())).collect();
    if let Visible::Only(list) = nightshift_rpc::visible_namespaces(scope, &requested)? {
        filter.namespaces = list.iter().map(|n| n.to_string()).collect();
    }
    Ok(filter)
}
