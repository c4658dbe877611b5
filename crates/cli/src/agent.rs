//! `nightshift agent ...`
use std::path::{Path, PathBuf};

use anyhow::Context;
use nightshift_core::pb;
use serde::Serialize;

use crate::Server;
use crate::args::{AgentCommand, Output};
use crate::output::{self, AgentView, StatusView};

/// A manifest document with `--namespace` applied: set where the manifest names none, an error
/// where it names another (as `kubectl apply -n` does).
fn in_namespace(doc: String, namespace: &str) -> anyhow::Result<String> {
    if namespace.is_empty() {
        return Ok(doc);
    }
    let mut manifest = nightshift_core::AgentManifest::from_yaml(&doc).map_err(|e| anyhow::anyhow!("{e}"))?;
    if manifest.namespace.is_empty() {
        manifest.namespace = namespace.to_owned();
    } else if manifest.namespace != namespace {
        anyhow::bail!("agent '{}' names namespace {}, not --namespace {namespace}", manifest.name, manifest.namespace);
    }
    Ok(manifest.to_yaml())
}

/// Manifest files named by `paths`: files as given, directories' `*.yaml` / `*.yml` sorted.
pub(crate) fn manifest_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            if files.is_empty() {
                anyhow::bail!("{} holds no *.yaml or *.yml files", p.display());
            }
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

/// The YAML documents of a file (split at `---` lines; empty documents dropped).
pub(crate) fn documents(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    Ok(docs
        .into_iter()
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect())
}

#[derive(Serialize)]
struct Applied {
    file: String,
    name: String,
    outcome: String,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) async fn run(server: &Server, out: Output, cmd: AgentCommand) -> anyhow::Result<()> {
    let mut client = server.manager().await?;
    match cmd {
        AgentCommand::Apply { files } => {
            let mut results = Vec::new();
            let mut refused: Option<tonic::Code> = None;
            for file in manifest_files(&files)? {
                for doc in documents(&file)? {
                    let req =
                        pb::ApplyAgentRequest { spec: None, manifest_yaml: in_namespace(doc, server.namespace())? };
                    match client.apply_agent(req).await {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            let outcome = match resp.outcome() {
                                pb::apply_agent_response::Outcome::Created => "created",
                                pb::apply_agent_response::Outcome::Updated => "updated",
                                _ => "unchanged",
                            };
                            let agent = resp.agent.unwrap_or_default();
                            results.push(Applied {
                                file: file.display().to_string(),
                                name: agent.spec.map(|s| s.name).unwrap_or_default(),
                                outcome: outcome.into(),
                                version: agent.version,
                                error: None,
                            });
                        }
                        Err(status) => {
                            refused.get_or_insert(status.code());
                            let err = anyhow::Error::new(status);
                            results.push(Applied {
                                file: file.display().to_string(),
                                name: String::new(),
                                outcome: "refused".into(),
                                version: 0,
                                error: Some(crate::describe_error(&err)),
                            });
                        }
                    }
                }
            }
            output::print(out, &results, |rs| {
                rs.iter()
                    .map(|r| match &r.error {
                        None => format!("agent/{} {} (version {})\n", r.name, r.outcome, r.version),
                        Some(e) => format!("{}: refused: {e}\n", r.file),
                    })
                    .collect()
            })?;
            if let Some(code) = refused {
                let n = results.iter().filter(|r| r.error.is_some()).count();
                // Keeps the first refusal's code for the exit status; the details are above.
                return Err(tonic::Status::new(code, format!("{n} of {} manifests refused", results.len())).into());
            }
        }
        AgentCommand::List { labels, state } => {
            let state = match state.as_deref() {
                Some("active") => pb::AgentState::Active,
                Some("paused") => pb::AgentState::Paused,
                _ => pb::AgentState::Unspecified,
            };
            let mut agents = Vec::new();
            let mut page_token = String::new();
            loop {
                let resp = client
                    .list_agents(pb::ListAgentsRequest {
                        page_size: 500,
                        page_token,
                        label_selector: labels.iter().cloned().collect(),
                        state: state as i32,
                        namespace: server.namespace().to_owned(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                agents.extend(resp.agents.iter().map(AgentView::from_pb));
                if resp.next_page_token.is_empty() {
                    break;
                }
                page_token = resp.next_page_token;
            }
            output::print(out, &agents, |a| output::agents_table(a))?;
        }
        AgentCommand::Get { name } => {
            let a = client.get_agent(pb::GetAgentRequest { agent: server.agent(&name) }).await?.into_inner();
            output::print(out, &AgentView::from_pb(&a.agent.unwrap_or_default()), output::agent_table)?;
        }
        AgentCommand::Status { name } => {
            let s =
                client.get_agent_status(pb::GetAgentStatusRequest { agent: server.agent(&name) }).await?.into_inner();
            output::print(out, &StatusView::from_pb(&s), output::status_table)?;
        }
        AgentCommand::Pause { name } => {
            let a = client.pause_agent(pb::PauseAgentRequest { agent: server.agent(&name) }).await?.into_inner();
            output::print(out, &AgentView::from_pb(&a.agent.unwrap_or_default()), |a| {
                format!("agent/{} paused\n", name_of(a))
            })?;
        }
        AgentCommand::Resume { name } => {
            let a = client.resume_agent(pb::ResumeAgentRequest { agent: server.agent(&name) }).await?.into_inner();
            output::print(out, &AgentView::from_pb(&a.agent.unwrap_or_default()), |a| {
                format!("agent/{} resumed\n", name_of(a))
            })?;
        }
        AgentCommand::Delete { name } => {
            client.delete_agent(pb::DeleteAgentRequest { agent: server.agent(&name) }).await?;
            #[derive(Serialize)]
            struct Deleted {
                name: String,
                deleted: bool,
            }
            output::print(out, &Deleted { name: name.clone(), deleted: true }, |d| {
                format!("agent/{} deleted\n", d.name)
            })?;
        }
        AgentCommand::Trigger { name, query } => {
            let r = client
                .trigger_agent(pb::TriggerAgentRequest { agent: server.agent(&name), query_override: query })
                .await?
                .into_inner();
            let view = output::RunView::from_pb(&r.run.unwrap_or_default());
            output::print(out, &view, |r| output::runs_table(std::slice::from_ref(r)))?;
        }
    }
    Ok(())
}

fn name_of(a: &AgentView) -> String {
    a.name.clone()
}
