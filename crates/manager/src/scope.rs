//! Confining manager calls to the caller's namespaces: which agent a reference names, whether
//! the caller may see it, and what a list call may return. An agent or run outside the caller's
//! namespaces is NOT_FOUND when named by id (its existence is not revealed); naming a namespace
//! the caller does not hold is PERMISSION_DENIED.
use nightshift_core::namespace::Visible;
use nightshift_core::{AgentId, Namespace, Namespaces, RunId, pb};
use nightshift_rpc::visible_namespaces;
use nightshift_store::{AgentRecord, RunRecord};
use tonic::Status;

use crate::error::{invalid, status_from_store};
use crate::service::ManagerService;

pub(crate) use nightshift_rpc::caller_namespaces as caller;

/// PERMISSION_DENIED unless the caller holds `ns`.
pub(crate) fn require(scope: &Namespaces, ns: &Namespace) -> Result<(), Status> {
    visible_namespaces(scope, std::slice::from_ref(ns)).map(|_| ())
}

/// The namespaces a list call may return: `requested` ("" = all the caller holds); `None` =
/// no filter.
pub(crate) fn visible(scope: &Namespaces, requested: &str) -> Result<Option<Vec<Namespace>>, Status> {
    let requested = if requested.is_empty() {
        Vec::new()
    } else {
        vec![Namespace::parse("namespace", requested).map_err(invalid)?]
    };
    match visible_namespaces(scope, &requested)? {
        Visible::All => Ok(None),
        Visible::Only(list) => Ok(Some(list)),
    }
}

impl ManagerService {
    /// The agent `r` names, if the caller may see it.
    pub(crate) async fn resolve(&self, scope: &Namespaces, r: Option<&pb::AgentRef>) -> Result<AgentRecord, Status> {
        use pb::agent_ref::Ref;
        let r = r.ok_or_else(|| Status::invalid_argument("agent: set id or name"))?;
        let (found, label) = match &r.r#ref {
            Some(Ref::Id(id)) => {
                let id = AgentId::parse("agent.id", id).map_err(invalid)?;
                let found = self.store().get_agent(&id).await.map_err(status_from_store)?;
                (found.filter(|a| scope.contains(&a.spec.namespace)), format!("agent with id {id}"))
            }
            Some(Ref::Name(name)) => {
                if name.is_empty() {
                    return Err(Status::invalid_argument("agent.name: is required"));
                }
                let ns = Namespace::parse_or_default("agent.namespace", &r.namespace).map_err(invalid)?;
                require(scope, &ns)?;
                let found = self.store().get_agent_by_name(&ns, name).await.map_err(status_from_store)?;
                (found, format!("agent '{name}' in namespace {ns}"))
            }
            None => return Err(Status::invalid_argument("agent: set id or name")),
        };
        found.ok_or_else(|| Status::not_found(format!("{label} not found")))
    }

    /// The run `id`, if the caller may see it.
    pub(crate) async fn visible_run(&self, scope: &Namespaces, id: &RunId) -> Result<RunRecord, Status> {
        let run = self.store().get_run(id).await.map_err(status_from_store)?;
        run.filter(|r| scope.contains(&r.namespace)).ok_or_else(|| Status::not_found(format!("run {id} not found")))
    }
}
