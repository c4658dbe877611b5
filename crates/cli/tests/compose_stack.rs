//! The compose stack, really up: `docker-compose.yml` with `deploy/compose.local.yml` on a real
//! Docker engine, every image built on this machine (`scripts/compose-local.sh up --debug`
//! installs and starts an engine if none answers; nothing is skipped: no engine, no pass). The
//! test reaches the stack only as a user would, from the host through the published loopback
//! ports: the `nightshift` CLI (manager) and grpcurl (events, memory), over TLS with the stack's
//! admin key.
//!
//! The model is the scripted OpenAI-compatible server (`nightshift-scripted-llm`), a stand-in for
//! a hosted LLM so that tool calls are deterministic, run as a container on the stack's network
//! under the name `llm` (the name the stack's workers may reach). Each agent's task scripts its
//! own tool calls.
//!
//! One test, phases in order (the stack is one shared thing): a run through the containers; a
//! worker container killed in a slow tool call; four workers under 50 agents at 1 s with the
//! scheduler SIGKILLed; `down` then `up` keeping volumes; a bad setting. `down --volumes` at the
//! end, whatever happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_nightshift");
const LLM_CONTAINER: &str = "nightshift-test-llm";
const LOAD_AGENTS: usize = 50;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The stack, taken down with its volumes when dropped.
struct Stack {
    /// What reaches the engine and names the project (from `compose-local.sh env`).
    env: Vec<(String, String)>,
    root: PathBuf,
    /// `127.0.0.1:PORT` of the scripted LLM's container.
    llm: String,
}

