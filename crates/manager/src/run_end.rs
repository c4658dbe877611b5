//! What follows the end of a run, beyond recording it: the agent's first buffered run is
//! published again at once (it would otherwise wait for its next poll, up to
//! `lifecycle::DEFER_POLL`; a run deferred behind a waiting run while nothing runs nudges that
//! one the same way, in case its own delivery was lost), and the worker of a cancelled run is told to stop now rather than at
//! its next heartbeat. Both are best effort on top of a correct slow path (the poll, the fenced
//! heartbeat), so they never fail the RPC that ended the run.
use std::time::Duration;

use nightshift_core::{AgentId, RunId, TriggerKind, pb, time};
use nightshift_proto::v1::worker_service_client::WorkerServiceClient;
use nightshift_queue::RunRequest;
use nightshift_store::{RunRecord, WaitingLookup, WaitingRun};

use crate::service::ManagerService;

/// How long telling a worker about a cancellation may take.
const CANCEL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest worker endpoint StartRun accepts.
pub(crate) const MAX_WORKER_ENDPOINT: usize = 256;

/// Checks a worker's advertised endpoint: empty, or an `http(s)://` URL of bounded length.
pub(crate) fn check_worker_endpoint(endpoint: &str) -> Result<Option<String>, String> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Ok(None);
    }
    if endpoint.len() > MAX_WORKER_ENDPOINT {
        return Err(format!("worker_endpoint: at most {MAX_WORKER_ENDPOINT} characters"));
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || tonic::transport::Endpoint::from_shared(endpoint.to_owned()).is_err()
    {
        return Err(format!("worker_endpoint: '{endpoint}' is not an http(s)://HOST:PORT URL"));
    }
    Ok(Some(endpoint.to_owned()))
}

impl ManagerService {
    /// After a run of `agent` stopped running (`ended`): publishes the agent's first waiting run
    /// again, so a buffered run starts as soon as the run ahead of it ends. In the background:
    /// the RPC that ended the run does not wait for it. `waiting` is what the end found, if it
    /// looked (Postgres' one-statement FinishRun); otherwise a lookup in the small
    /// `runs_waiting` index, empty for agents that do not buffer.
    pub(crate) fn wake_waiting(&self, agent: &AgentId, ended: &RunId, waiting: WaitingLookup) {
        if self.queue().is_none() || matches!(waiting, WaitingLookup::Found(None)) {
            return;
        }
        let (this, agent, ended) = (self.clone(), agent.clone(), ended.clone());
        tokio::spawn(async move {
            let found = match waiting {
                WaitingLookup::Found(found) => Ok(found),
                WaitingLookup::NotLooked => this.store().first_waiting_run(&agent).await,
            };
            match found {
                // Its first request is likely still in the dedup window (deferred, not acked).
                Ok(Some(waiting)) => this.publish_waiting(&agent, &waiting, &format!("after-{ended}")).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(agent = %agent, error = %e, "looking up a waiting run failed; it starts at its next poll")
                }
            }
        });
    }

    /// Publishes a waiting run again, with `redelivery` as the dedup suffix.
    pub(crate) async fn publish_waiting(&self, agent: &AgentId, waiting: &WaitingRun, redelivery: &str) {
        let Some(queue) = self.queue() else { return };
        let request = RunRequest {
            run_id: waiting.id.to_string(),
            agent_id: agent.to_string(),
            trigger: if waiting.scheduled_for.is_some() { TriggerKind::Schedule } else { TriggerKind::Manual }.to_pb()
                as i32,
            scheduled_for: waiting.scheduled_for.map(time::to_pb),
            enqueued_at: Some(time::to_pb(self.clock().now())),
            trace_context: Default::default(),
            redelivery: redelivery.to_owned(),
        };
        if let Err(e) = queue.publish(&request, None).await {
            tracing::debug!(run = %waiting.id, error = %e, "waking a waiting run failed; it starts at its next poll");
        }
    }

    /// Tells the workers holding `cancelled` runs to stop them now (in the background).
    pub(crate) fn deliver_cancellations(&self, cancelled: &[RunRecord]) {
        for run in cancelled {
            let Some(endpoint) = run.worker_endpoint.clone() else { continue };
            let client = self.client().clone();
            let run_id = run.id.to_string();
            let reason = run.reason.clone().unwrap_or_default();
            tokio::spawn(async move {
                let told = tokio::time::timeout(CANCEL_DELIVERY_TIMEOUT, async {
                    let channel = client
                        .endpoint("worker_endpoint", &endpoint)
                        .map_err(|e| e.to_string())?
                        .connect()
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut client = WorkerServiceClient::new(client.wrap(channel));
                    client
                        .cancel_run(pb::WorkerCancelRunRequest { run_id: run_id.clone(), reason })
                        .await
                        .map(|r| r.into_inner().found)
                        .map_err(|s| s.message().to_owned())
                })
                .await;
                match told {
                    Ok(Ok(found)) => {
                        tracing::info!(run = %run_id, %endpoint, found, "cancellation delivered to the worker")
                    }
                    Ok(Err(e)) => tracing::warn!(run = %run_id, %endpoint, error = %e,
                        "could not tell the worker; it stops at its next heartbeat"),
                    Err(_) => tracing::warn!(run = %run_id, %endpoint,
                        "telling the worker timed out; it stops at its next heartbeat"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_endpoints_are_checked() {
        assert_eq!(check_worker_endpoint(""), Ok(None));
        assert_eq!(check_worker_endpoint(" http://10.0.0.7:50053 "), Ok(Some("http://10.0.0.7:50053".into())));
        assert!(check_worker_endpoint("10.0.0.7:50053").unwrap_err().contains("http(s)://"));
        assert!(check_worker_endpoint(&format!("http://{}", "a".repeat(300))).unwrap_err().contains("at most"));
    }
}
