//! What the manager tells other services after a change: the scheduler (so that a schedule
//! change takes effect now, not at its next sync) and the work queue (manual triggers).
use std::sync::Arc;

use nightshift_core::{AgentId, pb};
use nightshift_rpc::{BadEndpoint, CallChannel, ClientOptions};

/// Told after an agent's schedule-relevant state changed. Must not block: implementations
/// hand the work to a task. Failures are the implementation's to log; the scheduler also
/// polls the store, so a lost notification only delays a change.
pub trait ScheduleObserver: Send + Sync + 'static {
    /// Created, updated, paused or resumed.
    fn agent_changed(&self, id: &AgentId);
    /// Deleted.
    fn agent_deleted(&self, id: &AgentId);
}

/// Notifies a remote scheduler over gRPC (`UpsertSchedule` / `RemoveSchedule`).
#[derive(Clone)]
pub struct GrpcScheduleObserver {
    client: pb::scheduler_service_client::SchedulerServiceClient<CallChannel>,
}

impl GrpcScheduleObserver {
    /// A lazily connecting client of the scheduler at `endpoint`.
    pub fn new(endpoint: &str, client: &ClientOptions) -> Result<Self, BadEndpoint> {
        let channel = client.channel("scheduler_endpoint", endpoint, std::time::Duration::from_secs(5))?;
        Ok(Self { client: pb::scheduler_service_client::SchedulerServiceClient::new(channel) })
    }
}

impl ScheduleObserver for GrpcScheduleObserver {
    fn agent_changed(&self, id: &AgentId) {
        let mut c = self.client.clone();
        let req = pb::UpsertScheduleRequest { agent_id: id.to_string(), ..Default::default() };
        tokio::spawn(async move {
            if let Err(e) = c.upsert_schedule(req).await {
                tracing::warn!(error = %e, "scheduler not notified; it picks the change up at its next sync");
            }
        });
    }

    fn agent_deleted(&self, id: &AgentId) {
        let mut c = self.client.clone();
        let req = pb::RemoveScheduleRequest { agent_id: id.to_string() };
        tokio::spawn(async move {
            if let Err(e) = c.remove_schedule(req).await {
                tracing::warn!(error = %e, "scheduler not notified of a deletion; it reloads periodically");
            }
        });
    }
}

/// Shared handle type.
pub type Observer = Arc<dyn ScheduleObserver>;
