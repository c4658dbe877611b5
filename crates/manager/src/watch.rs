//! WatchRun: a run's steps as they are checkpointed and its state changes, as a stream that a
//! client can resume after any item with no gap and no repeat.
//!
//! The stream reads the store (steps are durable and ordered by seq, so the cursor is the next
//! seq plus the run state last sent). It reads again when this manager records a change of the
//! run (checkpoint, start, end, park, cancel: [`Watchers::changed`]) and at least every
//! [`POLL`] (every [`WAITING_POLL`] while the run waits), which covers changes recorded by
//! another manager replica. A run nobody watches pays
//! one atomic load per change.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nightshift_core::{RunId, RunStatus, pb};
use nightshift_store::status_from_store;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::convert;
use crate::service::ManagerService;

/// The longest a watcher of a running run waits before reading the store again...
const POLL: Duration = Duration::from_millis(500);
/// ...and of a run that waits (queued, for a person, for its budget), which can take days.
const WAITING_POLL: Duration = Duration::from_secs(5);
/// Streams one manager serves at once.
const MAX_WATCHERS: usize = 10_000;

/// The stream WatchRun answers with.
pub type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchRunResponse, Status>> + Send>>;

/// The runs being watched on this manager, each with a change counter its watchers wait on.
#[derive(Default)]
pub(crate) struct Watchers {
    count: AtomicUsize,
    runs: Mutex<HashMap<RunId, watch::Sender<u64>>>,
}

impl Watchers {
    /// Wakes the watchers of `run`, if any.
    pub(crate) fn changed(&self, run: &RunId) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(tx) = self.runs.lock().unwrap_or_else(PoisonError::into_inner).get(run) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn subscribe(self: &Arc<Self>, run: &RunId) -> Result<Watching, Status> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= MAX_WATCHERS {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!("this manager serves {MAX_WATCHERS} watchers at most")));
        }
        let rx = self.runs.lock().unwrap_or_else(PoisonError::into_inner).entry(run.clone()).or_default().subscribe();
        Ok(Watching { watchers: self.clone(), run: run.clone(), rx })
    }
}

/// One watcher's subscription; dropping it forgets the run once nobody else watches it.
struct Watching {
    watchers: Arc<Watchers>,
    run: RunId,
    rx: watch::Receiver<u64>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watchers.count.fetch_sub(1, Ordering::Relaxed);
        let mut runs = self.watchers.runs.lock().unwrap_or_else(PoisonError::into_inner);
        // This receiver still counts: the last watcher sees one.
        if runs.get(&self.run).is_some_and(|tx| tx.receiver_count() <= 1) {
            runs.remove(&self.run);
        }
    }
}

/// Where a watcher is: the next step to send, and the run state it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Cursor {
    next_seq: u32,
    seen: Option<(u32, RunStatus)>,
}

impl Cursor {
    fn parse(text: &str) -> Result<Self, Status> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let bad = || Status::invalid_argument(format!("cursor: '{text}' is not a cursor WatchRun returned"));
        let mut parts = text.split(':');
        let next_seq = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let seen = match (parts.next(), parts.next(), parts.next()) {
            (Some(""), None, None) => None,
            (Some(attempt), Some(status), None) => {
                Some((attempt.parse().map_err(|_| bad())?, status.parse::<RunStatus>().map_err(|_| bad())?))
            }
            _ => return Err(bad()),
        };
        Ok(Self { next_seq, seen })
    }

    fn text(&self) -> String {
        match self.seen {
            Some((attempt, status)) => format!("{}:{attempt}:{}", self.next_seq, status.as_str()),
            None => format!("{}:", self.next_seq),
        }
    }
}

/// The LLM text of one attempt, relayed from the worker executing it (WatchRunDeltas) into a
/// watcher's stream; stopped when dropped.
struct Relay(tokio::task::JoinHandle<()>);

