//! `AuthService` on the manager (which owns the database): API keys, and verification of the
//! credentials callers present to the services that have no database.
use std::sync::Arc;

use nightshift_core::auth::{Principal, Role, check_namespaces, default_namespaces};
use nightshift_core::namespace::fixed_session;
use nightshift_core::{AgentId, AgentSpec, Namespaces, RunId, SessionScope, pb, time};
use nightshift_rpc::{AuthFailure, Authenticator, MAX_CREDENTIAL};
use nightshift_store::{ApiKeyRecord, Store, status_from_store};
use tonic::{Request, Response, Status};

/// The full gRPC name of the service.
pub const AUTH_SERVICE_NAME: &str = "nightshift.v1.AuthService";

/// Verifies API keys against the store.
#[derive(Clone)]
pub struct StoreKeys(pub Store);

#[async_trait::async_trait]
impl Authenticator for StoreKeys {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        match self.0.verify_api_key(credential).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(refused)) => Err(AuthFailure::Refused(refused.to_string())),
            Err(e) => Err(AuthFailure::Unavailable(e.to_string())),
        }
    }
}

/// The manager vouches for memory access in its own process (`nightshift dev`) directly.
#[async_trait::async_trait]
impl nightshift_rpc::MemoryAuthority for AuthApi {
    async fn authorize(&self, request: pb::AuthorizeMemoryRequest) -> Result<pb::AuthorizeMemoryResponse, Status> {
        use pb::auth_service_server::AuthService;
        self.authorize_memory(Request::new(request)).await.map(Response::into_inner)
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct AuthApi {
    store: Store,
    /// The process's own verifier (static keys, cache, store), for VerifyCredential.
    verifier: Arc<dyn Authenticator>,
}

impl AuthApi {
    /// Keys in `store`; credentials verified by `verifier`.
    pub fn new(store: Store, verifier: Arc<dyn Authenticator>) -> Self {
        Self { store, verifier }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::auth_service_server::AuthServiceServer<Self> {
        pb::auth_service_server::AuthServiceServer::new(self).max_decoding_message_size(64 << 10)
    }
}

fn key_to_pb(k: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        role: k.role.to_string(),
        created_at: Some(time::to_pb(k.created_at)),
        expires_at: k.expires_at.map(time::to_pb),
        revoked_at: k.revoked_at.map(time::to_pb),
        created_by: k.created_by.clone(),
        namespaces: k.namespaces.to_strings(),
    }
}

fn caller<T>(req: &Request<T>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::unauthenticated)
}

fn principal_to_pb(p: &Principal) -> pb::Principal {
    pb::Principal { name: p.name.clone(), role: p.role.to_string(), namespaces: p.namespaces.to_strings() }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let by = caller(&req).name;
        let r = req.into_inner();
        let role: Role = r.role.parse().map_err(|e: String| Status::invalid_argument(format!("role: {e}")))?;
        let namespaces = if r.namespaces.is_empty() {
            default_namespaces(role)
        } else {
            Namespaces::parse("namespaces", &r.namespaces).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        check_namespaces(role, &namespaces).map_err(|e| Status::invalid_argument(format!("namespaces: {e}")))?;
        let ttl = (r.ttl_seconds > 0).then(|| std::time::Duration::from_secs(r.ttl_seconds.min(10 * 365 * 86_400)));
        let (key, secret) =
            self.store.create_api_key(&r.name, role, &namespaces, ttl, &by).await.map_err(status_from_store)?;
        tracing::info!(target: "nightshift::audit", key = %key.id, name = %key.name, role = %key.role,
            namespaces = %key.namespaces, by = %by, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse { key: Some(key_to_pb(&key)), secret }))
    }

    async fn list_api_keys(
        &self,
        _req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let keys = self.store.list_api_keys().await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListApiKeysResponse { keys: keys.iter().map(key_to_pb).collect() }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let by = caller(&req).name;
        let id = req.into_inner().id;
        let key = self.store.revoke_api_key(&id).await.map_err(status_from_store)?;
        tracing::info!(target: "nightshift::audit", key = %key.id, by = %by, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse { key: Some(key_to_pb(&key)) }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        Ok(Response::new(pb::WhoAmIResponse { principal: Some(principal_to_pb(&caller(&req))) }))
    }

    async fn verify_credential(
        &self,
        req: Request<pb::VerifyCredentialRequest>,
    ) -> Result<Response<pb::VerifyCredentialResponse>, Status> {
        let credential = req.into_inner().credential;
        if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
            return Err(Status::unauthenticated("invalid credential"));
        }
        match self.verifier.authenticate(&credential).await {
            Ok(p) => Ok(Response::new(pb::VerifyCredentialResponse { principal: Some(principal_to_pb(&p)) })),
            Err(AuthFailure::Refused(_)) => Err(Status::unauthenticated("invalid credential")),
            Err(AuthFailure::Unavailable(why)) => Err(Status::unavailable(why)),
        }
    }

    async fn authorize_memory(
        &self,
        req: Request<pb::AuthorizeMemoryRequest>,
    ) -> Result<Response<pb::AuthorizeMemoryResponse>, Status> {
        let r = req.into_inner();
        let spec_of = |found: Option<AgentSpec>| found.ok_or_else(|| Status::not_found("agent not found"));
        let (agent_id, spec) = if r.run_id.is_empty() {
            let id = AgentId::parse("agent_id", &r.agent_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let agent = self.store.get_agent(&id).await.map_err(status_from_store)?;
            (id, spec_of(agent.map(|a| a.spec))?)
        } else {
            let run = RunId::parse("run_id", &r.run_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if r.lease_token.is_empty() || r.lease_token.len() > 64 {
                return Err(Status::invalid_argument("lease_token: the token StartRun returned is required"));
            }
            let held = self.store.held_run_agent(&run, &r.lease_token).await.map_err(status_from_store)?;
            let (id, version) =
                held.ok_or_else(|| Status::permission_denied(format!("run {run} is not held with this lease")))?;
            let spec = self.store.get_agent_version(&id, version).await.map_err(status_from_store)?;
            (id, spec)
        };
        let fixed_session = match &spec.memory.session {
            SessionScope::Fixed(id) => fixed_session(&spec.namespace, id),
            _ => String::new(),
        };
        Ok(Response::new(pb::AuthorizeMemoryResponse {
            agent_id: agent_id.to_string(),
            namespace: spec.namespace.to_string(),
            fixed_session,
        }))
    }
}
