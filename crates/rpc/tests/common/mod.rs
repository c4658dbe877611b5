//! What the server tests share: a stand-in for a guarded service and the keys that may call it.
use std::convert::Infallible;
use std::sync::Arc;

use nightshift_core::Namespaces;
use nightshift_core::auth::{Principal, Role};
use nightshift_rpc::{Guard, StaticKeys, WithStaticKeys};
use tonic::codegen::http;
use tonic::server::NamedService;

/// Stands in for the manager: answers every call with `reached` (and grpc-status 0), so that a
/// caller can tell it got through the auth layer.
#[derive(Clone)]
pub struct FakeManager;

impl NamedService for FakeManager {
    const NAME: &'static str = "nightshift.v1.ManagerService";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for FakeManager {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let res =
            http::Response::builder().header("grpc-status", "0").body(tonic::body::Body::new("reached".to_owned()));
        std::future::ready(Ok(res.expect("a valid response")))
    }
}

/// Knows no credential but the static keys.
struct Nobody;

#[async_trait::async_trait]
impl nightshift_rpc::Authenticator for Nobody {
    async fn authenticate(&self, _: &str) -> Result<Principal, nightshift_rpc::AuthFailure> {
        Err(nightshift_rpc::AuthFailure::Refused("unknown".into()))
    }
}

/// Admits `admin-key` (an admin) and `viewer-key` (a viewer), nobody else.
pub fn admin_and_viewer() -> Guard {
    let keys = StaticKeys::new([
        ("admin-key".to_owned(), Principal { name: "a".into(), role: Role::Admin, namespaces: Namespaces::All }),
        ("viewer-key".to_owned(), Principal { name: "v".into(), role: Role::Viewer, namespaces: Namespaces::All }),
    ]);
    Guard::Required(Arc::new(WithStaticKeys { keys, rest: Nobody }))
}
