//! What the console's pages cost with many agents: the agents list (its first page, a page deep
//! in the list, a name search) and an agent's page, each rendered by the console from the
//! manager's gRPC API, on one port as `nightshift dev` serves them (SQLite, no authentication).
//! Latency is measured at an HTTP client on loopback, one request at a time: what a user waits
//! for, server side (the browser's own rendering is not counted).
use std::time::Instant;

use nightshift_console::{ConsoleConfig, ConsoleRole};
use nightshift_core::{AgentManifest, RunId};
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_rpc::{AuthMode, GrpcServer, Listener, Role, ServerOptions, serve_roles};
use nightshift_store::{NewRun, Store};

use crate::Scenario;
use crate::stats::Row;

#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Agents in the registry.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Runs recorded per agent (each agent's page and status read them).
    #[arg(long, default_value_t = 10)]
    pub runs_per_agent: usize,
    /// Requests timed per page.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
}

impl Default for ConsoleArgs {
    fn default() -> Self {
        Self { agents: 10_000, runs_per_agent: 10, requests: 300 }
    }
}

fn manifest(i: usize) -> String {
    format!(
        "name: agent-{i:05}\nlabels: {{team: t{}}}\nmodel: {{provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}}\n\
         task: {{query: 'report {i}'}}\nschedule: {{interval: 1h}}",
        i % 10
    )
}

pub async fn console(args: &ConsoleArgs) -> anyhow::Result<Scenario> {
    let name = format!("console ({} agents, {} runs each)", args.agents, args.runs_per_agent);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    let store = Store::connect(&url).await?;
    let filling = Instant::now();
    for i in 0..args.agents {
        let spec = AgentManifest::from_yaml(&manifest(i)).and_then(|m| m.validate()).map_err(anyhow::Error::msg)?;
        let (rec, _) = store.apply_agent(&spec).await?;
        for r in 0..args.runs_per_agent {
            let run = NewRun::manual(RunId::for_tick(&rec.id, r as i64 * 3_600_000), rec.id.clone());
            store.insert_run(&run).await?;
        }
    }
    eprintln!("console: {} agents and their runs recorded in {:.1?}", args.agents, filling.elapsed());

    let tcp = GrpcServer::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", tcp.local_addr()?);
    let mut server = ServerOptions::listening_on("127.0.0.1:0");
    server.auth.mode = AuthMode::Off;
    let manager = ManagerRole::build(
        ManagerConfig { server: server.clone(), database_url: url, ..ManagerConfig::default() },
        ManagerDeps { store: store.clone(), observer: None },
    )
    .await?;
    let console = ConsoleRole::build(&ConsoleConfig {
        server,
        manager_endpoint: endpoint.clone(),
        events_endpoint: endpoint.clone(),
        ..ConsoleConfig::default()
    })?;
    let listener = Listener::from(tcp).with_guard(manager.guard());
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(manager), Box::new(console)];
    let serving = tokio::spawn(serve_roles(roles, listener, async move { until.cancelled().await }));

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    // The first request opens the session (no sign-in without authentication): its cookie goes with the rest.
    let first = http.get(format!("{endpoint}/agents")).send().await?;
    let cookie = first
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the console set no session cookie"))?
        .to_owned();
    let deep = format!("agent-{:05}", args.agents / 2);
    let one = format!("agent-{:05}", args.agents.saturating_sub(1).min(4242));
    let pages = [
        ("agents list, first page", "/agents".to_owned(), "agent-00000".to_owned()),
        (
            "agents list, a page in the middle",
            format!("/agents?page=default%2F{deep}"),
            format!("agent-{:05}", args.agents / 2 + 1),
        ),
        ("agents list, name search", format!("/agents?q={}", &one[..one.len() - 1]), one.clone()),
        ("an agent's page", format!("/agents/default/{one}"), "Recent runs".to_owned()),
    ];
    let mut rows = Vec::new();
    for (label, path, expect) in pages {
        let mut samples = Vec::with_capacity(args.requests);
        for i in 0..args.requests + 20 {
            let t = Instant::now();
            let res = http.get(format!("{endpoint}{path}")).header("cookie", &cookie).send().await?;
            let status = res.status();
            let body = res.text().await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(status == 200 && body.contains(&expect), "{path}: {status}, expected {expect} in the page");
            if i >= 20 {
                samples.push(ms);
            }
        }
        rows.push(Row::new(&name, label, "ms", "request", &samples));
    }
    stop.cancel();
    serving.await??;
    Ok(Scenario {
        name,
        params: serde_json::json!({"agents": args.agents, "runs_per_agent": args.runs_per_agent, "requests": args.requests}),
        rows,
        counters: serde_json::json!({}),
    })
}
