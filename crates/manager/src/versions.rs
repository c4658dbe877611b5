//! ListAgentVersions: an agent's spec history, newest first, one page at a time.
use nightshift_core::{pb, time};
use tonic::{Request, Response, Status};

use crate::error::status_from_store;
use crate::scope;
use crate::service::ManagerService;

/// Versions on a page unless the caller asks for another size.
const DEFAULT_PAGE: u32 = 20;
/// The most versions on one page.
const MAX_PAGE: u32 = 100;

impl ManagerService {
    pub(crate) async fn agent_versions(
        &self,
        req: Request<pb::ListAgentVersionsRequest>,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        let rec = self.resolve(&scope::caller(&req), req.get_ref().agent.as_ref()).await?;
        let req = req.into_inner();
        let limit = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => return Err(Status::invalid_argument(format!("page_size: at most {MAX_PAGE} (got {n})"))),
        };
        let before = (req.before_version > 0).then_some(req.before_version);
        let versions = self.store().list_agent_versions(&rec.id, before, limit).await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListAgentVersionsResponse {
            versions: versions
                .iter()
                .map(|v| pb::AgentVersion {
                    version: v.version,
                    created_at: Some(time::to_pb(v.created_at)),
                    spec: Some(v.spec.to_proto()),
                })
                .collect(),
        }))
    }
}
