//! The worker role: options → [`WorkerRole`], mounted by the `nightshift-worker` binary and by
//! `nightshift dev` alike. A worker owns nothing shared: it reaches the manager, the memory and
//! the event service by their endpoints, and the queue by its URL.
use std::time::Duration;

use nightshift_events_client::EventPublisher;
use nightshift_rpc::{BadEndpoint, CancellationToken, GrpcServer, Role, RoleError};

use crate::{EventFn, SERVICE_NAME, Worker, WorkerApi, WorkerConfig, publisher_fn};

/// How long one call to the manager or the memory service may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker may be given instead of building it from its options.
#[derive(Default)]
pub struct WorkerDeps {
    /// Where the run lifecycle events go; `None` = the event service at `events_endpoint` (if
    /// set). Harnesses that observe runs in-process (benchmarks, tests) pass their own.
    pub events: Option<EventFn>,
}

/// Why the worker role could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkerBuildError {
    /// An endpoint is not a valid URI.
    #[error(transparent)]
    Endpoint(#[from] BadEndpoint),
    /// The queue could not be opened.
    #[error("queue: {0}")]
    Queue(#[from] nightshift_queue::QueueError),
    /// The `[auth]` section cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] nightshift_rpc::AuthConfigError),
    /// The `[embedded]` section is invalid.
    #[error("{0}")]
    Embedded(#[from] nightshift_llm::LlmError),
}

/// The built worker role.
pub struct WorkerRole {
    worker: Worker,
}

impl WorkerRole {
    /// Builds a worker on the configured queue, starting runs at `manager_endpoint`, with memory
    /// (`memory_endpoint`) and events (`events_endpoint`) when those are set.
    pub async fn build(config: WorkerConfig, deps: WorkerDeps) -> Result<Self, WorkerBuildError> {
        nightshift_llm::embedded::configure(config.embedded)?;
        let queue = config.queue.connect().await?;
        let client = config.server.client()?;
        let manager = client.channel("manager_endpoint", &config.manager_endpoint, RPC_TIMEOUT)?;
        let events = match deps.events {
            Some(events) => Some(events),
            None => EventPublisher::for_role("worker", &config.events_endpoint, &client)?.map(publisher_fn),
        };
        let memory = match config.memory_endpoint.as_str() {
            "" => None,
            endpoint => Some(client.channel("memory_endpoint", endpoint, RPC_TIMEOUT)?),
        };
        let mut worker = Worker::new(config, manager, queue, events);
        if let Some(memory) = memory {
            worker = worker.with_memory(memory);
        }
        Ok(Self { worker })
    }

    /// The worker's handle (status, drain).
    pub fn worker(&self) -> Worker {
        self.worker.clone()
    }
}

#[async_trait::async_trait]
impl Role for WorkerRole {
    fn name(&self) -> &'static str {
        "worker"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.routes().add_service(WorkerApi::new(self.worker.clone()).into_server());
        server.serving(SERVICE_NAME);
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        // On shutdown the worker drains: in-flight runs finish or are handed back.
        self.worker.run(async move { shutdown.cancelled().await }).await;
        Ok(())
    }
}
