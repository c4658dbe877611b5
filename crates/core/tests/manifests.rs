//! The YAML manifests users write: the examples parse and validate, and every class of bad input
//! is refused with an error naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::path::PathBuf;

use nightshift_core::{AgentManifest, AgentSpec, OverlapPolicy, Trigger, ValidationErrors};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents")
}

const BASE: &str = r#"
name: t
model: {provider: openai, model: m, api_key: env:OPENAI_API_KEY}
task: {query: do it}
schedule: {interval: 60s}
"#;

/// Replaces or adds the top-level `key:` line of BASE.
fn with(key: &str, value: &str) -> String {
    let mut lines: Vec<String> =
        BASE.lines().filter(|l| !l.starts_with(&format!("{key}:"))).map(str::to_owned).collect();
    lines.push(format!("{key}: {value}"));
    lines.join("\n")
}

fn errors_of(yaml: &str) -> ValidationErrors {
    AgentSpec::from_yaml(yaml).expect_err("spec should be refused")
}

fn assert_refused(yaml: &str, field: &str) {
    let e = errors_of(yaml);
    assert!(e.fields().any(|f| f == field), "expected an error on {field}, got: {e}");
}

#[test]
fn every_example_validates() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = AgentSpec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        names.push(spec.name.to_string());
    }
    names.sort();
    assert_eq!(names, ["data-processor", "file-monitor", "system-health"]);
}

#[test]
fn example_fields_are_understood() {
    let text = std::fs::read_to_string(examples_dir().join("system-health.yaml")).unwrap();
    let spec = AgentSpec::from_yaml(&text).unwrap();
    assert_eq!(spec.schedule.trigger, Trigger::Interval(std::time::Duration::from_secs(60)));
    assert_eq!(spec.policy.overlap, OverlapPolicy::Skip);
    assert_eq!(spec.policy.max_delay.as_secs(), 300);
    assert_eq!(spec.tools.local, ["get_system_info", "format_data"]);
    assert_eq!(spec.model.provider, nightshift_core::ModelProvider::Embedded);
    assert_eq!(spec.model.model, "smollm2-135m-instruct");
    assert_eq!(spec.model.api_key, None);
}

#[test]
fn the_embedded_provider_takes_no_server_or_key() {
    let embedded = |extra: &str| with("model", &format!("{{provider: embedded, model: smollm2-135m-instruct{extra}}}"));
    assert!(AgentSpec::from_yaml(&embedded("")).is_ok());
    assert_refused(&embedded(", base_url: 'http://127.0.0.1:8080/v1'"), "model.base_url");
    assert_refused(&embedded(", api_key: 'env:KEY'"), "model.api_key");
}

#[test]
fn sampling_settings_are_bounded() {
    let model = |extra: &str| with("model", &format!("{{provider: embedded, model: m{extra}}}"));
    let spec = AgentSpec::from_yaml(&model(", top_p: 0.9, seed: 7, stop: ['END']")).unwrap();
    assert_eq!(spec.model.sampling.top_p, Some(0.9));
    assert_eq!(spec.model.sampling.seed, Some(7));
    assert_eq!(spec.model.sampling.stop, ["END"]);
    assert_refused(&model(", top_p: 0"), "model.top_p");
    assert_refused(&model(", top_p: 1.5"), "model.top_p");
    assert_refused(&model(", stop: [a, b, c, d, e]"), "model.stop");
    assert_refused(&model(", stop: ['']"), "model.stop");
}

#[test]
fn yaml_proto_yaml_round_trip_is_stable() {
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let spec = AgentSpec::from_yaml(&text).unwrap();
        let back = AgentManifest::from_proto(&spec.to_proto()).to_yaml();
        let again = AgentSpec::from_yaml(&back).unwrap_or_else(|e| panic!("{e}\n{back}"));
        assert_eq!(again, spec);
        assert_eq!(again.to_proto(), spec.to_proto());
    }
}

