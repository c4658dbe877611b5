//! `get_system_info`: real facts about the host the worker runs on.
//!
//! Linux figures come from `/proc` and `statvfs`; on other systems the `/proc` ones are `null`.
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_args;
use nightshift_core::governance::Hints;

use crate::{Tool, ToolDef, ToolError, ToolSource};

/// Reports CPU count, load average, memory, disk usage of a path, uptime, hostname and OS.
#[derive(Debug, Default)]
pub struct GetSystemInfo;

#[derive(Deserialize)]
struct Args {
    #[serde(default = "default_path")]
    path: String,
}

fn default_path() -> String {
    "/".into()
}

#[async_trait]
impl Tool for GetSystemInfo {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "get_system_info".into(),
            description: "Returns facts about the host machine as JSON: hostname, OS, kernel, CPU count, load \
                average, memory, disk usage of a path (default /) and uptime."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "minLength": 1, "description": "path whose filesystem's disk usage is reported (default /)"},
                },
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: Args = parse_args(args)?;
        // statvfs on a hung network mount can block: keep it off the async threads.
        tokio::task::spawn_blocking(move || collect(&a.path))
            .await
            .map_err(|e| ToolError::Failed(format!("system info task failed: {e}")))?
            .map(|v| v.to_string())
    }
}

fn collect(path: &str) -> Result<Value, ToolError> {
    let uname = rustix::system::uname();
    let hostname =
        read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| uname.nodename().to_string_lossy().into_owned());
    let cpu_count = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let disk = disk_usage(path)?;
    Ok(json!({
        "hostname": hostname,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": format!("{} {}", uname.sysname().to_string_lossy(), uname.release().to_string_lossy()),
        "cpu_count": cpu_count,
        "cpu_model": cpu_model(),
        "load_average": load_average(),
        "memory": memory(),
        "disk": disk,
        "uptime_seconds": read_trimmed("/proc/uptime")
            .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse::<f64>().ok()))
            .map(|u| u.round() as u64),
    }))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Hardware") || l.starts_with("cpu model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn load_average() -> Option<Value> {
    let s = read_trimmed("/proc/loadavg")?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    let (one, five, fifteen) = (it.next()??, it.next()??, it.next()??);
    Some(json!({"1m": one, "5m": five, "15m": fifteen}))
}

fn memory() -> Option<Value> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total = kib("MemTotal")? * 1024;
    let available = kib("MemAvailable").or_else(|| kib("MemFree"))? * 1024;
    Some(json!({
        "total_bytes": total,
        "available_bytes": available,
        "used_percent": percent(total.saturating_sub(available), total),
        "swap_total_bytes": kib("SwapTotal").map(|v| v * 1024),
        "swap_free_bytes": kib("SwapFree").map(|v| v * 1024),
    }))
}

fn disk_usage(path: &str) -> Result<Value, ToolError> {
    let st = rustix::fs::statvfs(Path::new(path))
        .map_err(|e| ToolError::Failed(format!("cannot read disk usage of '{path}': {e}")))?;
    let frsize = st.f_frsize;
    let total = st.f_blocks * frsize;
    let available = st.f_bavail * frsize;
    let free = st.f_bfree * frsize;
    Ok(json!({
        "path": path,
        "total_bytes": total,
        "available_bytes": available,
        "used_percent": percent(total.saturating_sub(free), total),
    }))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { ((part as f64 / whole as f64) * 1000.0).round() / 10.0 }
}