impl Relay {
    fn start(
        client: &nightshift_rpc::ClientOptions,
        endpoint: &str,
        run: &RunId,
        tx: mpsc::Sender<Result<pb::WatchRunResponse, Status>>,
    ) -> Self {
        let (client, endpoint, run_id) = (client.clone(), endpoint.to_owned(), run.to_string());
        Self(tokio::spawn(async move {
            let stream = async {
                let channel = client.endpoint("worker_endpoint", &endpoint).map_err(|e| e.to_string())?;
                let channel = channel.connect().await.map_err(|e| e.to_string())?;
                let mut worker = pb::worker_service_client::WorkerServiceClient::new(client.wrap(channel));
                let req = pb::WatchRunDeltasRequest { run_id: run_id.clone() };
                worker.watch_run_deltas(req).await.map(|r| r.into_inner()).map_err(|s| s.message().to_owned())
            };
            let mut stream = match stream.await {
                Ok(s) => s,
                // The steps still come from the store: only the live text is missing.
                Err(e) => {
                    return tracing::debug!(run = %run_id, %endpoint, error = %e, "no live LLM text from the worker");
                }
            };
            while let Ok(Some(delta)) = stream.message().await {
                let item = pb::watch_run_response::Item::Delta(delta);
                if tx.send(Ok(pb::WatchRunResponse { cursor: String::new(), item: Some(item) })).await.is_err() {
                    return;
                }
            }
        }))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ManagerService {
    /// WatchRun.
    pub(crate) async fn watch(
        &self,
        scope: &nightshift_core::Namespaces,
        req: pb::WatchRunRequest,
    ) -> Result<WatchStream, Status> {
        let id = RunId::parse("run_id", &req.run_id).map_err(crate::error::invalid)?;
        let mut cursor = Cursor::parse(&req.cursor)?;
        self.visible_run(scope, &id).await?;
        let mut watching = self.watchers().subscribe(&id)?;
        let store = self.store().clone();
        let client = self.client().clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // The attempt whose LLM text is being relayed from its worker.
            let mut relay: Option<(u32, Relay)> = None;
            loop {
                // The run first, then its steps: a run read as ended had all its steps written
                // (FinishRun records its steps before the end), so none is missed.
                let run = match store.get_run(&id).await {
                    Ok(Some(run)) => run,
                    Ok(None) => {
                        let _ = tx.send(Err(Status::not_found(format!("run {id} was deleted")))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status_from_store(e))).await;
                        return;
                    }
                };
                let steps = match store.run_steps_from(&id, cursor.next_seq).await {
                    Ok(steps) => steps,
                    Err(e) => {
                        let _ = tx.send(Err(status_from_store(e))).await;
                        return;
                    }
                };
                for step in &steps {
                    cursor.next_seq = step.seq + 1;
                    let item = pb::watch_run_response::Item::Step(convert::step(step));
                    if tx.send(Ok(pb::WatchRunResponse { cursor: cursor.text(), item: Some(item) })).await.is_err() {
                        return;
                    }
                }
                if run.status == RunStatus::Running
                    && relay.as_ref().is_none_or(|(attempt, _)| *attempt != run.attempt)
                    && let Some(endpoint) = &run.worker_endpoint
                {
                    relay = Some((run.attempt, Relay::start(&client, endpoint, &id, tx.clone())));
                }
                let state = (run.attempt, run.status);
                if cursor.seen != Some(state) {
                    cursor.seen = Some(state);
                    let item = pb::watch_run_response::Item::Run(convert::run(&run));
                    if tx.send(Ok(pb::WatchRunResponse { cursor: cursor.text(), item: Some(item) })).await.is_err() {
                        return;
                    }
                }
                if run.status.is_terminal() {
                    return;
                }
                tokio::select! {
                    r = watching.rx.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(if run.status == RunStatus::Running { POLL } else { WAITING_POLL }) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        for c in [Cursor::default(), Cursor { next_seq: 7, seen: Some((2, RunStatus::AwaitingApproval)) }] {
            assert_eq!(Cursor::parse(&c.text()).unwrap(), c);
        }
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        for junk in ["x", "1", "1:2", "1:2:nope", "1:a:running", "1:2:running:3"] {
            assert_eq!(Cursor::parse(junk).unwrap_err().code(), tonic::Code::InvalidArgument, "{junk}");
        }
    }

    #[test]
    fn a_change_wakes_the_watchers_of_that_run_and_the_last_one_out_cleans_up() {
        let w = Arc::new(Watchers::default());
        let (a, b) = (RunId::generate(), RunId::generate());
        let mut one = w.subscribe(&a).unwrap();
        let two = w.subscribe(&a).unwrap();
        w.changed(&b);
        assert!(!one.rx.has_changed().unwrap());
        w.changed(&a);
        assert!(one.rx.has_changed().unwrap() && two.rx.has_changed().unwrap());
        one.rx.mark_unchanged();
        drop(two);
        assert_eq!(w.runs.lock().unwrap().len(), 1);
        drop(one);
        assert!(w.runs.lock().unwrap().is_empty());
        assert_eq!(w.count.load(Ordering::Relaxed), 0);
    }
}
