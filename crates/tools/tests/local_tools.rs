//! The built-in local tools through the registry: schemas, validation, confinement, limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use nightshift_core::{BUILTIN_LOCAL_TOOLS, ToolsSpec};
use nightshift_tools::{ToolOutput, ToolRegistry, ToolSource, ToolsConfig, local};
use serde_json::{Value, json};

async fn registry(tools: &[&str], config: &ToolsConfig) -> ToolRegistry {
    let spec = ToolsSpec { local: tools.iter().map(|s| s.to_string()).collect(), mcp: vec![] };
    ToolRegistry::new(&spec, config).await.expect("registry")
}

async fn call(reg: &ToolRegistry, name: &str, args: Value) -> ToolOutput {
    reg.call(name, &args.to_string()).await
}

fn ok_json(out: &ToolOutput) -> Value {
    assert!(!out.is_error, "unexpected error: {}", out.content);
    serde_json::from_str(&out.content).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.content))
}

fn assert_err(out: &ToolOutput, needle: &str) {
    assert!(out.is_error, "expected an error containing {needle:?}, got success: {}", out.content);
    assert!(out.content.contains(needle), "error {:?} does not contain {needle:?}", out.content);
}

#[tokio::test]
async fn builtin_tools_are_exactly_the_ones_core_knows() {
    let mut names = local::builtin_names();
    let mut core: Vec<&str> = BUILTIN_LOCAL_TOOLS.to_vec();
    names.sort_unstable();
    core.sort_unstable();
    assert_eq!(names, core);

    // Each builds, names itself as listed, has an object schema that compiles (the registry
    // compiles every schema) and only reads (effect class read: safe to repeat after a crash).
    let reg = registry(BUILTIN_LOCAL_TOOLS, &ToolsConfig::default()).await;
    let defs: Vec<&str> = reg.definitions().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(defs, BUILTIN_LOCAL_TOOLS);
    for d in reg.definitions() {
        assert_eq!(d.source, ToolSource::Local);
        assert_eq!(d.hints.effect(), nightshift_core::governance::Effect::Read, "{} should only read", d.name);
        assert_eq!(d.input_schema["type"], "object", "{}", d.name);
        assert!(!d.description.is_empty());
    }
}

#[tokio::test]
async fn calculate_area_computes_and_validates() {
    let reg = registry(&["calculate_area"], &ToolsConfig::default()).await;
    let r = ok_json(&call(&reg, "calculate_area", json!({"shape": "rectangle", "width": 3, "height": 4})).await);
    assert_eq!(r["area"], 12.0);
    assert_eq!(r["perimeter"], 14.0);
    let c = ok_json(&call(&reg, "calculate_area", json!({"shape": "circle", "radius": 2})).await);
    assert!((c["area"].as_f64().unwrap() - 4.0 * std::f64::consts::PI).abs() < 1e-6);
    let t = ok_json(&call(&reg, "calculate_area", json!({"shape": "triangle", "a": 3, "b": 4, "c": 5})).await);
    assert_eq!(t["area"], 6.0);
    let t = ok_json(&call(&reg, "calculate_area", json!({"shape": "triangle", "base": 10, "height": 3})).await);
    assert_eq!(t["area"], 15.0);

    // Schema violations come back as tool errors naming the offending field.
    let out = call(&reg, "calculate_area", json!({"shape": "rectangle", "width": -3, "height": 4})).await;
    assert_err(&out, "invalid arguments");
    assert_err(&out, "/width");
    assert_err(&call(&reg, "calculate_area", json!({"shape": "hexagon"})).await, "/shape");
    assert_err(&call(&reg, "calculate_area", json!({"shape": "circle", "radius": "big"})).await, "/radius");
    assert_err(&call(&reg, "calculate_area", json!({"shape": "circle", "radius": 1, "colour": "red"})).await, "colour");
    assert_err(&reg.call("calculate_area", "").await, "shape");
    // ...and the model is shown the schema to fix its call.
    assert_err(&call(&reg, "calculate_area", json!({})).await, "must match this JSON Schema");
    // Rules a schema does not express are checked by the tool.
    assert_err(&call(&reg, "calculate_area", json!({"shape": "rectangle", "width": 3})).await, "needs 'height'");
    assert_err(&call(&reg, "calculate_area", json!({"shape": "triangle", "a": 1, "b": 2, "c": 10})).await, "triangle");
    // Not JSON at all.
    assert_err(&reg.call("calculate_area", "{shape: circle").await, "not valid JSON");
    assert_err(&reg.call("calculate_area", "[1,2]").await, "invalid arguments");
}

