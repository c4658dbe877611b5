//! `AuthService` on the manager (which owns the database): API keys, and verification of the
//! credentials callers present to the services that have no database.
use std::sync::Arc;

use nightshift_core::auth::{Principal, Role};
use nightshift_core::{pb, time};
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
    }
}

fn caller<T>(req: &Request<T>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::unauthenticated)
}

fn principal_to_pb(p: &Principal) -> pb::Principal {
    pb::Principal { name: p.name.clone(), role: p.role.to_string() }
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
        let ttl = (r.ttl_seconds > 0).then(|| std::time::Duration::from_secs(r.ttl_seconds.min(10 * 365 * 86_400)));
        let (key, secret) = self.store.create_api_key(&r.name, role, ttl, &by).await.map_err(status_from_store)?;
        tracing::info!(target: "nightshift::audit", key = %key.id, name = %key.name, role = %key.role, by = %by, "API key created");
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
}
