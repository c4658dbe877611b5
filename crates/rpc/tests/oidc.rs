//! OIDC / JWT bearer tokens with real signatures: an ES256 key made for the test signs tokens,
//! its public half is published as a JWKS file, and the verifier checks signature, issuer,
//! audience, expiry and the role claim — through the same `admit` every server call passes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nightshift_core::auth::Role;
use nightshift_rpc::{Authenticator, Guard, Oidc, OidcOptions};
use serde_json::json;

fn signing_key() -> EncodingKey {
    EncodingKey::from_ec_der(&rcgen::KeyPair::generate().unwrap().serialize_der())
}

fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn tokens_are_verified_against_the_jwks_and_mapped_to_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap()).unwrap();
    let options = OidcOptions {
        issuer: "https://idp.example".into(),
        audience: "nightshift".into(),
        jwks: jwks.display().to_string(),
        ..OidcOptions::default()
    };
    let oidc = Oidc::new(&options).unwrap().unwrap();
    let claims = |role: serde_json::Value| json!({"iss": "https://idp.example", "aud": "nightshift", "sub": "alice", "exp": now() + 300, "nightshift_role": role});

    let ok = oidc.authenticate(&token(&key, "k1", claims(json!("viewer")))).await.unwrap();
    assert_eq!((ok.name.as_str(), ok.role), ("oidc:alice", Role::Viewer));
    let from_list = oidc.authenticate(&token(&key, "k1", claims(json!(["staff", "operator"])))).await.unwrap();
    assert_eq!(from_list.role, Role::Operator, "the first known role of an array claim");

    let mut refused = Vec::new();
    let mut expired = claims(json!("admin"));
    expired["exp"] = json!(now() - 600);
    refused.push(("expired", token(&key, "k1", expired)));
    let mut other_aud = claims(json!("admin"));
    other_aud["aud"] = json!("someone-else");
    refused.push(("another audience", token(&key, "k1", other_aud)));
    let mut other_iss = claims(json!("admin"));
    other_iss["iss"] = json!("https://evil.example");
    refused.push(("another issuer", token(&key, "k1", other_iss)));
    refused.push(("unknown role", token(&key, "k1", claims(json!("root")))));
    refused.push(("signed by another key under the same kid", token(&signing_key(), "k1", claims(json!("admin")))));
    refused.push(("unknown kid", token(&key, "k9", claims(json!("admin")))));
    for (what, t) in refused {
        let err = oidc.authenticate(&t).await.expect_err(what);
        assert!(matches!(err, nightshift_rpc::AuthFailure::Refused(_)), "{what}: {err:?}");
    }

    // Through the server's admission: a viewer's token reads and cannot write.
    let guard = Guard::Required(Arc::new(oidc));
    let viewer = token(&key, "k1", claims(json!("viewer")));
    nightshift_rpc::admit(&guard, "/nightshift.v1.ManagerService/ListAgents", Some(&viewer)).await.unwrap();
    let denied = nightshift_rpc::admit(&guard, "/nightshift.v1.ManagerService/ApplyAgent", Some(&viewer)).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[test]
fn an_incomplete_oidc_section_is_refused() {
    let half = OidcOptions { issuer: "https://idp.example".into(), ..OidcOptions::default() };
    assert!(Oidc::new(&half).is_err());
    assert!(Oidc::new(&OidcOptions::default()).unwrap().is_none(), "no issuer: tokens are off");
}
