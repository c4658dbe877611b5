//! Reading and bounding the fields of manager requests: the agent spec of a write, page sizes
//! and tokens, a worker's fence, and the sizes of what workers record.
use nightshift_core::{AgentManifest, AgentSpec, pb};
use nightshift_store::Fence;
use tonic::Status;

use crate::error::status_from_validation;

/// Default page size of list calls.
pub(crate) const DEFAULT_PAGE: u32 = 100;
/// Largest page size of list calls.
pub(crate) const MAX_PAGE: u32 = 1000;

/// The spec of a request: exactly one of the message or the YAML manifest.
pub(crate) fn spec_of(spec: Option<&pb::AgentSpec>, manifest_yaml: &str) -> Result<AgentSpec, Status> {
    match (spec, manifest_yaml.trim().is_empty()) {
        (Some(_), false) => Err(Status::invalid_argument("spec: set either spec or manifest_yaml, not both")),
        (None, true) => Err(Status::invalid_argument("spec: is required (or manifest_yaml)")),
        (Some(p), true) => AgentSpec::from_proto(p).map_err(|e| status_from_validation("agent spec", e)),
        (None, false) => AgentManifest::from_yaml(manifest_yaml)
            .and_then(|m| m.validate())
            .map_err(|e| status_from_validation("agent manifest", e)),
    }
}

pub(crate) fn page_size(n: u32) -> Result<u32, Status> {
    match n {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        n => Err(Status::invalid_argument(format!("page_size: must be at most {MAX_PAGE} (got {n})"))),
    }
}

pub(crate) fn token(t: &str) -> Option<String> {
    (!t.is_empty()).then(|| t.to_owned())
}

/// ListAgents' `name_contains`: no longer than a name can be.
pub(crate) fn name_contains(text: &str) -> Result<Option<String>, Status> {
    match text.trim() {
        "" => Ok(None),
        t if t.chars().count() > 63 => {
            Err(Status::invalid_argument("name_contains: at most 63 characters (an agent name's length)"))
        }
        t => Ok(Some(t.to_owned())),
    }
}

/// The fence of a worker's call: its attempt and the lease token StartRun gave it (required).
pub(crate) fn fence(attempt: u32, token: String) -> Result<Fence, Status> {
    if token.is_empty() || token.len() > 64 {
        return Err(Status::invalid_argument("lease_token: the token StartRun returned is required"));
    }
    Ok(Fence { attempt, token: Some(token) })
}

/// Largest final answer FinishRun records.
pub(crate) const MAX_RESULT: usize = 1 << 20;
/// Most steps one FinishRun records with the end.
pub(crate) const MAX_FINISH_STEPS: usize = 4;
/// Largest error text FinishRun records.
pub(crate) const MAX_ERROR: usize = 64 << 10;
/// Largest checkpointed step (an LLM response or a tool result, encoded).
pub(crate) const MAX_STEP: usize = 2 << 20;
