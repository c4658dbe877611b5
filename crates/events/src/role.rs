//! The event service role: options → [`EventsRole`], mounted by the `nightshift-events` binary
//! and by `nightshift dev` alike. Besides the service it runs the consumers its options
//! configure (`[alerts]`, `[sink]`) on its own log (see `consumer.rs` for why in-process).
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::SystemClock;
use nightshift_events_client::EventFilter;
use nightshift_rpc::{CancellationToken, GrpcServer, Role, RoleError};

use crate::alert::{AlertConsumer, AlertDelivery, AlertError, alert_filter};
use crate::config::ConfigError;
use crate::consumer::Follower;
use crate::log::StartAt;
use crate::sink::{JsonLinesSink, SinkError};
use crate::{EventLogError, EventService, EventsConfig, SERVICE_NAME};

/// How long the events stored until shutdown may still be read and their alerts delivered once
/// shutdown begins.
const ALERT_DRAIN: Duration = Duration::from_secs(10);

/// Why the events role could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EventsBuildError {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The event log could not be opened.
    #[error(transparent)]
    Log(#[from] EventLogError),
    /// The alert webhook client could not be built.
    #[error(transparent)]
    Alerts(#[from] AlertError),
    /// The sink file could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// The built event service role, on the log its options name, with its consumers.
pub struct EventsRole {
    service: EventService,
    alerts: Option<(Follower, AlertConsumer, AlertDelivery)>,
    sink: Option<(Follower, JsonLinesSink)>,
}

impl EventsRole {
    /// Opens the event log at `backend_url` with the configured retention and dedup window,
    /// and the configured consumers. The consumers subscribe here, so they see every event
    /// appended once this returns.
    pub async fn build(config: EventsConfig) -> Result<Self, EventsBuildError> {
        config.validate()?;
        let log = crate::connect(&config.backend_url, config.log_options()).await?;
        tracing::info!(backend = log.backend(), prefix = config.prefix, "event log open");
        let alerts = match &config.alerts {
            None => None,
            Some(a) => {
                let (consumer, delivery) = AlertConsumer::new(a.clone(), Arc::new(SystemClock))?;
                // Alerts are about what happens from now on: with a durable log, replaying
                // history after a restart would repeat alerts already sent.
                let follower = Follower::open(log.clone(), alert_filter(), StartAt::Now, "alerts").await?;
                tracing::info!(
                    on_task_error = a.on_task_error,
                    consecutive_failures = a.consecutive_failures,
                    on_approval_requested = a.on_approval_requested,
                    "alert webhook on"
                );
                Some((follower, consumer, delivery))
            }
        };
        let sink = match &config.sink {
            None => None,
            Some(s) => {
                let (sink, saved) = JsonLinesSink::open(s, log.is_durable()).await?;
                // After the saved cursor; without one from now (the memory log is empty at
                // start-up anyway).
                let start = saved.map_or(StartAt::Now, StartAt::After);
                let follower = Follower::open(log.clone(), EventFilter::default(), start, "sink").await?;
                tracing::info!(path = %s.path.display(), "JSON-lines sink on");
                Some((follower, sink))
            }
        };
        Ok(Self { service: EventService::new(log), alerts, sink })
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
        let Self { service, alerts, sink } = *self;
        let alerts = async {
            let Some((mut follower, mut consumer, delivery)) = alerts else { return };
            let mut delivering = tokio::spawn(delivery.run());
            follower.run(&mut consumer, &shutdown).await;
            // The other roles of the process drain now, and the failures they store deserve
            // alerts too: read up to the log's head before closing the queue.
            let deadline = tokio::time::Instant::now() + ALERT_DRAIN;
            match tokio::time::timeout_at(deadline, follower.drain(&mut consumer)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "alerts: cannot read the events stored during shutdown"),
                Err(_) => tracing::warn!("alerts: events stored during shutdown were not all read in time"),
            }
            // Dropping the consumer closes the queue: the delivery ends once it is empty.
            drop(consumer);
            if tokio::time::timeout_at(deadline, &mut delivering).await.is_err() {
                delivering.abort();
                tracing::warn!("alerts still queued at shutdown were not delivered");
            }
        };
        let sink = async {
            let Some((mut follower, mut sink)) = sink else { return };
            follower.run(&mut sink, &shutdown).await;
            // The cursor is saved at most once a second while running: save the last one now.
            if let Err(e) = sink.save_position().await {
                tracing::warn!(error = %e, "sink: cannot save its cursor at shutdown");
            }
        };
        let service = async {
            shutdown.cancelled().await;
            // Subscribe streams never finish by themselves; end them so the server's drain completes.
            service.close_streams();
        };
        tokio::join!(alerts, sink, service);
        Ok(())
    }
}
