//! What watching a run costs and how fast it is: the manager as `nightshift dev` serves it
//! (in-process, SQLite, gRPC on loopback), one running run whose worker (this harness) checkpoints
//! a step every `--every-ms`, and 0, 1 or 10 `WatchRun` streams on it. Reported: the worker's
//! `Checkpoint` call latency (what a watcher costs the run) with each number of watchers, and the
//! delivery latency from the start of the `Checkpoint` call to each watcher receiving that step.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nightshift_core::{AgentManifest, RunId, pb};
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_rpc::{AuthMode, GrpcServer, Listener, Role, ServerOptions, serve_roles};
use nightshift_store::{NewRun, Store};
use pb::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

use crate::Scenario;
use crate::stats::Row;

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Steps checkpointed per configuration.
    #[arg(long, default_value_t = 300)]
    pub steps: u32,
    /// Time between two checkpoints (a fast agent: one step every few milliseconds).
    #[arg(long, default_value_t = 10)]
    pub every_ms: u64,
}

impl Default for WatchArgs {
    fn default() -> Self {
        Self { steps: 300, every_ms: 10 }
    }
}

/// When each step reached each watcher.
type Arrivals = Arc<Mutex<Vec<HashMap<u32, Instant>>>>;

/// One run, checkpointed `steps` times with `watchers` streams on it: the Checkpoint latencies,
/// and every (watcher, step) delivery latency.
async fn one(
    m: &ManagerServiceClient<Channel>,
    store: &Store,
    agent: &nightshift_core::AgentId,
    watchers: usize,
    args: &WatchArgs,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let run = NewRun::manual(RunId::generate(), agent.clone());
    store.insert_run(&run).await?;
    let mut m = m.clone();
    let start = pb::StartRunRequest {
        run_id: run.id.to_string(),
        agent_id: agent.to_string(),
        worker_id: "bench-worker".into(),
        lease_ttl: Some(nightshift_core::duration::to_pb(Duration::from_secs(600))),
        ..Default::default()
    };
    let started = m.start_run(start).await?.into_inner();
    anyhow::ensure!(
        started.decision() == pb::StartDecision::Started,
        "the run did not start: {:?}",
        started.decision()
    );
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![HashMap::new(); watchers]));
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut stream =
            m.watch_run(pb::WatchRunRequest { run_id: run.id.to_string(), cursor: String::new() }).await?.into_inner();
        // Its first item (the run's state) says it is following.
        stream.message().await?;
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(item)) = stream.message().await {
                if let Some(pb::watch_run_response::Item::Step(s)) = item.item {
                    let at = Instant::now();
                    arrivals.lock().map(|mut a| a[w].insert(s.seq, at)).ok();
                }
            }
        }));
    }
    let mut calls = Vec::with_capacity(args.steps as usize);
    let mut sent = Vec::with_capacity(args.steps as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(args.every_ms));
    for seq in 0..args.steps {
        tick.tick().await;
        let step = pb::RunStep {
            seq,
            payload: Some(pb::run_step::Payload::ToolResult(pb::ToolResult {
                call_id: format!("c{seq}"),
                tool_name: "get_system_info".into(),
                output: "cpu 3%, memory 41%".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let req = pb::CheckpointRequest {
            run_id: run.id.to_string(),
            attempt: started.run.as_ref().map_or(1, |r| r.attempt),
            lease_token: started.lease_token.clone(),
            step: Some(step),
            lease_ttl: None,
        };
        let t = Instant::now();
        m.checkpoint(req).await?;
        calls.push(t.elapsed().as_secs_f64() * 1e3);
        sent.push(t);
    }
    // The last steps reach the watchers within a poll; then the run ends (the agent's overlap
    // policy would skip the next one while it runs), which ends the streams.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = pb::FinishRunRequest {
        run_id: run.id.to_string(),
        attempt: started.run.as_ref().map_or(1, |r| r.attempt),
        lease_token: started.lease_token.clone(),
        outcome: pb::RunOutcome::Succeeded as i32,
        result: "done".into(),
        ..Default::default()
    };
    m.finish_run(end).await?;
    for t in tasks {
        t.await?;
    }
    let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("a watcher panicked"))?;
    let mut delivery = Vec::new();
    for (w, got) in arrivals.iter().enumerate() {
        anyhow::ensure!(got.len() == args.steps as usize, "watcher {w} got {} of {} steps", got.len(), args.steps);
        for (seq, at) in got {
            delivery.push(at.saturating_duration_since(sent[*seq as usize]).as_secs_f64() * 1e3);
        }
    }
    Ok((calls, delivery))
}

pub async fn watch(args: &WatchArgs) -> anyhow::Result<Scenario> {
    let name = format!("watch (a step every {} ms, {} steps)", args.every_ms, args.steps);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("watch.db").display());
    let store = Store::connect(&url).await?;
    let spec = AgentManifest::from_yaml(
        "name: watched\nmodel: {provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n\
         task: {query: q}\nschedule: {manual: true}",
    )
    .and_then(|m| m.validate())
    .map_err(anyhow::Error::msg)?;
    let (agent, _) = store.apply_agent(&spec).await?;

    let tcp = GrpcServer::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", tcp.local_addr()?);
    let mut server = ServerOptions::listening_on("127.0.0.1:0");
    server.auth.mode = AuthMode::Off;
    let manager = ManagerRole::build(
        ManagerConfig { server, database_url: url, ..ManagerConfig::default() },
        ManagerDeps { store: store.clone(), observer: None },
    )
    .await?;
    let listener = Listener::from(tcp).with_guard(manager.guard());
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(manager)];
    let serving = tokio::spawn(serve_roles(roles, listener, async move { until.cancelled().await }));
    let m = ManagerServiceClient::connect(endpoint).await?;

    let mut rows = Vec::new();
    // A first round warms the connection and the database.
    one(&m, &store, &agent.id, 1, &WatchArgs { steps: 20, every_ms: args.every_ms }).await?;
    for watchers in [0, 1, 10] {
        let (calls, delivery) = one(&m, &store, &agent.id, watchers, args).await?;
        rows.push(Row::new(&name, &format!("Checkpoint call, {watchers} watchers"), "ms", "call", &calls));
        if watchers > 0 {
            let metric = format!("step → watcher (from the Checkpoint call), {watchers} watchers");
            rows.push(Row::new(&name, &metric, "ms", "delivery", &delivery));
        }
    }
    stop.cancel();
    serving.await??;
    Ok(Scenario {
        name,
        params: serde_json::json!({"steps": args.steps, "every_ms": args.every_ms}),
        rows,
        counters: serde_json::json!({}),
    })
}
