//! `nightshift events tail`
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context;
use nightshift_core::{EventType, pb, time};
use nightshift_events_client::{EventFilter, TailFrom, TailOptions, event_to_json, tail};

use crate::Server;
use crate::args::{EventsCommand, Output};

pub(crate) async fn run(server: &Server, out: Output, cmd: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Tail { agent, run, types, from, since, follow } = cmd;
    // Agent names are resolved to ids at the manager (events carry agent ids).
    let mut agent_ids = Vec::new();
    if !agent.is_empty() {
        let mut manager = server.manager().await?;
        for name in agent {
            let a = manager.get_agent(pb::GetAgentRequest { agent: server.agent(name) }).await?.into_inner();
            agent_ids.push(a.agent.unwrap_or_default().id);
        }
    }
    let types = types
        .iter()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| anyhow::anyhow!("unknown event type '{t}' (e.g. BACKGROUND_TASK_ERROR)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let from = match (from, since) {
        (Some(c), _) => TailFrom::After(c),
        (None, Some(s)) => TailFrom::Since(time::parse_rfc3339(&s).map_err(anyhow::Error::msg).context("--since")?),
        (None, None) if follow => TailFrom::Now,
        (None, None) => TailFrom::Beginning,
    };
    let mut client = pb::event_service_client::EventServiceClient::new(server.channel().await?);
    let namespaces = [server.namespace()].into_iter().filter(|n| !n.is_empty()).map(str::to_owned).collect();
    let options = TailOptions { filter: EventFilter { agent_ids, run_ids: run, types, namespaces }, from, follow };
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    let last = tail(&mut client, options, |e| {
        let line = match out {
            Output::Json | Output::Yaml => event_to_json(e).to_string(),
            Output::Table => table_line(e),
        };
        match writeln!(stdout, "{line}") {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        }
    })
    .await?;
    if let Some(err) = failed {
        // A closed pipe (e.g. `| head`) ends the tail quietly.
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(err.into());
        }
    }
    if let Some(cursor) = last {
        tracing::debug!(%cursor, "tail ended");
    }
    Ok(())
}

/// `CURSOR TIME TYPE AGENT RUN DATA`
fn table_line(e: &pb::Event) -> String {
    let j = event_to_json(e);
    let field = |k: &str| j.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    let data = j.get("data").map(|d| d.to_string()).unwrap_or_default();
    let agent = if e.agent_name.is_empty() { e.agent_id.clone() } else { e.agent_name.clone() };
    format!(
        "{:>8} {} {:<28} {} {} {}",
        e.cursor,
        field("time"),
        field("type"),
        agent,
        if e.run_id.is_empty() { "-" } else { &e.run_id },
        data
    )
}
