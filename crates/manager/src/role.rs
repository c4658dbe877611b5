//! The manager role: options + the process's store → [`ManagerRole`], mounted by the
//! `nightshift-manager` binary and by `nightshift dev` alike.
use std::sync::Arc;

use nightshift_events_client::EventPublisher;
use nightshift_rpc::{BadEndpoint, GrpcServer, Role};
use nightshift_store::Store;

use crate::{GrpcScheduleObserver, ManagerConfig, ManagerService, SERVICE_NAME, ScheduleObserver};

/// What the manager role uses but does not own: the process opens (and closes) the store, since
/// other roles of the process may share it.
pub struct ManagerDeps {
    /// The agent and run store.
    pub store: Store,
    /// Who hears of schedule changes; `None` = the scheduler at `scheduler_endpoint` (if set).
    pub observer: Option<Arc<dyn ScheduleObserver>>,
}

/// Why the manager role could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ManagerBuildError {
    /// An endpoint is not a valid URI.
    #[error(transparent)]
    Endpoint(#[from] BadEndpoint),
    /// The queue could not be opened.
    #[error("queue: {0}")]
    Queue(#[from] nightshift_queue::QueueError),
}

/// The built manager role.
pub struct ManagerRole {
    service: ManagerService,
}

impl ManagerRole {
    /// Builds the role: the service on `deps.store`, notifying the scheduler, publishing manual
    /// triggers to the queue and lifecycle events to the event service, as `config` says.
    pub async fn build(config: ManagerConfig, deps: ManagerDeps) -> Result<Self, ManagerBuildError> {
        let mut service = ManagerService::new(deps.store, config.default_lease_ttl);
        let observer = match deps.observer {
            Some(observer) => Some(observer),
            None if !config.scheduler_endpoint.is_empty() => {
                Some(Arc::new(GrpcScheduleObserver::new(&config.scheduler_endpoint, &config.server.client())?)
                    as Arc<dyn ScheduleObserver>)
            }
            None => None,
        };
        if let Some(observer) = observer {
            service = service.with_observer(observer);
        }
        if !config.queue.url.is_empty() {
            service = service.with_queue(config.queue.connect().await?);
        }
        if let Some(publisher) = EventPublisher::for_role("manager", &config.events_endpoint, &config.server.client())?
        {
            service = service.with_events(publisher);
        }
        Ok(Self { service })
    }
}

#[async_trait::async_trait]
impl Role for ManagerRole {
    fn name(&self) -> &'static str {
        "manager"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.routes().add_service(self.service.clone().into_server());
        server.serving(SERVICE_NAME);
    }
}
