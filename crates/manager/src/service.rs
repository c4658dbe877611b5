//! `nightshift.v1.ManagerService` on the SQL store.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::{
    AgentId, AgentSpec, AgentState, Clock, EventType, RunId, RunStatus, SystemClock, TriggerKind, ValidationError,
    duration, pb, time,
};
use nightshift_events_client::EventPublisher;
use nightshift_queue::WorkQueue;
use nightshift_store::{AgentFilter, AgentRecord, ApplyOutcome, NewRun, RunFilter, Store, WaitingLookup};
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::error::{invalid, status_from_store};
use crate::request::{fence, name_contains, page_size, spec_of, token};
use crate::{convert, scope};

const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_LEASE: Duration = Duration::from_secs(600);
const MAX_QUERY_OVERRIDE: usize = 64 * 1024;

/// The manager's gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct ManagerService {
    store: Store,
    clock: Arc<dyn Clock>,
    default_lease_ttl: Duration,
    observer: Option<crate::schedule_observer::Observer>,
    queue: Option<Arc<dyn WorkQueue>>,
    events: Option<EventPublisher>,
    /// How the manager calls workers (TLS, its key).
    client: nightshift_rpc::ClientOptions,
    /// The workers' `[allow]` policy, checked when agents are applied (`None`: not checked,
    /// for in-process harnesses; every manager process sets it from `[worker_allow]`).
    admission: Option<crate::admission::Admission>,
    /// The operator's tool policy per namespace, handed to workers with each started run.
    governance: Arc<BTreeMap<nightshift_core::Namespace, pb::GovernanceSpec>>,
    /// The price table of the cost ledger.
    prices: Arc<nightshift_core::cost::PriceTable>,
    /// The operator's budget per namespace.
    budgets: Arc<BTreeMap<nightshift_core::Namespace, nightshift_core::budget::Budget>>,
    /// Runs being watched (WatchRun) through this manager.
    watchers: Arc<crate::watch::Watchers>,
}

