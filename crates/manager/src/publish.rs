//! Runs the manager records itself (a trigger, a replay) go to the work queue at once; if that
//! fails, the scheduler's outbox sweep publishes them (they are recorded unpublished).
use nightshift_core::{TriggerKind, time};
use nightshift_queue::RunRequest;
use nightshift_store::RunRecord;

use crate::service::ManagerService;

impl ManagerService {
    /// Publishes a run just recorded by a call (trigger, replay) to the queue; if that fails, the
    /// scheduler's outbox sweep publishes it.
    pub(crate) async fn publish_manual(&self, run: &RunRecord) {
        let Some(q) = self.queue() else { return };
        let req = RunRequest {
            run_id: run.id.to_string(),
            agent_id: run.agent_id.to_string(),
            trigger: TriggerKind::Manual.to_pb() as i32,
            scheduled_for: None,
            enqueued_at: Some(time::to_pb(self.clock().now())),
            // The worker's run span continues this call's trace (the `grpc.server` span).
            trace_context: nightshift_telemetry::context_map(&tracing::Span::current()),
            redelivery: String::new(),
        };
        match q.publish(&req, None).await {
            Ok(_) => {
                if let Err(e) = self.store().mark_published(std::slice::from_ref(&run.id)).await {
                    tracing::warn!(run = %run.id, error = %e, "marking a run as published failed");
                }
            }
            Err(e) => tracing::warn!(run = %run.id, error = %e, "publishing a new run failed; it will be republished"),
        }
    }
}
