//! Who vouches for memory access. The memory service has no database: what a caller may touch
//! (the agent of the run a worker holds, an agent in an operator's namespaces) is answered by
//! the manager's `AuthService.AuthorizeMemory`, in process or over gRPC.
use nightshift_proto::v1 as pb;
use tonic::Status;

use crate::client::CallChannel;

/// The request header naming the run a worker's memory call is for.
pub const RUN_HEADER: &str = "x-nightshift-run-id";
/// The request header carrying the lease token StartRun gave the worker for that run.
pub const LEASE_HEADER: &str = "x-nightshift-lease-token";

/// Answers `AuthorizeMemory`.
#[async_trait::async_trait]
pub trait MemoryAuthority: Send + Sync + 'static {
    /// What memory the caller described by `request` may touch.
    async fn authorize(&self, request: pb::AuthorizeMemoryRequest) -> Result<pb::AuthorizeMemoryResponse, Status>;
}

/// The manager's AuthService over gRPC.
pub struct RemoteMemoryAuthority {
    client: pb::auth_service_client::AuthServiceClient<CallChannel>,
}

impl RemoteMemoryAuthority {
    /// Asks the AuthService on `channel` (the manager's, with this process's credential).
    pub fn new(channel: CallChannel) -> Self {
        Self { client: pb::auth_service_client::AuthServiceClient::new(channel) }
    }
}

#[async_trait::async_trait]
impl MemoryAuthority for RemoteMemoryAuthority {
    async fn authorize(&self, request: pb::AuthorizeMemoryRequest) -> Result<pb::AuthorizeMemoryResponse, Status> {
        self.client.clone().authorize_memory(request).await.map(tonic::Response::into_inner)
    }
}
