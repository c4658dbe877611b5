//! The `nightshift` binary against a real `nightshift dev` process: the README's workflow, in
//! table and JSON output, with readable errors and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

use common::Dev;

const BIN: &str = env!("CARGO_BIN_EXE_nightshift");

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents")
}

/// Starts `nightshift dev` on a free port.
fn dev() -> Dev {
    Dev::start(None)
}

fn ns(d: &Dev, args: &[&str]) -> Output {
    Command::new(BIN).env("NIGHTSHIFT_ENDPOINT", &d.endpoint).args(args).output().unwrap()
}

fn ok(d: &Dev, args: &[&str]) -> String {
    let out = ns(d, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(d: &Dev, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(d, &a)).unwrap()
}

/// README command 1 on the real embedded model (SmolLM2-135M, fetched into the model cache by
/// `nightshift dev` itself): each example agent's run succeeds, with a real tool call and the
/// model's own answer. What a 135M model answers varies; that it called a tool of its agent and
/// concluded does not.
#[test]
fn the_readme_main_job_succeeds_with_the_embedded_model() {
    let d = Dev::start_with(None, &["-f", examples().to_str().unwrap()]);
    let agents = [
        ("system-health", ["get_system_info", "format_data"]),
        ("file-monitor", ["list_dir", "list_dir"]),
        ("data-processor", ["calculate_area", "format_data"]),
    ];
    let runs: Vec<String> = agents
        .iter()
        .map(|(name, _)| json(&d, &["agent", "trigger", name])["id"].as_str().unwrap().to_owned())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    for ((name, tools), id) in agents.iter().zip(&runs) {
        let run = loop {
            let run = json(&d, &["runs", "get", id]);
            if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or_default()) {
                break run;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: still {} after 10 min", run["status"]);
            std::thread::sleep(std::time::Duration::from_secs(2));
        };
        assert_eq!(run["status"], "succeeded", "{name}: {run}");
        let steps = run["steps"].as_array().unwrap();
        let called: Vec<&str> =
            steps.iter().filter(|s| s["kind"] == "tool_result").filter_map(|s| s["summary"].as_str()).collect();
        assert!(
            called.iter().any(|c| tools.iter().any(|t| c.starts_with(t))),
            "{name} called none of {tools:?}: {run}"
        );
        assert!(!run["result"].as_str().unwrap_or_default().is_empty(), "{name}: no answer: {run}");
    }
}

#[test]
fn readme_workflow_in_table_and_json() {
    let d = dev();
    let ex = examples();
    let applied = ok(&d, &["agent", "apply", "-f", ex.to_str().unwrap()]);
    assert_eq!(applied.matches(" created ").count(), 3, "{applied}");
    let again = json(&d, &["agent", "apply", "-f", ex.to_str().unwrap()]);
    assert!(again.as_array().unwrap().iter().all(|r| r["outcome"] == "unchanged"), "{again}");

    let table = ok(&d, &["agent", "list"]);
    for name in ["system-health", "file-monitor", "data-processor"] {
        assert!(table.contains(name), "{table}");
    }
    let list = json(&d, &["agent", "list", "--label", "team=ops"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["spec"]["schedule"]["interval"], "1m");

    let status = ok(&d, &["agent", "status", "system-health"]);
    assert!(status.contains("get_system_info"), "{status}");
    let paused = json(&d, &["agent", "pause", "system-health"]);
    assert_eq!(paused["state"], "paused");
    let refused = ns(&d, &["agent", "trigger", "system-health"]);
    assert_eq!(refused.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("paused"));
    assert_eq!(json(&d, &["agent", "resume", "system-health"])["state"], "active");

    // A run that cannot end by itself before it is cancelled: its model server accepts the
    // connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let manifest = d.dir.path().join("hanging.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: hanging\nmodel: {{provider: openai, model: m, base_url: 'http://{}/v1'}}\n\
             task: {{query: q}}\nschedule: {{manual: true}}\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    ok(&d, &["agent", "apply", "-f", manifest.to_str().unwrap()]);
    let run = json(&d, &["agent", "trigger", "hanging", "--query", "only disk"]);
    assert_eq!(run["status"], "queued");
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(json(&d, &["runs", "get", &id])["agent"], "hanging");
    assert!(ok(&d, &["runs", "list", "--agent", "hanging"]).contains(&id));
    assert_eq!(json(&d, &["runs", "cancel", &id])["status"], "cancelled");
    let st = json(&d, &["agent", "status", "hanging"]);
    assert_eq!(st["counts"]["cancelled"], 1);

    let yaml = ok(&d, &["agent", "get", "data-processor", "-o", "yaml"]);
    assert!(yaml.contains("overlap: buffer_one"), "{yaml}");

    ok(&d, &["agent", "delete", "file-monitor"]);
    let gone = ns(&d, &["agent", "get", "file-monitor"]);
    assert_eq!(gone.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
}

#[test]
fn namespaces_from_the_command_line() {
    let d = dev();
    let ex = examples();
    let into_a = ok(&d, &["-n", "team-a", "agent", "apply", "-f", ex.to_str().unwrap()]);
    assert_eq!(into_a.matches(" created ").count(), 3, "{into_a}");
    // The same names again, in default: names are unique per namespace.
    let into_default = ok(&d, &["agent", "apply", "-f", ex.to_str().unwrap()]);
    assert_eq!(into_default.matches(" created ").count(), 3, "{into_default}");
    let team_a = json(&d, &["-n", "team-a", "agent", "list"]);
    assert_eq!(team_a.as_array().unwrap().len(), 3, "{team_a}");
    assert!(team_a.as_array().unwrap().iter().all(|a| a["spec"]["namespace"] == "team-a"), "{team_a}");
    assert_eq!(json(&d, &["agent", "list"]).as_array().unwrap().len(), 6, "every namespace without -n");
    ok(&d, &["-n", "team-a", "agent", "delete", "file-monitor"]);
    assert_eq!(ns(&d, &["-n", "team-a", "agent", "get", "file-monitor"]).status.code(), Some(3));
    assert_eq!(json(&d, &["agent", "get", "file-monitor"])["spec"]["namespace"], "default", "default's is still there");

    let elsewhere = d.dir.path().join("elsewhere.yaml");
    std::fs::write(
        &elsewhere,
        "namespace: team-b\nname: x\nmodel: {provider: openai, model: m}\ntask: {query: q}\nschedule: {manual: true}\n",
    )
    .unwrap();
    let out = ns(&d, &["-n", "team-a", "agent", "apply", "-f", elsewhere.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("team-b"), "a manifest naming another namespace: {text}");
}

#[test]
fn bad_specs_are_refused_readably() {
    let d = dev();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("cron", "schedule: {cron: '70 * * * *'}", "schedule.cron"),
        ("tz", "schedule: {cron: '*/5 * * * *', timezone: Moon/Crater}", "schedule.timezone"),
        ("neg", "schedule: {interval: -10s}", "schedule.interval"),
        ("key", "schedule: {interval: 10s}\nmodel: {provider: openai, model: m, api_key: sk-abcdef}", "model.api_key"),
        ("kind", "schedule: {interval: 10s}\ntools: {webhooks: [x]}", "tools"),
    ];
    for (name, extra, field) in cases {
        let has_model = extra.contains("model:");
        let model = if has_model { "" } else { "model: {provider: openai, model: m}\n" };
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, format!("name: {name}\n{model}task: {{query: q}}\n{extra}\n")).unwrap();
        let out = ns(&d, &["agent", "apply", "-f", path.to_str().unwrap()]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(4), "{name}: {text}");
        assert!(text.contains(field), "{name}: expected {field} in {text}");
        assert!(!text.contains("sk-abcdef"), "secret echoed: {text}");
    }
}

#[test]
fn unreachable_server_is_exit_code_6() {
    let out = Command::new(BIN).args(["--endpoint", "http://127.0.0.1:1", "agent", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
