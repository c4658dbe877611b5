//! The memory service role: options → [`MemoryRole`], mounted by the `nightshift-memory` binary
//! and by `nightshift dev` alike.
use nightshift_rpc::{GrpcServer, Role};

use crate::{MemoryConfig, MemoryError, MemoryService, SERVICE_NAME};

/// The built memory role, on the stores, index, embedder and summarizer its options name.
pub struct MemoryRole {
    service: MemoryService,
}

impl MemoryRole {
    /// Opens every configured store (a missing or unreachable one is an error, never a silent
    /// fall back to memory), the vector index and the models.
    pub async fn build(config: &MemoryConfig) -> Result<Self, MemoryError> {
        Ok(Self { service: MemoryService::from_config(config).await? })
    }

    /// Checks callers' memory access with `authority` ([`MemoryService::with_authority`]).
    pub fn with_authority(mut self, authority: Option<std::sync::Arc<dyn nightshift_rpc::MemoryAuthority>>) -> Self {
        self.service = self.service.with_authority(authority);
        self
    }
}

#[async_trait::async_trait]
impl Role for MemoryRole {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.routes().add_service(self.service.clone().into_server());
        server.serving(SERVICE_NAME);
    }
}
