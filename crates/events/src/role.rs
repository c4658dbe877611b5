//! The event service role: options → [`EventsRole`], mounted by the `nightshift-events` binary
//! and by `nightshift dev` alike.
use nightshift_rpc::{CancellationToken, GrpcServer, Role, RoleError};

use crate::{EventLogError, EventService, EventsConfig, SERVICE_NAME};

/// The built event service role, on the log its options name.
pub struct EventsRole {
    service: EventService,
}

impl EventsRole {
    /// Opens the event log at `backend_url` with the configured retention and dedup window.
    pub async fn build(config: EventsConfig) -> Result<Self, EventLogError> {
        let log = crate::connect(&config.backend_url, config.log_options()).await?;
        tracing::info!(backend = log.backend(), prefix = config.prefix, "event log open");
        Ok(Self { service: EventService::new(log) })
    }
}

#[async_trait::async_trait]
impl Role for EventsRole {
    fn name(&self) -> &'static str {
        "events"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.routes().add_service(self.service.clone().into_server());
        server.serving(SERVICE_NAME);
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        shutdown.cancelled().await;
        // Subscribe streams never finish by themselves; end them so the server's drain completes.
        self.service.close_streams();
        Ok(())
    }
}