impl ManagerService {
    /// A service on `store` granting `default_lease_ttl` leases when a worker asks for none.
    pub fn new(store: Store, default_lease_ttl: Duration) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            default_lease_ttl,
            observer: None,
            queue: None,
            events: None,
            client: Default::default(),
            admission: None,
            governance: Arc::default(),
            prices: Arc::default(),
            budgets: Arc::default(),
            watchers: Arc::default(),
        }
    }

    /// Tells `observer` (the scheduler) about schedule-relevant changes.
    pub fn with_observer(mut self, observer: Arc<dyn crate::ScheduleObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Publishes manually triggered runs to `queue` (otherwise they wait for the scheduler's
    /// republish sweep).
    pub fn with_queue(mut self, queue: Arc<dyn WorkQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Publishes agent lifecycle and run events to the event service.
    pub fn with_events(mut self, events: EventPublisher) -> Self {
        self.events = Some(events);
        self
    }

    /// Calls workers (cancellations) with `client`'s TLS settings and key.
    pub fn with_client(mut self, client: nightshift_rpc::ClientOptions) -> Self {
        self.client = client;
        self
    }

    /// Refuses agents that ask workers for what `policy` does not allow.
    pub fn with_worker_policy(mut self, policy: nightshift_core::operator_policy::OperatorPolicy) -> Self {
        self.admission = Some(crate::admission::Admission::new(policy));
        self
    }

    /// The spec of a create/apply/update request, if the caller holds its namespace and the
    /// worker policy admits it (in that order: a caller outside the namespace learns nothing of
    /// the policy).
    async fn admitted(&self, scope: &nightshift_core::Namespaces, spec: AgentSpec) -> Result<AgentSpec, Status> {
        scope::require(scope, &spec.namespace)?;
        if let Some(admission) = &self.admission {
            admission.check(&spec).await?;
        }
        Ok(spec)
    }

    pub(crate) fn events(&self) -> Option<&EventPublisher> {
        self.events.as_ref()
    }

    pub(crate) fn client(&self) -> &nightshift_rpc::ClientOptions {
        &self.client
    }

    /// Hands `policies` (the operator's tool policy per namespace) to workers with every run.
    pub fn with_governance(mut self, policies: BTreeMap<nightshift_core::Namespace, pb::GovernanceSpec>) -> Self {
        self.governance = Arc::new(policies);
        self
    }

    /// Prices every checkpointed LLM call with `prices` (the cost ledger).
    pub fn with_prices(mut self, prices: nightshift_core::cost::PriceTable) -> Self {
        self.prices = Arc::new(prices);
        self
    }

    pub(crate) fn prices(&self) -> &nightshift_core::cost::PriceTable {
        &self.prices
    }

    /// Checks every run's first start against `budgets` (the operator's, per namespace) as well
    /// as its agent's own.
    pub fn with_budgets(
        mut self,
        budgets: BTreeMap<nightshift_core::Namespace, nightshift_core::budget::Budget>,
    ) -> Self {
        self.budgets = Arc::new(budgets);
        self
    }

    pub(crate) fn budgets(&self) -> &Arc<BTreeMap<nightshift_core::Namespace, nightshift_core::budget::Budget>> {
        &self.budgets
    }

    pub(crate) fn namespace_policy(&self, ns: &nightshift_core::Namespace) -> Option<&pb::GovernanceSpec> {
        self.governance.get(ns)
    }

    pub(crate) fn queue(&self) -> Option<&Arc<dyn WorkQueue>> {
        self.queue.as_ref()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The runs being watched through this manager; tell it of every change of a run.
    pub(crate) fn watchers(&self) -> &Arc<crate::watch::Watchers> {
        &self.watchers
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn changed(&self, id: &AgentId) {
        if let Some(o) = &self.observer {
            o.agent_changed(id);
        }
    }

    pub(crate) fn emit(&self, ty: EventType, agent: &AgentRecord, run: Option<&RunId>, data: serde_json::Value) {
        if let Some(p) = &self.events {
            let mut b = p
                .event(ty)
                .agent(&agent.id)
                .agent_name(agent.spec.name.to_string())
                .namespace(&agent.spec.namespace)
                .data(data);
            if let Some(r) = run {
                b = b.run(r);
            }
            b.emit();
        }
    }

    /// Uses `clock` for "now" (next fire times in status).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> pb::manager_service_server::ManagerServiceServer<Self> {
        // Checkpoints carry tool results: 4 MiB (tonic's default, stated here as the contract).
        pb::manager_service_server::ManagerServiceServer::new(self).max_decoding_message_size(4 << 20)
    }

    pub(crate) fn lease_ttl(&self, field: &str, d: Option<&prost_types::Duration>) -> Result<Duration, Status> {
        let Some(d) = d else { return Ok(self.default_lease_ttl) };
        let ttl = duration::from_pb(d).map_err(|e| invalid(ValidationError::new(field, e)))?;
        if !(MIN_LEASE..=MAX_LEASE).contains(&ttl) {
            return Err(Status::invalid_argument(format!(
                "{field}: must be between 1s and 10m (got {})",
                duration::format(ttl)
            )));
        }
        Ok(ttl)
    }

    async fn status_of(&self, a: &AgentRecord) -> Result<pb::GetAgentStatusResponse, Status> {
        let s = self.store.agent_stats(&a.id).await.map_err(status_from_store)?;
        let now = self.clock.now();
        let day = self.store.runs_by_hour(&a.id, convert::last_day_start(now)).await.map_err(status_from_store)?;
        let next_run_at = match a.state {
            AgentState::Active => a.spec.schedule.next_tick_of(&a.id, now).map(time::to_pb),
            AgentState::Paused => None,
        };
        Ok(pb::GetAgentStatusResponse {
            agent_id: a.id.to_string(),
            name: a.spec.name.to_string(),
            state: a.state.to_pb() as i32,
            running: u32::try_from(s.count(RunStatus::Running)).unwrap_or(u32::MAX),
            total_runs: s.total(),
            succeeded: s.count(RunStatus::Succeeded),
            failed: s.count(RunStatus::Failed),
            skipped: s.count(RunStatus::Skipped),
            cancelled: s.count(RunStatus::Cancelled),
            timed_out: s.count(RunStatus::TimedOut),
            queued: s.count(RunStatus::Queued),
            awaiting_approval: s.count(RunStatus::AwaitingApproval),
            cost_micro_usd: s.cost_micros,
            last_run: s.last_run.as_ref().map(convert::run),
            last_error: s.last_error.as_ref().map(|(e, _)| e.clone()).unwrap_or_default(),
            last_error_at: s.last_error.as_ref().map(|(_, t)| time::to_pb(*t)),
            next_run_at,
            tools: a.spec.tools.names(),
            mean_duration: convert::opt_duration(s.mean_duration),
            total_usage: Some(pb::TokenUsage {
                input_tokens: s.input_tokens,
                output_tokens: s.output_tokens,
                ..Default::default()
            }),
            version: a.version,
            last_24h: convert::last_day(now, &day),
        })
    }
}

#[tonic::async_trait]
impl pb::manager_service_server::ManagerService for ManagerService {
    async fn create_agent(
        &self,
        req: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let scope = scope::caller(&req);
        let req = req.into_inner();
        let spec = self.admitted(&scope, spec_of(req.spec.as_ref(), &req.manifest_yaml)?).await?;
        let state = if req.paused { AgentState::Paused } else { AgentState::Active };
        let rec = self.store.create_agent(&spec, state).await.map_err(status_from_store)?;
        tracing::info!(agent = %rec.spec.name, id = %rec.id, "agent created");
        self.changed(&rec.id);
        self.emit(EventType::AgentCreated, &rec, None, json!({"version": rec.version}));
        Ok(Response::new(pb::CreateAgentResponse { agent: Some(convert::agent(&rec)) }))
    }

    async fn apply_agent(
        &self,
        req: Request<pb::ApplyAgentRequest>,
    ) -> Result<Response<pb::ApplyAgentResponse>, Status> {
        let scope = scope::caller(&req);
        let req = req.into_inner();
        let spec = self.admitted(&scope, spec_of(req.spec.as_ref(), &req.manifest_yaml)?).await?;
        let (rec, outcome) = self.store.apply_agent(&spec).await.map_err(status_from_store)?;
        use pb::apply_agent_response::Outcome;
        let outcome = match outcome {
            ApplyOutcome::Created => Outcome::Created,
            ApplyOutcome::Updated => Outcome::Updated,
            ApplyOutcome::Unchanged => Outcome::Unchanged,
        };
        tracing::info!(agent = %rec.spec.name, version = rec.version, outcome = ?outcome, "agent applied");
        if outcome != Outcome::Unchanged {
            self.changed(&rec.id);
            let ty = if outcome == Outcome::Created { EventType::AgentCreated } else { EventType::AgentUpdated };
            self.emit(ty, &rec, None, json!({"version": rec.version}));
        }
        Ok(Response::new(pb::ApplyAgentResponse { agent: Some(convert::agent(&rec)), outcome: outcome as i32 }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(convert::agent(&rec)) }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let namespaces = scope::visible(&scope::caller(&req), &req.get_ref().namespace)?;
        let req = req.into_inner();
        let state = match req.state() {
            pb::AgentState::Unspecified => None,
            pb::AgentState::Active => Some(AgentState::Active),
            pb::AgentState::Paused => Some(AgentState::Paused),
        };
        let filter = AgentFilter {
            namespaces,
            labels: req.label_selector.into_iter().collect::<BTreeMap<_, _>>(),
            state,
            name_contains: name_contains(&req.name_contains)?,
            limit: page_size(req.page_size)?,
            page_token: token(&req.page_token),
        };
        let page = self.store.list_agents(&filter).await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.iter().map(convert::agent).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_agent(
        &self,
        req: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let scope = scope::caller(&req);
        let req = req.into_inner();
        let spec = spec_of(req.spec.as_ref(), &req.manifest_yaml)?;
        let current = self.resolve(&scope, req.agent.as_ref()).await?;
        if spec.namespace != current.spec.namespace {
            return Err(Status::invalid_argument(format!(
                "namespace: agent '{}' is in namespace {}; an agent does not move between namespaces",
                current.spec.name, current.spec.namespace
            )));
        }
        let spec = self.admitted(&scope, spec).await?;
        let (rec, changed) =
            self.store.update_agent(&current.id, &spec, req.expected_version).await.map_err(status_from_store)?;
        if changed {
            tracing::info!(agent = %rec.spec.name, version = rec.version, "agent updated");
            self.changed(&rec.id);
            self.emit(EventType::AgentUpdated, &rec, None, json!({"version": rec.version}));
        }
        Ok(Response::new(pb::UpdateAgentResponse { agent: Some(convert::agent(&rec)) }))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        self.store.delete_agent(&rec.id).await.map_err(status_from_store)?;
        tracing::info!(agent = %rec.spec.name, id = %rec.id, "agent deleted");
        if let Some(o) = &self.observer {
            o.agent_deleted(&rec.id);
        }
        self.emit(EventType::AgentDeleted, &rec, None, json!({}));
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    async fn pause_agent(
        &self,
        req: Request<pb::PauseAgentRequest>,
    ) -> Result<Response<pb::PauseAgentResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        let (rec, _) = self.store.set_agent_state(&rec.id, AgentState::Paused).await.map_err(status_from_store)?;
        tracing::info!(agent = %rec.spec.name, "agent paused");
        self.changed(&rec.id);
        self.emit(EventType::AgentPaused, &rec, None, json!({}));
        Ok(Response::new(pb::PauseAgentResponse { agent: Some(convert::agent(&rec)) }))
    }

    async fn resume_agent(
        &self,
        req: Request<pb::ResumeAgentRequest>,
    ) -> Result<Response<pb::ResumeAgentResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        let (rec, _) = self.store.set_agent_state(&rec.id, AgentState::Active).await.map_err(status_from_store)?;
        tracing::info!(agent = %rec.spec.name, "agent resumed");
        self.changed(&rec.id);
        self.emit(EventType::AgentResumed, &rec, None, json!({}));
        Ok(Response::new(pb::ResumeAgentResponse { agent: Some(convert::agent(&rec)) }))
    }

    async fn trigger_agent(
        &self,
        req: Request<pb::TriggerAgentRequest>,
    ) -> Result<Response<pb::TriggerAgentResponse>, Status> {
        let scope = scope::caller(&req);
        let req = req.into_inner();
        if let Some(q) = &req.query_override
            && (q.trim().is_empty() || q.len() > MAX_QUERY_OVERRIDE)
        {
            return Err(Status::invalid_argument("query_override: must be non-empty and at most 64 KiB"));
        }
        let rec = self.resolve(&scope, req.agent.as_ref()).await?;
        if rec.state == AgentState::Paused {
            return Err(Status::failed_precondition(format!("agent '{}' is paused; resume it first", rec.spec.name)));
        }
        let new = NewRun {
            id: RunId::generate(),
            agent_id: rec.id.clone(),
            trigger: TriggerKind::Manual,
            scheduled_for: None,
            query_override: req.query_override,
        };
        let (run, _) = self.store.insert_run(&new).await.map_err(status_from_store)?;
        tracing::info!(agent = %rec.spec.name, run = %run.id, "run triggered");
        self.emit(EventType::RunQueued, &rec, Some(&run.id), json!({"trigger": "manual"}));
        self.publish_manual(&run).await;
        Ok(Response::new(pb::TriggerAgentResponse { run: Some(convert::run(&run)) }))
    }

    async fn replay_run(&self, req: Request<pb::ReplayRunRequest>) -> Result<Response<pb::ReplayRunResponse>, Status> {
        let scope = scope::caller(&req);
        self.replay(&scope, req.into_inner()).await.map(Response::new)
    }

    async fn get_agent_status(
        &self,
        req: Request<pb::GetAgentStatusRequest>,
    ) -> Result<Response<pb::GetAgentStatusResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        Ok(Response::new(self.status_of(&rec).await?))
    }

    async fn list_agent_versions(
        &self,
        req: Request<pb::ListAgentVersionsRequest>,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        self.agent_versions(req).await
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        let scope = scope::caller(&req);
        let namespaces = scope::visible(&scope, &req.get_ref().namespace)?;
        let req = req.into_inner();
        let agent_id = match &req.agent {
            Some(r) if r.r#ref.is_some() => Some(self.resolve(&scope, Some(r)).await?.id),
            _ => None,
        };
        let statuses = req
            .statuses()
            .map(|s| {
                RunStatus::from_pb(s).ok_or_else(|| Status::invalid_argument("statuses: UNSPECIFIED is not a status"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filter = RunFilter {
            namespaces,
            agent_id,
            statuses,
            limit: page_size(req.page_size)?,
            page_token: token(&req.page_token),
        };
        let page = self.store.list_runs(&filter).await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.items.iter().map(convert::run).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        let id = RunId::parse("run_id", &req.get_ref().run_id).map_err(invalid)?;
        let run = self.visible_run(&scope::caller(&req), &id).await?;
        let (steps, costs) =
            tokio::try_join!(self.store.run_steps(&id), self.store.run_costs(&id)).map_err(status_from_store)?;
        let mut out = convert::run(&run);
        out.steps = steps.iter().map(convert::step).collect();
        let costs = costs
            .into_iter()
            .map(|c| pb::StepCost { seq: c.seq, model: c.model, cost_micro_usd: c.cost_micros })
            .collect();
        Ok(Response::new(pb::GetRunResponse { run: Some(out), costs }))
    }

    type WatchRunStream = crate::watch::WatchStream;

    async fn watch_run(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<Self::WatchRunStream>, Status> {
        let scope = scope::caller(&req);
        self.watch(&scope, req.into_inner()).await.map(Response::new)
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Result<Response<pb::CancelRunResponse>, Status> {
        let scope = scope::caller(&req);
        let req = req.into_inner();
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        self.visible_run(&scope, &id).await?;
        let reason = if req.reason.trim().is_empty() { "cancelled by request".to_owned() } else { req.reason };
        let run = self.store.cancel_run(&id, &reason).await.map_err(status_from_store)?;
        self.watchers.changed(&id);
        tracing::info!(run = %id, "run cancelled");
        // A run that ever started names its (last) worker; if that worker no longer holds it,
        // it answers `found: false`.
        self.deliver_cancellations(std::slice::from_ref(&run));
        self.wake_waiting(&run.agent_id, &id, WaitingLookup::NotLooked);
        if let Some(p) = &self.events {
            p.event(EventType::RunCancelled)
                .agent(&run.agent_id)
                .agent_name(run.agent_name.clone())
                .namespace(&run.namespace)
                .run(&id)
                .data(json!({"reason": reason}))
                .emit();
        }
        Ok(Response::new(pb::CancelRunResponse { run: Some(convert::run(&run)) }))
    }

    async fn enqueue_run(
        &self,
        req: Request<pb::EnqueueRunRequest>,
    ) -> Result<Response<pb::EnqueueRunResponse>, Status> {
        let req = req.into_inner();
        let new = NewRun {
            id: RunId::parse("run_id", &req.run_id).map_err(invalid)?,
            agent_id: AgentId::parse("agent_id", &req.agent_id).map_err(invalid)?,
            trigger: TriggerKind::Schedule,
            scheduled_for: req.scheduled_for.as_ref().and_then(time::from_pb),
            query_override: None,
        };
        let (run, created) = self.store.insert_run(&new).await.map_err(status_from_store)?;
        Ok(Response::new(pb::EnqueueRunResponse { run: Some(convert::run(&run)), created }))
    }

    async fn start_run(&self, req: Request<pb::StartRunRequest>) -> Result<Response<pb::StartRunResponse>, Status> {
        self.start(req.into_inner()).await.map(Response::new)
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        let ttl = self.lease_ttl("lease_ttl", req.lease_ttl.as_ref())?;
        let until =
            self.store.heartbeat(&id, fence(req.attempt, req.lease_token)?, ttl).await.map_err(status_from_store)?;
        Ok(Response::new(pb::HeartbeatResponse { lease_expires_at: Some(time::to_pb(until)) }))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        self.append_step(req.into_inner()).await.map(Response::new)
    }

    async fn finish_run(&self, req: Request<pb::FinishRunRequest>) -> Result<Response<pb::FinishRunResponse>, Status> {
        self.finish(req.into_inner()).await.map(Response::new)
    }

    async fn request_approval(
        &self,
        req: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        self.park_for_approval(req.into_inner()).await.map(Response::new)
    }

    async fn get_costs(&self, req: Request<pb::GetCostsRequest>) -> Result<Response<pb::GetCostsResponse>, Status> {
        let scope = scope::caller(&req);
        self.costs_report(&scope, req.into_inner()).await.map(Response::new)
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let scope = scope::caller(&req);
        self.approvals_page(&scope, req.into_inner()).await.map(Response::new)
    }

    async fn approve_tool_call(
        &self,
        req: Request<pb::ApproveToolCallRequest>,
    ) -> Result<Response<pb::ApproveToolCallResponse>, Status> {
        let (scope, by, req) = (scope::caller(&req), nightshift_rpc::caller_name(&req), req.into_inner());
        let approval = self.decide(&scope, by, &req.approval_id, true, req.reason, req.arguments_json).await?;
        Ok(Response::new(pb::ApproveToolCallResponse { approval: Some(approval) }))
    }

    async fn deny_tool_call(
        &self,
        req: Request<pb::DenyToolCallRequest>,
    ) -> Result<Response<pb::DenyToolCallResponse>, Status> {
        let (scope, by, req) = (scope::caller(&req), nightshift_rpc::caller_name(&req), req.into_inner());
        let approval = self.decide(&scope, by, &req.approval_id, false, req.reason, None).await?;
        Ok(Response::new(pb::DenyToolCallResponse { approval: Some(approval) }))
    }
}
