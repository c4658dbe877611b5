//! `nightshift.v1.SchedulerService` over the engine and the store.
use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, AgentState, pb, time};
use nightshift_store::{ScheduledAgent, status_from_store};
use tonic::{Request, Response, Status};

use crate::engine::Scheduler;
use crate::rules;

const MAX_UPCOMING: u32 = 100;

/// The gRPC face of a [`Scheduler`].
#[derive(Clone)]
pub struct SchedulerApi {
    scheduler: Scheduler,
}

impl SchedulerApi {
    /// Wraps `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::scheduler_service_server::SchedulerServiceServer<Self> {
        // Its requests name an agent: nothing larger has a reason to arrive.
        pb::scheduler_service_server::SchedulerServiceServer::new(self).max_decoding_message_size(64 << 10)
    }
}

fn agent_id(s: &str) -> Result<AgentId, Status> {
    AgentId::parse("agent_id", s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Upcoming fire times (with jitter) after `from`.
fn upcoming(a: &ScheduledAgent, from: DateTime<Utc>, n: u32) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut cursor = from;
    while out.len() < n as usize {
        let Some(t) = rules::next_tick(&a.schedule, &a.agent_id, cursor) else { break };
        out.push(t.fire_at);
        cursor = t.at;
    }
    out
}

fn info(a: &ScheduledAgent, now: DateTime<Utc>, n: u32) -> pb::ScheduleInfo {
    let from = a.anchor.max(now);
    let next = if a.paused { Vec::new() } else { upcoming(a, from, n.max(1)) };
    pb::ScheduleInfo {
        agent_id: a.agent_id.to_string(),
        agent_name: a.name.clone(),
        agent_version: a.version,
        spec: Some(a.schedule.to_pb()),
        paused: a.paused,
        last_fired_at: (a.fired > 0).then(|| time::to_pb(a.anchor)),
        next_fire_at: next.first().map(|t| time::to_pb(*t)),
        missed_ticks: a.missed,
        fired: a.fired,
        upcoming: next.iter().take(n as usize).map(|t| time::to_pb(*t)).collect(),
    }
}

impl SchedulerApi {
    async fn load(&self, id: &AgentId) -> Result<ScheduledAgent, Status> {
        self.scheduler
            .store()
            .scheduled_agent(id)
            .await
            .map_err(status_from_store)?
            .ok_or_else(|| Status::not_found(format!("agent {id} not found")))
    }

    async fn set_state(&self, id: &str, state: AgentState) -> Result<pb::ScheduleInfo, Status> {
        let id = agent_id(id)?;
        self.scheduler.store().set_agent_state(&id, state).await.map_err(status_from_store)?;
        self.scheduler.refresh(&id).await.map_err(status_from_store)?;
        Ok(info(&self.load(&id).await?, Utc::now(), 1))
    }
}

#[tonic::async_trait]
impl pb::scheduler_service_server::SchedulerService for SchedulerApi {
    /// The store is the source of truth (the manager wrote the agent); this call makes the
    /// scheduler pick the change up now instead of at its next sync.
    async fn upsert_schedule(
        &self,
        req: Request<pb::UpsertScheduleRequest>,
    ) -> Result<Response<pb::UpsertScheduleResponse>, Status> {
        let id = agent_id(&req.get_ref().agent_id)?;
        self.scheduler.refresh(&id).await.map_err(status_from_store)?;
        Ok(Response::new(pb::UpsertScheduleResponse { schedule: Some(info(&self.load(&id).await?, Utc::now(), 1)) }))
    }

    async fn remove_schedule(
        &self,
        req: Request<pb::RemoveScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        let id = agent_id(&req.get_ref().agent_id)?;
        self.scheduler.forget(&id);
        Ok(Response::new(pb::RemoveScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let schedule = self.set_state(&req.get_ref().agent_id, AgentState::Paused).await?;
        Ok(Response::new(pb::PauseScheduleResponse { schedule: Some(schedule) }))
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let schedule = self.set_state(&req.get_ref().agent_id, AgentState::Active).await?;
        Ok(Response::new(pb::ResumeScheduleResponse { schedule: Some(schedule) }))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let req = req.into_inner();
        if req.next > MAX_UPCOMING {
            return Err(Status::invalid_argument(format!("next: must be at most {MAX_UPCOMING} (got {})", req.next)));
        }
        let a = self.load(&agent_id(&req.agent_id)?).await?;
        Ok(Response::new(pb::GetScheduleResponse { schedule: Some(info(&a, Utc::now(), req.next)) }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let req = req.into_inner();
        let size = match req.page_size {
            0 => 100,
            n if n <= 1000 => n as usize,
            n => return Err(Status::invalid_argument(format!("page_size: must be at most 1000 (got {n})"))),
        };
        let mut all = self.scheduler.store().scheduled_agents().await.map_err(status_from_store)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let start = if req.page_token.is_empty() { 0 } else { all.partition_point(|a| a.name <= req.page_token) };
        let now = Utc::now();
        let page: Vec<_> = all.iter().skip(start).take(size).collect();
        let next_page_token = if start + page.len() < all.len() {
            page.last().map(|a| a.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: page.iter().map(|a| info(a, now, 1)).collect(),
            next_page_token,
        }))
    }

    async fn get_scheduler_status(
        &self,
        _: Request<pb::GetSchedulerStatusRequest>,
    ) -> Result<Response<pb::GetSchedulerStatusResponse>, Status> {
        let shard_count = self.scheduler.shard_count();
        let view = self.scheduler.store().scheduler_view(shard_count).await.map_err(status_from_store)?;
        Ok(Response::new(pb::GetSchedulerStatusResponse {
            member_id: self.scheduler.member_id().to_owned(),
            shard_count,
            members: view
                .members
                .into_iter()
                .map(|(member_id, at, shards)| pb::SchedulerMember {
                    member_id,
                    heartbeat_at: (at.timestamp_millis() > 0).then(|| time::to_pb(at)),
                    shards,
                })
                .collect(),
            unowned_shards: view.unowned,
        }))
    }
}
