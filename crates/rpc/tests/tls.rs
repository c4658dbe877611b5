//! TLS on a real server and real clients: certificates made by a throw-away CA, the server's
//! files rewritten under it to prove it reloads them without a restart, and mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::path::Path;
use std::time::{Duration, Instant};

use nightshift_rpc::{ClientOptions, GrpcServer, TlsOptions};
use nightshift_testkit::tls::TestCa;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Serves health (only) with `tls` on an ephemeral port; returns the `https://` endpoint.
async fn serve(tls: &TlsOptions) -> String {
    let options = nightshift_rpc::ServerOptions {
        tls: tls.clone(),
        ..nightshift_rpc::ServerOptions::listening_on("127.0.0.1:0")
    };
    let listener = GrpcServer::listen(&options, nightshift_rpc::Guard::Open).await.expect("TLS listener");
    let endpoint = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    tokio::spawn(GrpcServer::new().serve(listener, std::future::pending()));
    endpoint
}

/// One health check over a fresh connection, as a client with `client` options.
async fn check(endpoint: &str, client: &ClientOptions) -> Result<i32, String> {
    let channel = client.endpoint("endpoint", endpoint).map_err(|e| e.to_string())?.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
        format!("{e}: {cause}")
    })?;
    let mut health = HealthClient::new(client.wrap(channel));
    let reply = health.check(HealthCheckRequest { service: String::new() }).await.map_err(|e| e.to_string())?;
    Ok(reply.into_inner().status)
}

fn trusting(ca: &Path) -> ClientOptions {
    ClientOptions {
        tls: TlsOptions { ca_file: ca.display().to_string(), ..TlsOptions::default() },
        ..ClientOptions::default()
    }
}

const SERVING: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_serves_trusting_clients_refuses_plaintext_and_reloads_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let old_trust = old_ca.write_cert(&dir.path().join("old-ca.crt"));
    let new_trust = new_ca.write_cert(&dir.path().join("new-ca.crt"));
    let cert = old_ca.issue(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let tls = TlsOptions {
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        ..TlsOptions::default()
    };
    let endpoint = serve(&tls).await;

    assert_eq!(check(&endpoint, &trusting(&old_trust)).await, Ok(SERVING));
    // A client that trusts another CA refuses the server.
    let refused = check(&endpoint, &trusting(&new_trust)).await.expect_err("an untrusted certificate was accepted");
    assert!(refused.contains("certificate") || refused.contains("Unknown"), "{refused}");
    // A plaintext client gets no gRPC answer from a TLS-only port.
    let plain = endpoint.replace("https://", "http://");
    let plaintext = check(&plain, &ClientOptions::default()).await;
    assert!(plaintext.is_err(), "a plaintext client was served: {plaintext:?}");

    // cert-manager renews the certificate (here from another CA, so that the switch is visible
    // to the client): new connections get the new one within a reload period, no restart.
    new_ca.issue(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check(&endpoint, &trusting(&new_trust)).await == Ok(SERVING) {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(check(&endpoint, &trusting(&old_trust)).await.is_err(), "the old certificate is still served");

    // A renewal that is not a valid pair yet (key and certificate from different issues) is
    // refused and the current certificate stays in force.
    std::fs::write(&cert.key_file, rcgen_key_pem()).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(check(&endpoint, &trusting(&new_trust)).await, Ok(SERVING));
}

/// A private key that belongs to no certificate.
fn rcgen_key_pem() -> String {
    let ca = TestCa::new("stray");
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.issue(dir.path(), "stray", &["stray"]);
    std::fs::read_to_string(issued.key_file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_callers_with_a_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("services CA");
    let trust = ca.write_cert(&dir.path().join("ca.crt"));
    let server = ca.issue(dir.path(), "server", &["localhost"]);
    let tls = TlsOptions {
        cert_file: server.cert_file.display().to_string(),
        key_file: server.key_file.display().to_string(),
        client_ca_file: trust.display().to_string(),
        ..TlsOptions::default()
    };
    let endpoint = serve(&tls).await;

    let anonymous = check(&endpoint, &trusting(&trust)).await;
    assert!(anonymous.is_err(), "a caller without a certificate was served: {anonymous:?}");

    let stranger_ca = TestCa::new("someone else");
    let stranger = stranger_ca.issue(dir.path(), "stranger", &["worker"]);
    let mut foreign = trusting(&trust);
    foreign.tls.cert_file = stranger.cert_file.display().to_string();
    foreign.tls.key_file = stranger.key_file.display().to_string();
    let refused = check(&endpoint, &foreign).await;
    assert!(refused.is_err(), "a certificate of another CA was admitted: {refused:?}");

    let worker = ca.issue(dir.path(), "worker", &["worker"]);
    let mut member = trusting(&trust);
    member.tls.cert_file = worker.cert_file.display().to_string();
    member.tls.key_file = worker.key_file.display().to_string();
    assert_eq!(check(&endpoint, &member).await, Ok(SERVING));
}

/// Scaled replicas share one certificate for a common name: a client that expects that name
/// (`server_name`) accepts it whatever host it dials, and one that does not, refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_server_name_stands_in_for_the_host_dialed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("services CA");
    let trust = ca.write_cert(&dir.path().join("ca.crt"));
    let shared = ca.issue(dir.path(), "shared", &["nightshift"]);
    let tls = TlsOptions {
        cert_file: shared.cert_file.display().to_string(),
        key_file: shared.key_file.display().to_string(),
        ..TlsOptions::default()
    };
    let endpoint = serve(&tls).await;
    let refused = check(&endpoint, &trusting(&trust)).await;
    assert!(refused.is_err(), "a certificate not naming localhost was accepted for it: {refused:?}");
    let mut expecting = trusting(&trust);
    expecting.tls.server_name = "nightshift".into();
    assert_eq!(check(&endpoint, &expecting).await, Ok(SERVING));
    expecting.tls.server_name = "other".into();
    assert!(check(&endpoint, &expecting).await.is_err(), "the expected name is checked, not ignored");
}

#[tokio::test]
async fn incomplete_tls_settings_are_refused_at_start() {
    let half = TlsOptions { cert_file: "/x.crt".into(), ..TlsOptions::default() };
    let options =
        nightshift_rpc::ServerOptions { tls: half, ..nightshift_rpc::ServerOptions::listening_on("127.0.0.1:0") };
    let err = GrpcServer::listen(&options, nightshift_rpc::Guard::Open)
        .await
        .err()
        .expect("half a TLS configuration was accepted");
    assert!(err.to_string().contains("go together"), "{err}");
    let missing = TlsOptions {
        cert_file: "/nonexistent.crt".into(),
        key_file: "/nonexistent.key".into(),
        ..TlsOptions::default()
    };
    let options =
        nightshift_rpc::ServerOptions { tls: missing, ..nightshift_rpc::ServerOptions::listening_on("127.0.0.1:0") };
    let err =
        GrpcServer::listen(&options, nightshift_rpc::Guard::Open).await.err().expect("missing files were accepted");
    assert!(err.to_string().contains("/nonexistent.crt"), "{err}");
}