#[test]
fn bad_cron_is_refused() {
    assert_refused(&with("schedule", r#"{cron: "99 * * * *"}"#), "schedule.cron");
}

#[test]
fn unknown_time_zone_is_refused() {
    assert_refused(&with("schedule", r#"{cron: "*/5 * * * *", timezone: Europe/Atlantis}"#), "schedule.timezone");
}

#[test]
fn negative_interval_is_refused() {
    assert_refused(&with("schedule", "{interval: -5s}"), "schedule.interval");
    assert_refused(&with("schedule", "{interval: -5}"), "schedule.interval");
}

#[test]
fn literal_api_key_is_refused_without_echoing_it() {
    let e = errors_of(&with("model", "{provider: openai, model: m, api_key: sk-live-abc123}"));
    assert!(e.fields().any(|f| f == "model.api_key"), "{e}");
    assert!(!e.to_string().contains("sk-live-abc123"), "the secret leaked into the error: {e}");
}

/// MCP server environments hold credentials: a literal is refused in a request (and not echoed),
/// a reference is kept, and a spec stored by an earlier release that had a literal still loads.
#[test]
fn literal_mcp_env_values_are_refused_but_stored_ones_still_load() {
    let mcp =
        |value: &str| with("tools", &format!("{{mcp: [{{name: gh, command: gh-mcp, env: {{GH_TOKEN: '{value}'}}}}]}}"));
    let e = errors_of(&mcp("ghp_secret123"));
    assert!(e.fields().any(|f| f == "tools.mcp[0].env.GH_TOKEN"), "{e}");
    assert!(!e.to_string().contains("ghp_secret123"), "the secret leaked into the error: {e}");
    let ok = AgentSpec::from_yaml(&mcp("env:GH_TOKEN")).unwrap();
    assert_eq!(ok.to_proto(), AgentSpec::from_stored_proto(&ok.to_proto()).unwrap().to_proto());

    let mut legacy = ok.to_proto();
    let Some(nightshift_core::pb::mcp_server_spec::Transport::Stdio(stdio)) =
        legacy.tools.as_mut().and_then(|t| t.mcp.first_mut()).and_then(|m| m.transport.as_mut())
    else {
        panic!("a stdio server")
    };
    stdio.env.insert("GH_TOKEN".into(), "ghp_secret123".into());
    assert!(AgentSpec::from_proto(&legacy).is_err(), "refused in a request");
    let loaded = AgentSpec::from_stored_proto(&legacy).expect("an agent stored before the rule keeps loading");
    assert_eq!(loaded.to_proto(), legacy);
}

#[test]
fn unknown_tool_kind_is_refused() {
    assert_refused(&with("tools", "{local: [get_system_info], shell: [rm]}"), "tools");
    assert_refused(&with("tools", "{mcp: [{name: x}]}"), "tools.mcp[0]");
    assert_refused(&with("tools", "{local: [launch_rockets]}"), "tools.local[0]");
}

#[test]
fn several_problems_are_reported_together() {
    let yaml = "name: Bad_Name\nmodel: {provider: openai, model: m}\ntask: {query: ''}\nschedule: {interval: 0s}";
    let e = errors_of(yaml);
    let fields: Vec<&str> = e.fields().collect();
    for f in ["name", "task.query", "schedule.interval"] {
        assert!(fields.contains(&f), "missing {f} in {e}");
    }
}

#[test]
fn other_bad_values_name_their_field() {
    assert_refused(&with("policy", "{overlap: sometimes}"), "policy.overlap");
    assert_refused(&with("policy", "{timeout: soon}"), "policy.timeout");
    assert_refused(&with("model", "{provider: skynet, model: m}"), "model.provider");
    assert_refused(&with("schedule", "{interval: 60s, cron: '* * * * *'}"), "schedule");
    assert_refused(&with("schedule", "{once_at: tomorrow}"), "schedule.once_at");
    assert_refused(&with("memory", "{session: 'team:x'}"), "memory.session");
    assert_refused(&format!("{BASE}\nmodle: x"), "manifest");
    assert_refused(
        &with("tools", "{mcp: [{name: s, url: 'http://h/mcp', headers: {Authorization: Bearer xyz}}]}"),
        "tools.mcp[0].headers.Authorization",
    );
}

#[test]
fn multi_document_streams() {
    let two = format!("{BASE}\n---\n{}", BASE.replace("name: t", "name: u"));
    let docs = AgentManifest::from_yaml_stream(&two).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].name, "u");
}
