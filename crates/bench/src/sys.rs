//! What the process and the machine look like, read from `/proc` (Linux only, like the targets).
use std::time::Duration;

use serde::Serialize;

/// The machine a figure was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    /// `rustc` processes seen when the run started: the machine is shared with builds.
    pub concurrent_rustc: usize,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Self { cpu_model, cores, ram_gib: ram_kib / 1024.0 / 1024.0, kernel, concurrent_rustc: count_rustc() }
    }
}

/// The `/proc/PID` directories of the running processes named `name`.
fn processes_named(name: &str) -> impl Iterator<Item = std::path::PathBuf> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(move |e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|e| e.path())
}

/// Number of running `rustc` processes (other engineers' builds share the 2 cores).
pub fn count_rustc() -> usize {
    processes_named("rustc").count()
}

/// A `kB` field of a `/proc/PID/status` text, in MiB.
fn status_mib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
}

/// Resident memory now and at its peak, in MiB (`VmRSS`, `VmHWM`).
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status_mib(&status, "VmRSS:").unwrap_or(0.0), status_mib(&status, "VmHWM:").unwrap_or(0.0))
}

/// Resident memory of the first running process named `name`, in MiB.
pub fn rss_mib_of(name: &str) -> Option<f64> {
    processes_named(name)
        .find_map(|dir| std::fs::read_to_string(dir.join("status")).ok())
        .and_then(|status| status_mib(&status, "VmRSS:"))
}

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib_of_pid(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_mib(&status, "VmRSS:")
}

/// CPU time (user + system) used by this process so far.
pub fn cpu_time() -> Duration {
    cpu_time_at("/proc/self/stat")
}

/// CPU time (user + system) used by process `pid` so far.
pub fn cpu_time_of(pid: u32) -> Duration {
    cpu_time_at(&format!("/proc/{pid}/stat"))
}

/// CPU time used so far by every running process named `name` together (a server's forked
/// backends included: Postgres runs one process per connection).
pub fn cpu_time_of_named(name: &str) -> Duration {
    processes_named(name).map(|dir| cpu_time_at(&dir.join("stat").to_string_lossy())).sum()
}

fn cpu_time_at(path: &str) -> Duration {
    // Fields 14 and 15 of /proc/PID/stat, counted after the `(comm)` field, which may hold spaces.
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // USER_HZ is 100 on every Linux ABI this runs on; getconf would need libc.
    100.0
}

/// Resets the peak RSS (`VmHWM`) so that a scenario reports its own peak, not an earlier one's
/// (`all` runs every scenario in one process). The current RSS still includes heap the
/// allocator kept from earlier scenarios: run a scenario alone for its exact RSS.
pub fn reset_peak_rss() {
    // "5" resets the peak resident set size (Linux >= 4.0); harmless if refused.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
