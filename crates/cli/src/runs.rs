//! `nightshift runs ...`
use nightshift_core::{RunStatus, pb};

use crate::Server;
use crate::args::{Output, RunsCommand};
use crate::output::{self, RunView};
use crate::replay::ReplayArgs;

pub(crate) async fn run(server: &Server, out: Output, cmd: RunsCommand) -> anyhow::Result<()> {
    let mut client = server.manager().await?;
    match cmd {
        RunsCommand::List { agent, status, limit } => {
            let statuses = status
                .iter()
                .map(|s| s.parse::<RunStatus>().map(|s| s.to_pb() as i32).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let agent = agent.and_then(|n| server.agent(n));
            let resp = client
                .list_runs(pb::ListRunsRequest {
                    agent,
                    statuses,
                    page_size: limit.clamp(1, 1000),
                    page_token: String::new(),
                    namespace: server.namespace().to_owned(),
                })
                .await?
                .into_inner();
            let runs: Vec<RunView> = resp.runs.iter().map(RunView::from_pb).collect();
            output::print(out, &runs, |r| output::runs_table(r))?;
        }
        RunsCommand::Get { id } => {
            let r = client.get_run(pb::GetRunRequest { run_id: id }).await?.into_inner();
            output::print(out, &RunView::from_pb(&r.run.unwrap_or_default()), output::run_table)?;
        }
        RunsCommand::Watch { id, cursor } => crate::watch::watch(server, out, id, cursor).await?,
        RunsCommand::Replay { id, from_step, agent_version, model, tools, live_reads, store_memory, watch } => {
            let args = ReplayArgs { id, from_step, agent_version, model, tools, live_reads, store_memory, watch };
            crate::replay::replay(server, out, args).await?
        }
        RunsCommand::Diff { a: Some(a), b: Some(b), .. } => crate::replay::diff(server, out, a, b).await?,
        RunsCommand::Diff { agent: Some(agent), last: Some(last), agent_version, model, .. } => {
            crate::replay::diff_last(server, out, &agent, last, agent_version, model).await?
        }
        RunsCommand::Diff { .. } => anyhow::bail!("runs diff: give two runs, or --agent and --last"),
        RunsCommand::Cancel { id, reason } => {
            let r = client
                .cancel_run(pb::CancelRunRequest { run_id: id, reason: reason.unwrap_or_default() })
                .await?
                .into_inner();
            output::print(out, &RunView::from_pb(&r.run.unwrap_or_default()), |r| {
                output::runs_table(std::slice::from_ref(r))
            })?;
        }
    }
    Ok(())
}
