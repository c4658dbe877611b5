//! ReplayRun: a new run re-running an ended one, linked to it (`replay_of`), reusing its first
//! steps, with another version or model, its tools frozen (served from the original's recorded
//! calls) or live. What the worker does with it: `worker/src/replay.rs`.
use std::collections::HashMap;

use nightshift_core::{AgentSpec, AgentState, EventType, Namespaces, RunId, pb};
use nightshift_store::NewReplay;
use prost::Message;
use serde_json::json;
use tonic::Status;

use crate::convert;
use crate::error::{invalid, status_from_store};
use crate::service::ManagerService;

/// Longest model name a replay may ask for.
const MAX_MODEL: usize = 200;

/// Every tool call of `steps` with its result, in order: the arguments are those the call ran
/// with (an approver's edit, marked by its `ToolCallStarted`), else those the model asked for.
pub(crate) fn recording(steps: &[pb::RunStep]) -> Vec<pb::RecordedCall> {
    use pb::run_step::Payload;
    let mut asked: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::new();
    for step in steps {
        match &step.payload {
            Some(Payload::LlmResponse(r)) => {
                asked.extend(r.tool_calls.iter().map(|c| (c.id.as_str(), c.arguments_json.as_str())));
            }
            Some(Payload::ToolStarted(s)) => {
                asked.insert(s.call_id.as_str(), s.arguments_json.as_str());
            }
            Some(Payload::ToolResult(t)) => out.push(pb::RecordedCall {
                tool_name: t.tool_name.clone(),
                arguments_json: asked.get(t.call_id.as_str()).copied().unwrap_or("{}").to_owned(),
                output: t.output.clone(),
                is_error: t.is_error,
            }),
            Some(Payload::MemoryStored(_)) | None => {}
        }
    }
    out
}

impl ManagerService {
    /// ReplayRun.
    pub(crate) async fn replay(
        &self,
        scope: &Namespaces,
        req: pb::ReplayRunRequest,
    ) -> Result<pb::ReplayRunResponse, Status> {
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        let original = self.visible_run(scope, &id).await?;
        if !original.status.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {id} is {}: replay a run that has ended",
                original.status
            )));
        }
        let model = req.model.trim().to_owned();
        if model.len() > MAX_MODEL || model.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "model: at most {MAX_MODEL} characters, no control characters"
            )));
        }
        let steps = self.store().run_steps(&id).await.map_err(status_from_store)?;
        if req.from_step as usize > steps.len() {
            return Err(Status::invalid_argument(format!(
                "from_step: run {id} has {} steps (0 to {} may be reused)",
                steps.len(),
                steps.len()
            )));
        }
        let agent = (self.store().get_agent(&original.agent_id).await.map_err(status_from_store)?)
            .ok_or_else(|| Status::failed_precondition(format!("the agent of run {id} was deleted")))?;
        if agent.state == AgentState::Paused {
            return Err(Status::failed_precondition(format!("agent '{}' is paused; resume it first", agent.spec.name)));
        }
        let version = if req.agent_version == 0 { original.agent_version } else { req.agent_version };
        self.store().get_agent_version(&original.agent_id, version).await.map_err(|e| match e {
            nightshift_store::StoreError::NotFound(_) => {
                Status::invalid_argument(format!("agent_version: agent '{}' has no version {version}", agent.spec.name))
            }
            e => status_from_store(e),
        })?;
        let tools = match req.tools() {
            pb::ReplayTools::Unspecified | pb::ReplayTools::Frozen => pb::ReplayTools::Frozen,
            pb::ReplayTools::Live => pb::ReplayTools::Live,
        };
        let pb_steps: Vec<pb::RunStep> = steps.iter().map(convert::step).collect();
        let spec = pb::ReplaySpec {
            replay_of: id.to_string(),
            model,
            tools: tools as i32,
            live_reads: req.live_reads,
            store_memory: req.store_memory,
            recording: recording(&pb_steps),
        };
        let new = NewReplay {
            id: RunId::generate(),
            original: id.clone(),
            agent_id: original.agent_id.clone(),
            agent_version: version,
            query_override: original.query_override.clone(),
            from_step: req.from_step,
            spec: spec.encode_to_vec(),
        };
        let run = self.store().insert_replay(&new).await.map_err(status_from_store)?;
        tracing::info!(run = %run.id, replay_of = %id, from_step = req.from_step, version, "replay queued");
        let data = json!({"trigger": "replay", "replay_of": id.to_string(), "from_step": req.from_step,
                          "agent_version": version, "model": spec.model, "tools": tools.as_str_name()});
        self.emit(EventType::RunQueued, &agent, Some(&run.id), data);
        self.publish_manual(&run).await;
        Ok(pb::ReplayRunResponse { run: Some(convert::run(&run)) })
    }

    /// The replay spec of run `id`, for its StartRun; puts its model into `spec`.
    pub(crate) async fn replay_of(&self, id: &RunId, spec: &mut AgentSpec) -> Result<Option<pb::ReplaySpec>, Status> {
        let Some(bytes) = self.store().replay_spec(id).await.map_err(status_from_store)? else {
            return Ok(None);
        };
        let replay = pb::ReplaySpec::decode(bytes.as_slice())
            .map_err(|e| Status::internal(format!("run {id}: its replay spec does not decode: {e}")))?;
        if !replay.model.is_empty() {
            spec.model.model = replay.model.clone();
        }
        Ok(Some(replay))
    }
}
