//! The manager role: options + the process's store → [`ManagerRole`], mounted by the
//! `nightshift-manager` binary and by `nightshift dev` alike.
use std::sync::Arc;

use nightshift_events_client::EventPublisher;
use nightshift_rpc::{AuthConfigError, Authenticator, BadEndpoint, GrpcServer, Guard, Role};
use nightshift_store::Store;

use crate::{
    AUTH_SERVICE_NAME, AuthApi, GrpcScheduleObserver, ManagerConfig, ManagerService, SERVICE_NAME, ScheduleObserver,
    StoreKeys,
};

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
    /// The `[auth]` section cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] AuthConfigError),
    /// A `[governance.NAMESPACE]` or `[prices]` section does not validate.
    #[error("{0}")]
    Governance(String),
}

/// The built manager role.
pub struct ManagerRole {
    service: ManagerService,
    auth: AuthApi,
    guard: Guard,
}

impl ManagerRole {
    /// Builds the role: the service on `deps.store`, notifying the scheduler, publishing manual
    /// triggers to the queue and lifecycle events to the event service, as `config` says.
    pub async fn build(config: ManagerConfig, deps: ManagerDeps) -> Result<Self, ManagerBuildError> {
        let keys: Arc<dyn Authenticator> = Arc::new(StoreKeys(deps.store.clone()));
        let guard = config.server.guard(Some(keys.clone()))?;
        let verifier = match &guard {
            Guard::Required(verifier) => verifier.clone(),
            Guard::Open => keys,
        };
        let auth = AuthApi::new(deps.store.clone(), verifier);
        let client = config.server.client()?;
        let mut service = ManagerService::new(deps.store, config.default_lease_ttl)
            .with_client(client.clone())
            .with_worker_policy(config.worker_allow.clone())
            .with_governance(crate::approvals::namespace_policies(&config.governance)?)
            .with_prices(crate::costs::checked(&config.prices)?)
            .with_budgets(crate::costs::namespace_budgets(&config.budgets)?);
        let observer = match deps.observer {
            Some(observer) => Some(observer),
            None if !config.scheduler_endpoint.is_empty() => {
                Some(Arc::new(GrpcScheduleObserver::new(&config.scheduler_endpoint, &client)?)
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
        if let Some(publisher) = EventPublisher::for_role("manager", &config.events_endpoint, &client)? {
            service = service.with_events(publisher);
        }
        Ok(Self { service, auth, guard })
    }

    /// Publishes every audited call of the process (its mutating calls) as an `AUDIT` event,
    /// when the manager publishes events.
    pub fn audit_sink(&self) -> Option<nightshift_rpc::AuditSink> {
        let events = self.service.events()?.clone();
        Some(std::sync::Arc::new(move |r: nightshift_rpc::AuditRecord| {
            events
                .event(nightshift_core::EventType::Audit)
                .data(serde_json::json!({
                    "principal": r.principal,
                    "role": r.role,
                    "namespaces": r.namespaces,
                    "method": r.method,
                    "code": format!("{:?}", r.code),
                }))
                .emit();
        }))
    }

    /// How the process's server admits calls: keys verified against this manager's store (after
    /// the static keys of `[auth]`), or no authentication when `auth.mode = "off"`.
    pub fn guard(&self) -> Guard {
        self.guard.clone()
    }

    /// Vouches for memory access against this manager's store (a memory service in the same
    /// process uses it instead of a round trip).
    pub fn memory_authority(&self) -> Arc<dyn nightshift_rpc::MemoryAuthority> {
        Arc::new(self.auth.clone())
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
        server.routes().add_service(self.auth.clone().into_server());
        server.serving(AUTH_SERVICE_NAME);
    }
}
