//! What the operator lets agents make workers do, checked when an agent is applied so that its
//! author gets INVALID_ARGUMENT naming the field, instead of a run that fails at 3 a.m. The
//! workers check the same `[allow]` policy again before each attempt and at every connection.
use nightshift_core::AgentSpec;
use nightshift_core::operator_policy::OperatorPolicy;
use nightshift_core::spec::McpTransport;
use nightshift_egress::{Egress, EgressError};
use tonic::Status;

/// The `[worker_allow]` policy and the egress check built from it.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    policy: OperatorPolicy,
    egress: Egress,
}

impl Admission {
    pub(crate) fn new(policy: OperatorPolicy) -> Self {
        Self { egress: Egress::new(policy.clone()), policy }
    }

    /// Refuses a spec that asks for a program, a secret or an address the policy does not allow.
    pub(crate) async fn check(&self, spec: &AgentSpec) -> Result<(), Status> {
        let mut refusals: Vec<String> = self.policy.refusals(spec).iter().map(ToString::to_string).collect();
        let mut urls: Vec<(String, &str)> = Vec::new();
        if let Some(base) = &spec.model.base_url {
            urls.push(("model.base_url".into(), base));
        }
        for (i, server) in spec.tools.mcp.iter().enumerate() {
            if let McpTransport::Http { url, .. } = &server.transport {
                urls.push((format!("tools.mcp[{i}].url"), url));
            }
        }
        for (field, url) in urls {
            match self.egress.check_url(url).await {
                // A name that does not resolve here may resolve on the workers (split DNS); they
                // check every connection anyway.
                Ok(()) | Err(EgressError::Resolve { .. }) => {}
                Err(e) => refusals.push(format!("{field}: {e}")),
            }
        }
        if refusals.is_empty() {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "not allowed by this deployment's worker policy: {}",
            refusals.join("; ")
        )))
    }
}
