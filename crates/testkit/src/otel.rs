//! A **real** OpenTelemetry collector for trace tests: rotel (PyPI, installed by `otel/setup.sh`,
//! cached) receiving OTLP/gRPC and printing every span to its debug log, which [`Receiver::spans`]
//! parses. The services under test export to it exactly as they would to any collector.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mcp::free_port;

/// One received span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub id: String,
    /// Hex parent span id; empty for a root span.
    pub parent_id: String,
    /// Span name.
    pub name: String,
    /// String attributes (`key: Str(value)`); other types keep their printed form.
    pub attributes: BTreeMap<String, String>,
}

/// A running rotel agent, killed on drop.
pub struct Receiver {
    _child: crate::ChildGuard,
    dir: tempfile::TempDir,
    /// OTLP/gRPC endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:PORT`).
    pub endpoint: String,
}

impl Receiver {
    /// Installs (if needed) and starts rotel on a free port, waiting until it listens.
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otel/setup.sh");
        let vars = crate::run_setup(&script, &[], "rotel");
        let rotel = vars.get("ROTEL").cloned().unwrap_or_else(|| panic!("otel/setup.sh did not print ROTEL"));
        let dir = tempfile::tempdir().expect("temp dir");
        let (grpc, http) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("spans.log")).expect("create spans.log");
        let child = std::process::Command::new(rotel)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "blackhole", "--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--pid-file", &dir.path().join("rotel.pid").to_string_lossy()])
            .args(["--log-file", &dir.path().join("rotel.log").to_string_lossy()])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start rotel-agent");
        let child = crate::ChildGuard::ready(child, "rotel-agent", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
        });
        Self { _child: child, dir, endpoint: format!("http://127.0.0.1:{grpc}") }
    }

    /// The file rotel prints received spans to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("spans.log")
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        parse(&std::fs::read_to_string(self.log_path()).unwrap_or_default())
    }
}

/// Parses rotel's detailed debug log (the OpenTelemetry collector's `debug` exporter format):
/// `ResourceSpans #n` blocks carrying `service.name`, each holding `Span #n` blocks.
pub fn parse(log: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    let mut in_resource = false;
    for line in log.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            service.clear();
            in_resource = true;
        } else if t.starts_with("Span #") {
            spans.extend(current.take());
            in_resource = false;
            current = Some(Span {
                service: service.clone(),
                trace_id: String::new(),
                id: String::new(),
                parent_id: String::new(),
                name: String::new(),
                attributes: BTreeMap::new(),
            });
        } else if t.starts_with("ScopeSpans #") {
            spans.extend(current.take());
            in_resource = false;
        } else if let Some(attr) = t.strip_prefix("-> ") {
            let Some((k, v)) = attr.split_once(": ") else { continue };
            let v = v.strip_prefix("Str(").and_then(|v| v.strip_suffix(')')).unwrap_or(v);
            if in_resource && k == "service.name" {
                service = v.to_owned();
            } else if let Some(s) = current.as_mut() {
                s.attributes.insert(k.to_owned(), v.to_owned());
            }
        } else if let (Some(s), Some((k, v))) = (current.as_mut(), t.split_once(':')) {
            let v = v.trim().to_owned();
            match k.trim() {
                "Trace ID" => s.trace_id = v,
                "Parent ID" => s.parent_id = v,
                "ID" => s.id = v,
                "Name" => s.name = v,
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_detailed_debug_log() {
        let log = "\
ResourceSpans #0
Resource attributes:
     -> service.name: Str(nightshift-worker)
ScopeSpans #0
InstrumentationScope nightshift
Span #0
    Trace ID       : 3c40ad88715c2ba28064584eaebd2784
    Parent ID      : 
    ID             : adb16da8d8365213
    Name           : agent.run
    Kind           : SPAN_KIND_CONSUMER
Attributes:
     -> run: Str(r1)
     -> busy_ns: Int(10)
Span #1
    Trace ID       : 3c40ad88715c2ba28064584eaebd2784
    Parent ID      : adb16da8d8365213
    ID             : 83393c0dfef93778
    Name           : llm.chat
ResourceSpans #1
Resource attributes:
     -> service.name: Str(nightshift-manager)
ScopeSpans #0
Span #0
    Trace ID       : 3c40ad88715c2ba28064584eaebd2784
    Parent ID      : 83393c0dfef93778
    ID             : 0000000000000001
    Name           : /nightshift.v1.ManagerService/StartRun
";
        let spans = parse(log);
        let names: Vec<(&str, &str, &str)> =
            spans.iter().map(|s| (s.service.as_str(), s.name.as_str(), s.parent_id.as_str())).collect();
        assert_eq!(
            names,
            [
                ("nightshift-worker", "agent.run", ""),
                ("nightshift-worker", "llm.chat", "adb16da8d8365213"),
                ("nightshift-manager", "/nightshift.v1.ManagerService/StartRun", "83393c0dfef93778"),
            ]
        );
        assert_eq!(spans[0].attributes.get("run").map(String::as_str), Some("r1"));
        assert_eq!(spans[0].attributes.get("busy_ns").map(String::as_str), Some("Int(10)"));
        assert!(spans.iter().all(|s| s.trace_id == "3c40ad88715c2ba28064584eaebd2784"));
    }
}
