//! What the trust boundary costs: the CPU of admitting one call with a cached API key (the
//! permission table, the bearer lookup, the role check), and the latency of a real unary call to
//! the manager over loopback — plaintext without auth, plaintext with an API key, TLS with an API
//! key — as every RPC of a run (StartRun, Checkpoint, Heartbeat, FinishRun) pays it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_core::auth::{Principal, Role};
use nightshift_core::pb;
use nightshift_rpc::{
    Cached, ClientOptions, GrpcServer, Guard, Listener, ServerTls, StaticKeys, TlsOptions, WithStaticKeys,
};
use nightshift_testkit::tls::TestCa;

use crate::Scenario;
use crate::stats::Row;

#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Admissions timed per round (CPU per call = the round's CPU / this).
    #[arg(long, default_value_t = 2_000_000)]
    pub admissions: usize,
    /// Rounds of admissions.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Sequential unary calls timed per transport.
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
}

impl Default for SecurityArgs {
    fn default() -> Self {
        Self { admissions: 2_000_000, rounds: 5, calls: 2000 }
    }
}

/// Never verified remotely: the bench measures the cached path every call after the first takes.
struct Refuse;

#[async_trait::async_trait]
impl nightshift_rpc::Authenticator for Refuse {
    async fn authenticate(&self, _: &str) -> Result<Principal, nightshift_rpc::AuthFailure> {
        Err(nightshift_rpc::AuthFailure::Refused("unknown".into()))
    }
}

fn guard(key: &str) -> Guard {
    let keys = StaticKeys::new([(
        key.to_owned(),
        Principal { name: "bench".into(), role: Role::Operator, namespaces: nightshift_core::Namespaces::All },
    )]);
    Guard::Required(Arc::new(Cached::new(WithStaticKeys { keys, rest: Refuse }, nightshift_rpc::LOCAL_CACHE)))
}

pub async fn security(args: &SecurityArgs) -> anyhow::Result<Scenario> {
    let name = "security";
    let key = format!("nsk_{}_{}", "a1".repeat(6), "b2".repeat(32));
    let mut rows = Vec::new();

    // 1. Admission of a call with a cached key, CPU per call.
    let g = guard(&key);
    let path = "/nightshift.v1.ManagerService/GetAgent";
    nightshift_rpc::admit(&g, path, Some(&key)).await.map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut per_call_ns = Vec::new();
    for _ in 0..args.rounds {
        let cpu = crate::sys::cpu_time();
        for _ in 0..args.admissions {
            let admitted = nightshift_rpc::admit(&g, path, Some(&key)).await;
            std::hint::black_box(admitted.is_ok());
        }
        let spent = crate::sys::cpu_time().saturating_sub(cpu);
        per_call_ns.push(spent.as_nanos() as f64 / args.admissions as f64);
    }
    rows.push(Row::new(name, "admit a call, cached API key (CPU)", "ns", "round", &per_call_ns));

    // 2. Unary calls to a real manager (SQLite, one agent lookup that finds nothing).
    let dir = tempfile::tempdir()?;
    let store = nightshift_store::Store::connect(&format!("sqlite://{}", dir.path().join("b.db").display())).await?;
    let ca = TestCa::new("bench CA");
    let trust = ca.write_cert(&dir.path().join("ca.crt"));
    let cert = ca.issue(dir.path(), "manager", &["localhost"]);
    let tls = TlsOptions {
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        ..TlsOptions::default()
    };
    let variants: [(&str, bool, bool); 3] =
        [("plaintext, no auth", false, false), ("plaintext, API key", false, true), ("TLS, API key", true, true)];
    for (label, with_tls, with_auth) in variants {
        let tcp = GrpcServer::bind("127.0.0.1:0").await?;
        let port = tcp.local_addr()?.port();
        let server_tls = if with_tls { ServerTls::load(&tls)? } else { None };
        let listener =
            Listener::from(tcp).with_tls(server_tls).with_guard(if with_auth { guard(&key) } else { Guard::Open });
        let mut server = GrpcServer::new();
        let manager = nightshift_manager::ManagerService::new(store.clone(), Duration::from_secs(30));
        server.routes().add_service(manager.into_server());
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        let serving = tokio::spawn(server.serve(listener, async move { until.cancelled().await }));
        let client = ClientOptions {
            tls: TlsOptions { ca_file: trust.display().to_string(), ..TlsOptions::default() },
            api_key: if with_auth { key.clone() } else { String::new() },
            ..ClientOptions::default()
        };
        let endpoint = if with_tls { format!("https://localhost:{port}") } else { format!("http://127.0.0.1:{port}") };
        let channel = client.endpoint("endpoint", &endpoint)?.connect().await?;
        let mut c = pb::manager_service_client::ManagerServiceClient::new(client.wrap(channel));
        let request = || pb::GetAgentRequest { agent: Some(pb::AgentRef::by_name("none")) };
        let mut samples = Vec::with_capacity(args.calls);
        for i in 0..args.calls + 100 {
            let t = Instant::now();
            let code = c.get_agent(request()).await.err().map(|s| s.code());
            anyhow::ensure!(code == Some(tonic::Code::NotFound), "{label}: unexpected answer {code:?}");
            if i >= 100 {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        rows.push(Row::new(name, &format!("unary call, {label}"), "µs", "call", &samples));
        stop.cancel();
        let _ = serving.await;
    }
    Ok(Scenario {
        name: name.into(),
        params: serde_json::json!({"admissions": args.admissions, "rounds": args.rounds, "calls": args.calls}),
        rows,
        counters: serde_json::json!({}),
    })
}
