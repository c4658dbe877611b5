//! The scheduler role: options + the process's store and clock → [`SchedulerRole`], mounted by
//! the `nightshift-scheduler` binary and by `nightshift dev` alike.
use std::sync::Arc;

use nightshift_core::Clock;
use nightshift_events_client::EventPublisher;
use nightshift_rpc::{BadEndpoint, CancellationToken, GrpcServer, Role, RoleError};
use nightshift_store::Store;

use crate::{SERVICE_NAME, Scheduler, SchedulerApi, SchedulerConfig};

/// What the scheduler role uses but does not own.
pub struct SchedulerDeps {
    /// The agent and run store (opened and closed by the process; other roles may share it).
    pub store: Store,
    /// The time source (`SystemClock` outside tests).
    pub clock: Arc<dyn Clock>,
}

/// Why the scheduler role could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerBuildError {
    /// `events_endpoint` is not a valid URI.
    #[error(transparent)]
    Endpoint(#[from] BadEndpoint),
    /// The queue could not be opened.
    #[error("queue: {0}")]
    Queue(#[from] nightshift_queue::QueueError),
    /// The `[auth]` section cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] nightshift_rpc::AuthConfigError),
}

/// The built scheduler role: one replica.
pub struct SchedulerRole {
    scheduler: Scheduler,
}

impl SchedulerRole {
    /// Builds a replica on `deps.store`, publishing runs to the configured queue and
    /// `SCHEDULE_*` events to the event service when `events_endpoint` is set.
    pub async fn build(config: SchedulerConfig, deps: SchedulerDeps) -> Result<Self, SchedulerBuildError> {
        let queue = config.queue.connect().await?;
        let events = EventPublisher::for_role("scheduler", &config.events_endpoint, &config.server.client()?)?;
        let mut scheduler = Scheduler::new(deps.store, queue, deps.clock, config);
        if let Some(events) = events {
            scheduler = scheduler.with_events(events);
        }
        Ok(Self { scheduler })
    }

    /// The replica's handle: a manager in the same process tells it of changes directly.
    pub fn scheduler(&self) -> Scheduler {
        self.scheduler.clone()
    }
}

#[async_trait::async_trait]
impl Role for SchedulerRole {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.routes().add_service(SchedulerApi::new(self.scheduler.clone()).into_server());
        server.serving(SERVICE_NAME);
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            shutdown.cancelled().await;
            let _ = stop_tx.send(true);
        };
        // On a clean stop the replica hands its prepared ticks and shards back before returning.
        tokio::join!(self.scheduler.run(stop_rx), stop);
        Ok(())
    }
}
