//! Real third-party MCP servers through the registry: the npm filesystem server and
//! `mcp-server-time` over stdio, and a streamable-HTTP server written with the official Python
//! SDK. `crates/testkit/mcp/setup.sh` installs them (cached); an install failure fails these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{HttpFixture, fs_server, http_spec, process_alive, time_server, wait_for};
use nightshift_core::{ConfigValue, McpServer, McpTransport, SecretRef, ToolsSpec};
use nightshift_tools::{RegistryError, ToolRegistry, ToolSource, ToolsConfig};
use serde_json::json;

fn spec(mcp: Vec<McpServer>) -> ToolsSpec {
    ToolsSpec { local: vec!["calculate_area".into()], mcp }
}

fn config() -> ToolsConfig {
    ToolsConfig { mcp_restart_backoff: Duration::from_millis(50), ..Default::default() }
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid} failed");
}

/// Canonical path of a temp dir (the filesystem server reports resolved paths).
fn tempdir_with_notes() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("notes.txt"), "hello from disk\nsecond line\n").unwrap();
    std::fs::create_dir(root.join("docs")).unwrap();
    (dir, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_server_over_stdio() {
    let (_dir, root) = tempdir_with_notes();
    let reg = ToolRegistry::new(&spec(vec![fs_server("fs", &root)]), &config()).await.expect("registry");

    let names: Vec<&str> = reg.definitions().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names[0], "calculate_area");
    for expected in ["fs__read_text_file", "fs__list_directory", "fs__write_file", "fs__edit_file"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for n in &names {
        assert!(n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{n}");
    }
    let read = reg.definition("fs__read_text_file").unwrap();
    assert_eq!(read.source, ToolSource::Mcp { server: "fs".into(), tool: "read_text_file".into() });
    assert_eq!(read.input_schema["properties"]["path"]["type"], "string");
    // The server's own annotations decide the effect class: readOnlyHint → read; edit_file
    // says nothing of the kind → irreversible (never repeated after a crash).
    use nightshift_core::governance::Effect;
    assert_eq!(read.hints.effect(), Effect::Read, "{:?}", read.hints);
    let edit = reg.definition("fs__edit_file").unwrap();
    assert_eq!(edit.hints.effect(), Effect::Irreversible, "{:?}", edit.hints);

    let notes = root.join("notes.txt").display().to_string();
    let out = reg.call("fs__read_text_file", &json!({ "path": notes }).to_string()).await;
    assert!(!out.is_error, "{}", out.content);
    assert_eq!(out.content, "hello from disk\nsecond line\n");

    let out = reg.call("fs__list_directory", &json!({ "path": root }).to_string()).await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.contains("[FILE] notes.txt") && out.content.contains("[DIR] docs"), "{}", out.content);

    // Our schema check stops a bad call before it reaches the server...
    let out = reg.call("fs__read_text_file", r#"{"file": "notes.txt"}"#).await;
    assert!(
        out.is_error && out.content.contains("invalid arguments") && out.content.contains("path"),
        "{}",
        out.content
    );
    // ...and the server's own errors come back as tool errors.
    let out = reg.call("fs__read_text_file", r#"{"path": "/etc/passwd"}"#).await;
    assert!(out.is_error, "{}", out.content);
    assert!(out.content.to_lowercase().contains("access denied"), "{}", out.content);

    // Local and MCP tools side by side.
    let area = reg.call("calculate_area", r#"{"shape": "rectangle", "width": 2, "height": 3}"#).await;
    assert!(area.content.contains("\"area\":6.0"), "{}", area.content);

    let status = reg.mcp_status().await;
    assert_eq!(status.len(), 1);
    assert!(status[0].connected && status[0].transport == "stdio" && status[0].restarts == 0);
    let pid = status[0].pid.expect("child pid");
    assert!(process_alive(pid));

    reg.shutdown().await;
    assert!(wait_for(Duration::from_secs(10), || !process_alive(pid)).await, "child {pid} still runs after shutdown");
    let out = reg.call("fs__read_text_file", &json!({ "path": notes }).to_string()).await;
    assert!(out.is_error && out.content.contains("shut down"), "{}", out.content);
    reg.shutdown().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stdio_server_is_restarted_on_the_next_call() {
    let (_dir, root) = tempdir_with_notes();
    let reg = ToolRegistry::new(&spec(vec![fs_server("fs", &root)]), &config()).await.expect("registry");
    let args = json!({ "path": root.join("notes.txt") }).to_string();
    assert!(!reg.call("fs__read_text_file", &args).await.is_error);
    let first = reg.mcp_status().await[0].pid.expect("pid");

    kill9(first);
    assert!(
        wait_for(Duration::from_secs(10), || !process_alive(first)).await,
        "the killed child {first} should be gone (reaped)"
    );
    // The registry notices the dead connection...
    let mut noticed = false;
    for _ in 0..100 {
        if !reg.mcp_status().await[0].connected {
            noticed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(noticed, "the registry did not notice the dead server");

    // ...and the next call restarts it and succeeds.
    let out = reg.call("fs__read_text_file", &args).await;
    assert!(!out.is_error, "call after the kill failed: {}", out.content);
    assert!(out.content.starts_with("hello from disk"));
    let status = &reg.mcp_status().await[0];
    assert!(status.connected);
    assert_eq!(status.restarts, 1);
    let second = status.pid.expect("new pid");
    assert_ne!(first, second);
    assert!(process_alive(second));

    reg.shutdown().await;
    assert!(wait_for(Duration::from_secs(10), || !process_alive(second)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_bounded() {
    let config = ToolsConfig { mcp_max_restarts: 1, ..config() };
    let reg = ToolRegistry::new(&spec(vec![time_server("time")]), &config).await.expect("registry");
    let args = r#"{"timezone": "UTC"}"#;
    for round in 0..2 {
        let pid = reg.mcp_status().await[0].pid.expect("pid");
        kill9(pid);
        assert!(wait_for(Duration::from_secs(10), || !process_alive(pid)).await);
        let mut tries = 0;
        let out = loop {
            // A call racing the SDK's notice of the death reports the lost connection; the
            // next one restarts.
            let out = reg.call("time__get_current_time", args).await;
            tries += 1;
            if !out.content.contains("connection failed during the call") || tries > 3 {
                break out;
            }
        };
        if round == 0 {
            assert!(!out.is_error, "first restart should work: {}", out.content);
        } else {
            assert!(out.is_error, "second restart is over the limit: {}", out.content);
            assert!(out.content.contains("restarted 1 times"), "{}", out.content);
        }
    }
    assert_eq!(reg.mcp_status().await[0].restarts, 1);
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_server_over_stdio() {
    let reg = ToolRegistry::new(&spec(vec![time_server("time")]), &config()).await.expect("registry");
    let names: Vec<&str> = reg.definitions().iter().map(|d| d.name.as_str()).collect();
    assert!(names.contains(&"time__get_current_time") && names.contains(&"time__convert_time"), "{names:?}");

    let out = reg.call("time__get_current_time", r#"{"timezone": "Europe/Paris"}"#).await;
    assert!(!out.is_error, "{}", out.content);
    let v: serde_json::Value = serde_json::from_str(&out.content).expect("JSON result");
    assert_eq!(v["timezone"], "Europe/Paris");
    let year: u32 = v["datetime"].as_str().unwrap()[..4].parse().unwrap();
    assert!(year >= 2025, "{v}");

    let out = reg
        .call("time__convert_time", r#"{"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}"#)
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.contains("21:00"), "{}", out.content);

    // Schema-valid but rejected by the server: a tool error, the connection stays up.
    let out = reg.call("time__get_current_time", r#"{"timezone": "Mars/Olympus_Mons"}"#).await;
    assert!(out.is_error, "{}", out.content);
    assert!(out.content.contains("Mars/Olympus_Mons"), "{}", out.content);
    assert!(reg.mcp_status().await[0].connected);
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_server() {
    let fixture = HttpFixture::start();
    // The header value is a secret reference, resolved at start. HOME stands in for a secret
    // variable (set on every machine, so the test needs no process-wide set_var).
    let home = std::env::var("HOME").expect("HOME is set");
    let headers = BTreeMap::from([("X-Api-Key".to_owned(), ConfigValue::Secret(SecretRef::Env("HOME".into())))]);
    let server = http_spec(&fixture, "py", headers, Duration::from_secs(2));
    let reg = ToolRegistry::new(&spec(vec![server]), &config()).await.expect("registry");

    let names: Vec<&str> = reg.definitions().iter().map(|d| d.name.as_str()).collect();
    for expected in ["py__add", "py__api_key_fingerprint", "py__sleep", "py__fail"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert_eq!(reg.call("py__add", r#"{"a": 2, "b": 40}"#).await.content, "42");

    let out = reg.call("py__api_key_fingerprint", "{}").await;
    assert_eq!(out.content, format!("x-api-key present=True length={}", home.len()));

    let out = reg.call("py__add", r#"{"a": "two", "b": 40}"#).await;
    assert!(out.is_error && out.content.contains("arguments/a"), "{}", out.content);

    let out = reg.call("py__fail", r#"{"message": "boom 17"}"#).await;
    assert!(out.is_error && out.content.contains("boom 17"), "{}", out.content);

    // The server's call timeout is 2 s.
    let started = std::time::Instant::now();
    let out = reg.call("py__sleep", r#"{"seconds": 20}"#).await;
    assert!(out.is_error && out.content.contains("timed out after 2s"), "{}", out.content);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The connection survives a timed-out call.
    assert_eq!(reg.call("py__add", r#"{"a": 1, "b": 1}"#).await.content, "2");

    let status = &reg.mcp_status().await[0];
    assert!(status.connected && status.transport == "http" && status.pid.is_none());
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_name_the_server_and_never_the_secret() {
    let missing = McpServer {
        name: "ghost".into(),
        transport: McpTransport::Stdio { command: "/no/such/mcp-server".into(), args: vec![], env: BTreeMap::new() },
        call_timeout: Duration::from_secs(5),
    };
    let err = ToolRegistry::new(&spec(vec![missing]), &config()).await.unwrap_err();
    assert!(matches!(&err, RegistryError::McpStart { server, .. } if server == "ghost"), "{err}");
    assert!(err.to_string().contains("/no/such/mcp-server"), "{err}");

    // An unset secret: the error names the variable, and no process is started.
    let mut time = time_server("time");
    if let McpTransport::Stdio { env, .. } = &mut time.transport {
        env.insert("API_TOKEN".into(), ConfigValue::Secret(SecretRef::Env("NIGHTSHIFT_TEST_SURELY_UNSET_9F3".into())));
    }
    let err = ToolRegistry::new(&spec(vec![time]), &config()).await.unwrap_err();
    assert!(err.to_string().contains("NIGHTSHIFT_TEST_SURELY_UNSET_9F3"), "{err}");

    // A secret that is set reaches the child's environment, and is not in any error text.
    let mut time = time_server("time");
    if let McpTransport::Stdio { env, .. } = &mut time.transport {
        env.insert("API_TOKEN".into(), ConfigValue::Secret(SecretRef::Env("HOME".into())));
    }
    let reg = ToolRegistry::new(&spec(vec![time]), &config()).await.expect("registry");
    let pid = reg.mcp_status().await[0].pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let home = std::env::var("HOME").unwrap();
    assert!(environ.split('\0').any(|kv| kv == format!("API_TOKEN={home}")), "API_TOKEN not passed");
    // The worker's other variables stay out of the child (only the inherit list gets through).
    assert!(environ.split('\0').all(|kv| !kv.starts_with("CARGO_MANIFEST_DIR=")), "worker env leaked: {environ}");
    reg.shutdown().await;

    // An unreachable HTTP server.
    let port = common::free_port();
    let http = McpServer {
        name: "nohttp".into(),
        transport: McpTransport::Http { url: format!("http://127.0.0.1:{port}/mcp"), headers: BTreeMap::new() },
        call_timeout: Duration::from_secs(5),
    };
    let err = ToolRegistry::new(&spec(vec![http]), &config()).await.unwrap_err();
    assert!(matches!(&err, RegistryError::McpStart { server, .. } if server == "nohttp"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_at_once() {
    let (_dir, root) = tempdir_with_notes();
    let fixture = HttpFixture::start();
    let servers = vec![
        fs_server("fs", &root),
        time_server("time"),
        http_spec(&fixture, "py", BTreeMap::new(), Duration::from_secs(10)),
    ];
    let reg = std::sync::Arc::new(ToolRegistry::new(&spec(servers), &config()).await.expect("registry"));
    // Parallel calls across servers, as a model asking for several tools at once would make.
    let calls = [
        ("fs__read_text_file", json!({ "path": root.join("notes.txt") }).to_string()),
        ("time__get_current_time", r#"{"timezone": "UTC"}"#.to_owned()),
        ("py__add", r#"{"a": 20, "b": 22}"#.to_owned()),
        ("calculate_area", r#"{"shape": "circle", "radius": 1}"#.to_owned()),
    ];
    let outs = futures::future::join_all(calls.iter().map(|(n, a)| {
        let reg = reg.clone();
        async move { reg.call(n, a).await }
    }))
    .await;
    for ((name, _), out) in calls.iter().zip(&outs) {
        assert!(!out.is_error, "{name}: {}", out.content);
    }
    assert!(outs[0].content.starts_with("hello from disk"));
    assert!(outs[1].content.contains("\"timezone\": \"UTC\"") || outs[1].content.contains("\"timezone\":\"UTC\""));
    assert_eq!(outs[2].content, "42");
    let pids: Vec<u32> = reg.mcp_status().await.iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 2);
    reg.shutdown().await;
    for pid in pids {
        assert!(wait_for(Duration::from_secs(10), || !process_alive(pid)).await, "{pid} survived shutdown");
    }
}
