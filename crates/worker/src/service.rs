//! `nightshift.v1.WorkerService`: status, drain and cancel of one worker.
use std::sync::atomic::Ordering;
use std::time::Duration;

use nightshift_core::{pb, time};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::Worker;

/// The gRPC face of a [`Worker`].
#[derive(Clone)]
pub struct WorkerApi {
    worker: Worker,
    /// The local tools this worker offers, built once: the configuration does not change while
    /// the process runs, and building `http_get` loads the TLS roots.
    tools: std::sync::Arc<Vec<pb::LoadedTool>>,
}

impl WorkerApi {
    /// Wraps `worker`.
    pub fn new(worker: Worker) -> Self {
        // MCP tools belong to the runs that start them; they are not listed here.
        let tools = nightshift_tools::local::offered(worker.tools_config())
            .into_iter()
            .map(|d| pb::LoadedTool {
                name: d.name,
                source: "local".into(),
                description: d.description,
                input_schema: d.input_schema.to_string(),
            })
            .collect();
        Self { worker, tools: std::sync::Arc::new(tools) }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::worker_service_server::WorkerServiceServer<Self> {
        // Its requests name a run: nothing larger has a reason to arrive.
        pb::worker_service_server::WorkerServiceServer::new(self).max_decoding_message_size(64 << 10)
    }
}

/// The stream WatchRunDeltas answers with.
pub type DeltaStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LlmDelta, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    type WatchRunDeltasStream = DeltaStream;

    async fn watch_run_deltas(
        &self,
        req: Request<pb::WatchRunDeltasRequest>,
    ) -> Result<Response<Self::WatchRunDeltasStream>, Status> {
        let run_id = req.into_inner().run_id;
        let rx = (self.worker.active().get(&run_id).map(|r| r.deltas.subscribe()))
            .ok_or_else(|| Status::not_found(format!("run {run_id} is not executing on this worker")))?;
        // Ends when the attempt does (its sender is dropped). A listener too slow for the
        // buffer skips what it missed: the checkpointed step carries the whole text anyway.
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|d| d.ok()).map(Ok::<_, Status>);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_worker_status(
        &self,
        _req: Request<pb::GetWorkerStatusRequest>,
    ) -> Result<Response<pb::GetWorkerStatusResponse>, Status> {
        let w = &self.worker;
        let active_runs = w
            .active()
            .iter()
            .map(|(id, r)| pb::ActiveRun {
                run_id: id.clone(),
                agent_id: r.agent_id.clone(),
                agent_name: r.agent_name.clone(),
                attempt: r.attempt,
                step: r.step.load(Ordering::Relaxed),
                started_at: Some(time::to_pb(r.started_at)),
            })
            .collect();
        let tools = self.tools.as_ref().clone();
        Ok(Response::new(pb::GetWorkerStatusResponse {
            worker_id: w.id().to_owned(),
            capacity: w.capacity(),
            active_runs,
            tools,
            draining: w.inner.draining.load(Ordering::SeqCst),
            runs_completed: w.inner.completed.load(Ordering::Relaxed),
            started_at: Some(time::to_pb(w.inner.started_at)),
        }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let grace = match req.get_ref().grace_seconds {
            0 => Duration::from_secs(30),
            n if n <= 3600 => Duration::from_secs(u64::from(n)),
            n => return Err(Status::invalid_argument(format!("grace_seconds: must be at most 3600 (got {n})"))),
        };
        Ok(Response::new(pb::DrainResponse { in_flight: self.worker.drain(grace) }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::WorkerCancelRunRequest>,
    ) -> Result<Response<pb::WorkerCancelRunResponse>, Status> {
        if req.get_ref().run_id.is_empty() {
            return Err(Status::invalid_argument("run_id: is required"));
        }
        Ok(Response::new(pb::WorkerCancelRunResponse { found: self.worker.cancel(&req.get_ref().run_id) }))
    }
}