impl Stack {
    fn script(args: &[&str]) -> Output {
        Command::new(repo().join("scripts/compose-local.sh"))
            .args(args)
            // The slow tool call is an `http_get` of the scripted server.
            .env("NIGHTSHIFT_WORKER_HTTP_ALLOW", r#"["llm"]"#)
            .output()
            .expect("running scripts/compose-local.sh")
    }

    fn up() -> Stack {
        let out = Stack::script(&["up", "--debug"]);
        if !out.status.success() {
            // No Stack yet to drop: leave nothing half up behind.
            let down = Stack::script(&["down", "--volumes"]);
            panic!("scripts/compose-local.sh up failed:\n{}\ndown --volumes: {}", text(&out), text(&down));
        }
        let env = Stack::script(&["env"]);
        assert!(env.status.success(), "compose-local.sh env: {}", text(&env));
        let env = String::from_utf8_lossy(&env.stdout)
            .trim()
            .trim_start_matches("export ")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Stack { env, root: repo(), llm: String::new() }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NIGHTSHIFT_WORKER_HTTP_ALLOW", r#"["llm"]"#)
            .current_dir(&self.root)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = self.run("docker", args);
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut all = vec!["compose"];
        all.extend(args);
        self.run(self.root.join("scripts/compose-local.sh").to_str().unwrap(), &all)
    }

    /// The CLI on the host against the published manager port; its JSON output.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(CLI)
            .args(["--endpoint", "https://127.0.0.1:50051", "--tls-ca", "deploy/secrets/ca.crt"])
            .args(["--api-key-file", "deploy/secrets/admin.key", "-o", "json"])
            .args(args)
            .current_dir(&self.root)
            .output()
            .expect("running the nightshift CLI");
        assert!(out.status.success(), "nightshift {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("nightshift {args:?} printed no JSON ({e}): {}", text(&out)))
    }

    /// grpcurl on the host against a published port.
    fn grpcurl(&self, port: u16, method: &str, request: &Value) -> Value {
        let key = std::fs::read_to_string(self.root.join("deploy/secrets/admin.key")).unwrap();
        let out = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
            .args(["-cacert", "deploy/secrets/ca.crt", "-H", &format!("authorization: Bearer {}", key.trim())])
            .args(["-d", &request.to_string(), &format!("127.0.0.1:{port}"), method])
            .current_dir(&self.root)
            .output()
            .expect("running grpcurl (scripts/test.sh installs it)");
        assert!(out.status.success(), "grpcurl {method}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn apply(&self, name: &str, yaml: &str) {
        let path = std::env::temp_dir().join(format!("nightshift-compose-{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        self.cli(&["agent", "apply", "-f", path.to_str().unwrap()]);
    }

    fn runs(&self, agent: &str) -> Vec<Value> {
        self.cli(&["runs", "list", "--agent", agent, "--limit", "1000"]).as_array().cloned().unwrap_or_default()
    }

    fn wait_run(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let run = self.cli(&["runs", "get", id]);
            if run["status"] == status {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} not {status} within {within:?}: {run:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The scripted LLM's counters (`GET /hits` on its published port).
    fn llm_hits(&self) -> Value {
        let mut s = std::net::TcpStream::connect(&self.llm).expect("connecting to the scripted LLM");
        write!(s, "GET /hits HTTP/1.0\r\nHost: llm\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap()
    }

    /// Starts the scripted LLM container on the stack's network as `llm`.
    fn start_llm(&mut self) {
        let _ = self.run("docker", &["rm", "-f", LLM_CONTAINER]);
        let binary = common::bin("nightshift-scripted-llm");
        let project = self.project();
        self.docker(&[
            "run",
            "-d",
            "--name",
            LLM_CONTAINER,
            "--network",
            &format!("{project}_default"),
            "--network-alias",
            "llm",
            "-p",
            "127.0.0.1::8080",
            "-v",
            &format!("{}:/usr/local/bin/nightshift-scripted-llm:ro", binary.display()),
            "debian:bookworm-slim",
            "nightshift-scripted-llm",
            "0.0.0.0:8080",
        ]);
        self.llm = self.docker(&["port", LLM_CONTAINER, "8080"]).lines().next().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.llm).is_err() {
            assert!(Instant::now() < deadline, "the scripted LLM container does not answer on {}", self.llm);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The compose project's name (its network is `<project>_default`).
    fn project(&self) -> String {
        self.env.iter().find(|(k, _)| k == "COMPOSE_PROJECT_NAME").map(|(_, v)| v.clone()).unwrap()
    }

    /// Container ids (12 characters, the containers' host names) of a service's running replicas.
    fn replicas(&self, service: &str) -> BTreeSet<String> {
        let out = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(|l| l[..12].to_owned()).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", text(&self.compose(&["ps"])));
            eprintln!("{}", text(&self.compose(&["logs", "--tail", "30"])));
        }
        let _ = self.run("docker", &["rm", "-f", LLM_CONTAINER]);
        let out = Stack::script(&["down", "--volumes"]);
        eprintln!("compose-local.sh down --volumes: {}", text(&out));
    }
}

/// Signs in to the console container (published on 50056) and reads the run's page.
fn console_shows_the_run(stack: &Stack, run: &str) {
    let html = console_page(stack, &format!("/runs/{run}"));
    for wanted in ["succeeded", "data-step=\"tool\"", "calculate_area", "data-step=\"answer\""] {
        assert!(html.contains(wanted), "the console's run page lacks {wanted}: {html}");
    }
}

/// The console's workers page lists every worker container: it finds them through the compose
/// service's name (`worker_discovery`), which Docker's DNS resolves to each replica.
fn console_lists_the_workers(stack: &Stack, containers: &BTreeSet<String>) {
    let html = console_page(stack, "/workers");
    let sections = html.matches("<section class=\"worker\"").count();
    assert_eq!(sections, containers.len(), "{html}");
    for c in containers {
        // Worker ids are `HOSTNAME-SUFFIX`, and a container's host name is its short id.
        assert!(html.contains(&format!("<code>{c}-")), "the workers page lacks container {c}: {html}");
    }
    assert!(!html.contains("unreachable"), "{html}");
}

/// Signs in to the console container (published on 50056) as admin, over HTTPS with the stack's
/// CA, and reads `path`.
fn console_page(stack: &Stack, path: &str) -> String {
    let secrets = stack.root.join("deploy/secrets");
    let ca = std::fs::read(secrets.join("ca.crt")).unwrap();
    let admin = std::fs::read_to_string(secrets.join("admin.key")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .resolve("nightshift", "127.0.0.1:50056".parse().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = "https://nightshift:50056";
        let signed_in = http
            .post(format!("{base}/login"))
            .header("origin", base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("credential={}&next=%2Fagents", admin.trim()))
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303, "signing in to the console");
        let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");
        let page =
            http.get(format!("{base}{path}")).header("cookie", cookie.split(';').next().unwrap()).send().await.unwrap();
        assert_eq!(page.status(), 200);
        page.text().await.unwrap()
    })
}

/// The container (host name) a run's worker ran in: worker ids are `HOSTNAME-SUFFIX`.
fn container_of(run: &Value) -> String {
    run["worker"].as_str().unwrap_or_default().split('-').next().unwrap_or_default().to_owned()
}

#[test]
fn the_compose_stack_runs_agents_survives_kills_scales_and_keeps_its_data() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let mut stack = Stack::up();
    stack.start_llm();
    phase("stack up, scripted LLM container started");

    // 1. A run through the containers: a tool call, its events, its episode.
    stack.apply(
        "compose-basic",
        "name: compose-basic\nmodel: {provider: openai, model: scripted, base_url: 'http://llm:8080/v1'}\n\
         task:\n  query: |\n    Compute the area of a 3 by 4 rectangle.\n    call calculate_area {\"shape\": \"rectangle\", \"width\": 3, \"height\": 4}\n\
         schedule: {interval: 24h}\ntools: {local: [calculate_area]}\n",
    );
    let basic = stack.cli(&["agent", "trigger", "compose-basic"])["id"].as_str().unwrap().to_owned();
    let run = stack.wait_run(&basic, "succeeded", Duration::from_secs(60));
    let steps = run["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["kind"] == "tool_result" && s["summary"].as_str().unwrap().contains("\"area\":12.0")),
        "no calculate_area result among the steps: {run:#}"
    );
    assert!(run["result"].as_str().unwrap().starts_with("The area is 12."), "{run:#}");
    let events = stack.grpcurl(
        50055,
        "nightshift.v1.EventService/ListEvents",
        &serde_json::json!({"filter": {"run_ids": [basic]}}),
    );
    let types: BTreeSet<&str> =
        events["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    for wanted in ["EVENT_TYPE_RUN_QUEUED", "EVENT_TYPE_TOOL_CALL", "EVENT_TYPE_BACKGROUND_TASK_COMPLETED"] {
        assert!(types.contains(wanted), "the events service has no {wanted} for the run: {types:?}");
    }
    let agent_id = stack.cli(&["agent", "get", "compose-basic"])["id"].as_str().unwrap().to_owned();
    let recall =
        serde_json::json!({"scope": {"agent_id": agent_id, "session": "agent"}, "type": "MEMORY_TYPE_EPISODIC"});
    let episodes = stack.grpcurl(50054, "nightshift.v1.MemoryService/Recall", &recall);
    assert!(
        episodes["records"].as_array().is_some_and(|r| r.iter().any(|e| e["runId"] == basic.as_str())),
        "the memory service has no episode of the run: {episodes:#}"
    );

    phase("a run through the containers: ok");

    // The console container, over HTTPS with the stack's certificate: signing in with the admin
    // key, the run's page shows its timeline (the tool call between the two LLM turns).
    console_shows_the_run(&stack, &basic);
    phase("the console container shows the run");

    // 2. `docker kill` of the worker container in a slow tool call: the run is redelivered to the
    // other worker and succeeds, once.
    stack.apply(
        "compose-slow",
        "name: compose-slow\nmodel: {provider: openai, model: scripted, base_url: 'http://llm:8080/v1'}\n\
         task:\n  query: |\n    Fetch the slow page.\n    call http_get {\"url\": \"http://llm:8080/slow?ms=15000\"}\n\
         schedule: {interval: 24h}\ntools: {local: [http_get]}\n",
    );
    let slow_before = stack.llm_hits()["slow"].as_u64().unwrap();
    let slow = stack.cli(&["agent", "trigger", "compose-slow"])["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.llm_hits()["slow"].as_u64().unwrap() == slow_before {
        assert!(Instant::now() < deadline, "the slow tool call never reached the scripted server");
        std::thread::sleep(Duration::from_millis(200));
    }
    let holder = container_of(&stack.cli(&["runs", "get", &slow]));
    assert!(stack.replicas("worker").contains(&holder), "run held by {holder}, not a worker container");
    stack.docker(&["kill", &holder]);
    let run = stack.wait_run(&slow, "succeeded", Duration::from_secs(180));
    assert_ne!(container_of(&run), holder, "the run finished on the killed container: {run:#}");
    assert!(run["attempt"].as_u64().unwrap() >= 2, "the run was not redelivered: {run:#}");
    let slow_runs = stack.runs("compose-slow");
    assert_eq!(slow_runs.len(), 1, "one trigger, one run: {slow_runs:#?}");
    let running: Vec<Value> = stack
        .cli(&["runs", "list", "--status", "running", "--status", "queued", "--limit", "1000"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["agent"].as_str().is_some_and(|a| a.starts_with("compose-")))
        .collect();
    assert!(running.is_empty(), "runs left running or queued: {running:#?}");

    phase("worker container killed in a slow tool call: the run finished once elsewhere");

    // 3. Four workers under 50 agents at 1 s, and the scheduler SIGKILLed (restarted by its
    // policy): every worker takes runs, and every tick fires exactly once.
    let out = stack.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "worker=4"]);
    assert!(out.status.success(), "scaling to 4 workers: {}", text(&out));
    let workers = stack.replicas("worker");
    assert_eq!(workers.len(), 4, "{workers:?}");
    console_lists_the_workers(&stack, &workers);
    let mut manifests = String::new();
    for i in 0..LOAD_AGENTS {
        // catch_up: ticks missed while the scheduler is down fire when it is back (run_once would
        // fold them into one, by design).
        manifests.push_str(&format!(
            "---\nname: compose-load-{i}\nmodel: {{provider: openai, model: scripted, base_url: 'http://llm:8080/v1'}}\n\
             task: {{query: 'Report.'}}\nschedule: {{interval: 1s, misfire: catch_up, max_catch_up: 120}}\n\
             tools: {{local: [calculate_area]}}\n"
        ));
    }
    stack.apply("compose-load", &manifests);
    std::thread::sleep(Duration::from_secs(10));
    let scheduler = stack.replicas("scheduler").into_iter().next().expect("a scheduler container");
    let pid = stack.docker(&["inspect", "-f", "{{.State.Pid}}", &scheduler]);
    let restarts_before: u64 = stack.docker(&["inspect", "-f", "{{.RestartCount}}", &scheduler]).parse().unwrap();
    let kill = Command::new("kill").args(["-9", &pid]).output().unwrap();
    assert!(kill.status.success(), "kill -9 {pid}: {}", text(&kill));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = stack.docker(&["inspect", "-f", "{{.RestartCount}} {{.State.Running}}", &scheduler]);
        if state.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()) > Some(restarts_before)
            && state.ends_with("true")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the scheduler was not restarted by its policy: {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(15));
    for i in 0..LOAD_AGENTS {
        stack.cli(&["agent", "pause", &format!("compose-load-{i}")]);
    }
    // Runs fired just before the pause finish.
    std::thread::sleep(Duration::from_secs(5));
    let mut took_runs = BTreeSet::new();
    let mut fired = 0;
    for i in 0..LOAD_AGENTS {
        let runs = stack.runs(&format!("compose-load-{i}"));
        let mut ticks: BTreeMap<String, usize> = BTreeMap::new();
        for r in &runs {
            let due =
                r["scheduled_for"].as_str().unwrap_or_else(|| panic!("a scheduled run without scheduled_for: {r:#}"));
            *ticks.entry(due.to_owned()).or_default() += 1;
            if r["status"] == "succeeded" {
                took_runs.insert(container_of(r));
            }
        }
        let doubled: Vec<_> = ticks.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "compose-load-{i}: ticks fired twice: {doubled:?}");
        let mut due: Vec<i64> =
            ticks.keys().map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()).collect();
        due.sort_unstable();
        let gaps: Vec<_> = due.windows(2).filter(|w| w[1] - w[0] != 1000).collect();
        assert!(gaps.is_empty(), "compose-load-{i}: ticks lost (due times not 1 s apart, ms): {gaps:?}");
        assert!(due.len() >= 20, "compose-load-{i}: only {} ticks in ~30 s", due.len());
        fired += due.len();
    }
    eprintln!("{fired} ticks fired over {LOAD_AGENTS} agents, none lost or doubled");
    for w in &workers {
        assert!(took_runs.contains(w), "worker {w} took no run; runs went to {took_runs:?}");
    }

    phase("four workers took runs; scheduler SIGKILL lost and doubled no tick");

    // 4. `down` then `up`, volumes kept: agents, runs and memory are still there.
    let _ = stack.run("docker", &["rm", "-f", LLM_CONTAINER]);
    let out = Stack::script(&["down"]);
    assert!(out.status.success(), "compose-local.sh down: {}", text(&out));
    let out = Stack::script(&["up", "--debug"]);
    assert!(out.status.success(), "compose-local.sh up again: {}", text(&out));
    let agents = stack.cli(&["agent", "list"]);
    let names: BTreeSet<&str> = agents.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert!(names.contains("compose-basic") && names.contains("compose-slow"), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("compose-load-")).count(), LOAD_AGENTS);
    assert_eq!(stack.cli(&["runs", "get", &basic])["status"], "succeeded");
    let episodes = stack.grpcurl(50054, "nightshift.v1.MemoryService/Recall", &recall);
    assert!(
        episodes["records"].as_array().is_some_and(|r| r.iter().any(|e| e["runId"] == basic.as_str())),
        "the episode is gone after down/up: {episodes:#}"
    );

    phase("down/up kept agents, runs and memory");

    // 5. A bad setting: the service exits 1 with one line naming it, no stack trace.
    let out = stack.compose(&[
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-e",
        "NIGHTSHIFT_MANAGER_DATABASE_URL=postgres://nightshift:nightshift@nowhere.invalid:5432/nightshift",
        "manager",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "a manager with an unreachable database: {said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("nightshift-manager: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {said}");
    assert!(errors[0].starts_with("nightshift-manager: database_url: "), "{said}");
    assert!(!said.contains("panicked") && !said.contains("Caused by") && !said.contains("backtrace"), "{said}");
    phase("a bad setting: one error line, exit code 1");

    // 6. `down --volumes` leaves no container, volume or network of the project behind.
    let out = Stack::script(&["down", "--volumes"]);
    assert!(out.status.success(), "compose-local.sh down --volumes: {}", text(&out));
    let label = format!("label=com.docker.compose.project={}", stack.project());
    for list in [&["container", "ls", "-a"][..], &["volume", "ls"], &["network", "ls"]] {
        let mut args = list.to_vec();
        args.extend(["-q", "--filter", &label]);
        let left = stack.docker(&args);
        assert!(left.is_empty(), "{} left behind by down --volumes: {left}", list[0]);
    }
    phase("down --volumes left nothing behind");
}