#[tokio::test]
async fn format_data_renders_every_format() {
    let reg = registry(&["format_data"], &ToolsConfig::default()).await;
    let data = json!([{"name": "alice", "age": 30}, {"name": "bob|jr", "age": 4, "city": "Paris, FR"}]);
    let fmt = |f: &str| json!({"data": data, "format": f, "columns": ["name", "age", "city"]});

    let table = call(&reg, "format_data", fmt("table")).await;
    assert!(!table.is_error, "{}", table.content);
    let lines: Vec<&str> = table.content.lines().collect();
    assert_eq!(lines[0], "name   | age | city");
    assert_eq!(lines[1], "-------+-----+----------");
    assert_eq!(lines[2], "alice  | 30  |");
    assert_eq!(lines[3], "bob|jr | 4   | Paris, FR");

    let md = call(&reg, "format_data", fmt("markdown")).await.content;
    assert_eq!(md.lines().next(), Some("| name | age | city |"));
    assert_eq!(md.lines().nth(1), Some("| --- | --- | --- |"));
    assert!(md.contains("| bob\\|jr | 4 | Paris, FR |"), "{md}");

    let csv = call(&reg, "format_data", fmt("csv")).await.content;
    assert_eq!(csv, "name,age,city\nalice,30,\nbob|jr,4,\"Paris, FR\"\n");

    let yaml = call(&reg, "format_data", fmt("yaml")).await.content;
    assert!(yaml.contains("- name: alice"), "{yaml}");
    assert!(yaml.contains("city: Paris, FR"), "{yaml}");

    assert!(yaml.starts_with("- name: alice\n  age: 30\n  city: null\n"), "columns keep their order: {yaml}");

    let j = call(&reg, "format_data", fmt("json")).await.content;
    assert!(j.contains("\"name\": \"alice\",\n    \"age\": 30,\n    \"city\": null"), "{j}");
    let j: Value = serde_json::from_str(&j).unwrap();
    assert_eq!(j[0], json!({"name": "alice", "age": 30, "city": null}));

    // One object becomes key/value rows; without `columns` keys are collected from all rows.
    let kv = call(&reg, "format_data", json!({"data": {"cpu": 2, "os": "linux"}, "format": "csv"})).await.content;
    assert_eq!(kv, "key,value\ncpu,2\nos,linux\n");
    let rows = call(&reg, "format_data", json!({"data": [[1, 2], [3]], "format": "csv"})).await.content;
    assert_eq!(rows, "col1,col2\n1,2\n3,\n");

    assert_err(&call(&reg, "format_data", json!({"data": [], "format": "xml"})).await, "/format");
    assert_err(&call(&reg, "format_data", json!({"format": "csv"})).await, "data");
}

