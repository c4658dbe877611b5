//! The services the console calls, each call carrying the signed-in user's credential (so that
//! the services, not the console, decide what the user may see and do).
use nightshift_proto::v1 as pb;
use nightshift_rpc::{CallChannel, ClientOptions};
use pb::auth_service_client::AuthServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::manager_service_client::ManagerServiceClient;
use pb::memory_service_client::MemoryServiceClient;
use pb::scheduler_service_client::SchedulerServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

use crate::config::ConsoleConfig;
use crate::error::ConsoleError;
use crate::session::Session;

/// Channels to the manager and the event service (lazily connected, shared by every session).
#[derive(Clone)]
pub(crate) struct Backends {
    client: ClientOptions,
    manager: Channel,
    events: Channel,
    scheduler: Channel,
    memory: Channel,
    /// Each configured worker: its endpoint as configured, and a channel to it.
    workers: Vec<(String, Channel)>,
}

impl Backends {
    pub fn new(cfg: &ConsoleConfig) -> Result<Self, ConsoleError> {
        // The console's own key (`auth.api_key_file`) is never sent: each call carries its user's.
        let client = ClientOptions { tls: cfg.server.tls.clone(), api_key: String::new() };
        let channel = |field, uri: &str| -> Result<Channel, ConsoleError> {
            Ok(client.endpoint(field, uri)?.timeout(cfg.call_timeout).connect_lazy())
        };
        let workers = cfg
            .worker_endpoints
            .iter()
            .map(|uri| Ok((uri.clone(), channel("worker_endpoints", uri)?)))
            .collect::<Result<_, ConsoleError>>()?;
        Ok(Self {
            manager: channel("manager_endpoint", &cfg.manager_endpoint)?,
            events: channel("events_endpoint", &cfg.events_endpoint)?,
            scheduler: channel("scheduler_endpoint", &cfg.scheduler_endpoint)?,
            memory: channel("memory_endpoint", &cfg.memory_endpoint)?,
            workers,
            client,
        })
    }

    fn wrap(&self, channel: &Channel, credential: Option<&str>) -> CallChannel {
        let options = ClientOptions { api_key: credential.unwrap_or_default().to_owned(), ..self.client.clone() };
        options.wrap(channel.clone())
    }

    /// The manager, as the session's user.
    pub fn manager(&self, s: &Session) -> ManagerServiceClient<CallChannel> {
        ManagerServiceClient::new(self.wrap(&self.manager, s.credential.as_deref()))
    }

    /// The event service, as the session's user. Subscriptions are long: no call timeout
    /// applies to the stream itself, only to connecting.
    pub fn events(&self, s: &Session) -> EventServiceClient<CallChannel> {
        EventServiceClient::new(self.wrap(&self.events, s.credential.as_deref()))
    }

    /// The scheduler, as the session's user.
    pub fn scheduler(&self, s: &Session) -> SchedulerServiceClient<CallChannel> {
        SchedulerServiceClient::new(self.wrap(&self.scheduler, s.credential.as_deref()))
    }

    /// The memory service, as the session's user.
    pub fn memory(&self, s: &Session) -> MemoryServiceClient<CallChannel> {
        MemoryServiceClient::new(self.wrap(&self.memory, s.credential.as_deref()))
    }

    /// Each configured worker (its endpoint and a client), as the session's user.
    pub fn workers(&self, s: &Session) -> Vec<(String, WorkerServiceClient<CallChannel>)> {
        self.workers
            .iter()
            .map(|(uri, ch)| (uri.clone(), WorkerServiceClient::new(self.wrap(ch, s.credential.as_deref()))))
            .collect()
    }

    /// The manager's auth service with `credential` (signing in).
    pub fn auth(&self, credential: Option<&str>) -> AuthServiceClient<CallChannel> {
        AuthServiceClient::new(self.wrap(&self.manager, credential))
    }
}