#[tokio::test]
async fn system_info_reports_real_host_facts() {
    let reg = registry(&["get_system_info"], &ToolsConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let info = ok_json(&call(&reg, "get_system_info", json!({"path": dir.path()})).await);
    assert!(!info["hostname"].as_str().unwrap().is_empty());
    assert!(!info["kernel"].as_str().unwrap().is_empty());
    assert_eq!(info["os"], std::env::consts::OS);
    assert!(info["cpu_count"].as_u64().unwrap() >= 1);
    assert!(info["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(info["memory"]["available_bytes"].as_u64().unwrap() > 0);
    assert!(info["disk"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["disk"]["path"], dir.path().display().to_string());
    assert!(info["uptime_seconds"].as_u64().unwrap() > 0);
    assert!(info["load_average"]["1m"].as_f64().unwrap() >= 0.0);
    // No arguments at all is fine (disk of /), also as `null`.
    let root = ok_json(&reg.call_value("get_system_info", Value::Null).await);
    assert_eq!(root["disk"]["path"], "/");
    assert_err(&call(&reg, "get_system_info", json!({"path": "/no/such/dir"})).await, "disk usage");
}

/// root/{a.txt, sub/b.txt, big.txt, bin.dat, link -> outside/secret.txt, dirlink -> outside}
fn file_tree() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("a.txt"), "alpha").unwrap();
    std::fs::write(root.join("sub/b.txt"), "beta").unwrap();
    std::fs::write(root.join("big.txt"), "0123456789".repeat(10)).unwrap();
    std::fs::write(root.join("bin.dat"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP SECRET").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(root.join("a.txt"), root.join("inner_link")).unwrap();
    (base, root, outside)
}

#[tokio::test]
async fn read_file_is_confined_to_the_root() {
    let (_base, root, outside) = file_tree();
    let config = ToolsConfig { file_root: Some(root.clone()), read_max_bytes: 40, ..Default::default() };
    let reg = registry(&["read_file"], &config).await;
    let read = |p: &str| call(&reg, "read_file", json!({"path": p}));

    assert_eq!(read("a.txt").await, ToolOutput::ok("alpha"));
    assert_eq!(read("./sub/b.txt").await, ToolOutput::ok("beta"));
    assert_eq!(read(&root.join("a.txt").display().to_string()).await, ToolOutput::ok("alpha"));
    // A symlink that stays inside the root is fine.
    assert_eq!(read("inner_link").await, ToolOutput::ok("alpha"));

    for escape in ["../outside/secret.txt", "sub/../../outside/secret.txt", "sub/../a.txt"] {
        let out = read(escape).await;
        assert_err(&out, "denied");
        assert_err(&out, "'..' is not allowed");
    }
    assert_err(&read(&outside.join("secret.txt").display().to_string()).await, "outside the file root");
    assert_err(&read("/etc/passwd").await, "outside the file root");
    for link in ["link", "dirlink/secret.txt"] {
        let out = read(link).await;
        assert_err(&out, "symlink");
        assert!(!out.content.contains("TOP SECRET"));
    }
    assert_err(&read("missing.txt").await, "does not exist");
    assert_err(&read("sub").await, "is a directory");
    assert_err(&read("bin.dat").await, "not a UTF-8 text file");
    assert_err(&call(&reg, "read_file", json!({})).await, "path");

    // Long files are cut at the configured limit and say how to continue.
    let first = read("big.txt").await;
    assert!(!first.is_error);
    assert!(first.content.starts_with(&"0123456789".repeat(4)), "{}", first.content);
    assert!(first.content.contains("offset=40"), "{}", first.content);
    let rest = call(&reg, "read_file", json!({"path": "big.txt", "offset": 90})).await;
    assert_eq!(rest, ToolOutput::ok("0123456789"));
}

#[tokio::test]
async fn list_dir_is_confined_and_describes_symlinks() {
    let (_base, root, _outside) = file_tree();
    let config = ToolsConfig { file_root: Some(root.clone()), ..Default::default() };
    let reg = registry(&["list_dir"], &config).await;

    let listing = ok_json(&call(&reg, "list_dir", json!({})).await);
    assert_eq!(listing["path"], ".");
    let entries = listing["entries"].as_array().unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.txt", "big.txt", "bin.dat", "dirlink", "inner_link", "link", "sub"]);
    let kind = |n: &str| entries.iter().find(|e| e["name"] == n).unwrap()["type"].as_str().unwrap().to_owned();
    assert_eq!(kind("a.txt"), "file");
    assert_eq!(kind("sub"), "dir");
    assert_eq!(kind("dirlink"), "symlink");
    assert_eq!(entries[0]["size"], 5);

    let sub = ok_json(&call(&reg, "list_dir", json!({"path": "sub"})).await);
    assert_eq!(sub["path"], "sub");
    assert_eq!(sub["entries"][0]["name"], "b.txt");

    assert_err(&call(&reg, "list_dir", json!({"path": ".."})).await, "'..' is not allowed");
    assert_err(&call(&reg, "list_dir", json!({"path": "dirlink"})).await, "symlink");
    assert_err(&call(&reg, "list_dir", json!({"path": "/"})).await, "outside the file root");
    assert_err(&call(&reg, "list_dir", json!({"path": "a.txt"})).await, "not a directory");
}

#[tokio::test]
async fn file_tools_without_a_root_refuse() {
    let reg = registry(&["read_file", "list_dir"], &ToolsConfig::default()).await;
    assert_err(&call(&reg, "read_file", json!({"path": "a.txt"})).await, "no file root");
    assert_err(&call(&reg, "list_dir", json!({})).await, "no file root");
}

async fn http_fixture() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/allowed/hello", get(|| async { "hello, agent" }))
        .route("/allowed/big", get(|| async { "x".repeat(100_000) }))
        .route(
            "/allowed/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route("/allowed/to-secret", get(|| async { Redirect::temporary("/secret") }))
        .route("/allowed/to-hello", get(|| async { Redirect::temporary("/allowed/hello") }))
        .route("/secret", get(|| async { "TOP SECRET" }));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, server)
}

#[tokio::test]
async fn http_get_follows_the_allow_list() {
    let (base, server) = http_fixture().await;
    let config = ToolsConfig {
        http_allow: vec![format!("{base}/allowed/")],
        http_max_bytes: 1000,
        http_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let reg = registry(&["http_get"], &config).await;
    let get = |url: String| call(&reg, "http_get", json!({ "url": url }));

    let out = get(format!("{base}/allowed/hello")).await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.starts_with("HTTP 200 OK"), "{}", out.content);
    assert!(out.content.ends_with("hello, agent"), "{}", out.content);

    let secret = get(format!("{base}/secret")).await;
    assert_err(&secret, "not on this worker's allow-list");
    assert!(!secret.content.contains("TOP SECRET"));
    // Tricks that look like the allowed prefix.
    assert_err(&get(format!("{base}/allowed/../secret")).await, "allow-list");
    assert_err(&get(format!("{base}/allowedx/hello")).await, "allow-list");
    assert_err(&get("http://localhost:1/allowed/hello".into()).await, "allow-list");
    assert_err(&get(base.replace("http://", "http://user:pw@") + "/allowed/hello").await, "credentials");
    assert_err(&get("file:///etc/passwd".into()).await, "only http and https");
    assert_err(&get("not a url".into()).await, "invalid arguments");

    // Redirects are followed only to allowed URLs.
    let bounced = get(format!("{base}/allowed/to-secret")).await;
    assert_err(&bounced, "redirect refused");
    assert!(!bounced.content.contains("TOP SECRET"));
    let followed = get(format!("{base}/allowed/to-hello")).await;
    assert!(followed.content.ends_with("hello, agent"), "{}", followed.content);

    // Size and time limits.
    let big = get(format!("{base}/allowed/big")).await;
    assert!(!big.is_error);
    assert!(big.content.contains(&"x".repeat(1000)) && !big.content.contains(&"x".repeat(1001)));
    assert!(big.content.contains("[truncated: showed the first 1000 bytes of 100000]"), "{}", &big.content[..80]);
    let small = call(&reg, "http_get", json!({"url": format!("{base}/allowed/big"), "max_bytes": 10})).await;
    assert!(small.content.contains("first 10 bytes"), "{}", small.content);
    assert_err(&get(format!("{base}/allowed/slow")).await, "timed out");

    // An empty allow-list allows nothing.
    let closed = registry(&["http_get"], &ToolsConfig::default()).await;
    assert_err(
        &call(&closed, "http_get", json!({"url": format!("{base}/allowed/hello")})).await,
        "allow-list is empty",
    );
    server.abort();
}

#[tokio::test]
async fn bad_http_allow_entry_fails_the_registry() {
    let config = ToolsConfig { http_allow: vec!["ftp://example.com/".into()], ..Default::default() };
    let spec = ToolsSpec { local: vec!["http_get".into()], mcp: vec![] };
    let err = ToolRegistry::new(&spec, &config).await.unwrap_err();
    assert!(err.to_string().contains("http_get") && err.to_string().contains("ftp://"), "{err}");
}

#[test]
fn config_round_trips_with_humantime_durations() {
    let c = ToolsConfig::default();
    let text = serde_json::to_string(&c).unwrap();
    assert!(text.contains("\"default_timeout\":\"30s\""), "{text}");
    assert_eq!(serde_json::from_str::<ToolsConfig>(&text).unwrap(), c);
    let c: ToolsConfig = serde_json::from_value(json!({
        "file_root": "/srv/data", "default_timeout": "5s", "tool_timeouts": {"http_get": "1m"}
    }))
    .unwrap();
    assert_eq!(c.timeout_of("http_get"), Duration::from_secs(60));
    assert_eq!(c.timeout_of("read_file"), Duration::from_secs(5));
    assert_eq!(c.http_max_bytes, ToolsConfig::default().http_max_bytes);
    let _ = Arc::new(c);
}
