//! The example configuration files in config/ load into the services' config types (which deny
//! unknown keys), so they cannot drift from the code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config").join(name)
}

#[test]
fn example_configs_load() {
    let m: nightshift_manager::ManagerConfig =
        nightshift_core::config::load(Some(&example("manager.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(m.server.listen, "0.0.0.0:50051");
    let s: nightshift_scheduler::SchedulerConfig =
        nightshift_core::config::load(Some(&example("scheduler.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(s.shard_count, 64);
    let w: nightshift_worker::WorkerConfig =
        nightshift_core::config::load(Some(&example("worker.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(w.concurrency, 64);
    assert_eq!(w.queue.name, "nightshift-runs");
    assert_eq!(w.memory_endpoint, "http://127.0.0.1:50054");
    let mem: nightshift_memory::MemoryConfig =
        nightshift_core::config::load(Some(&example("memory.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(mem.embedder.kind, nightshift_memory::config::EmbedderKind::MiniLm);
    assert!(mem.vector.url.starts_with("pgvector://"));
    let dev: nightshift_cli::DevConfig =
        nightshift_core::config::load(Some(&example("dev.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(dev.worker.concurrency, 4);
    assert_eq!(dev.worker.tools.http_allow, ["https://api.github.com/"]);
    let console: nightshift_console::ConsoleConfig =
        nightshift_core::config::load(Some(&example("console.toml")), "NIGHTSHIFT_TEST_UNUSED").unwrap();
    assert_eq!(console.events_endpoint, "https://events:50055");
    assert!(console.trace_url.contains("{run_id}"));
}

#[test]
fn unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\ndatabse_url = \"typo\"\n").unwrap();
    let err = nightshift_core::config::load::<nightshift_manager::ManagerConfig>(Some(&path), "NIGHTSHIFT_TEST_UNUSED")
        .unwrap_err()
        .to_string();
    assert!(err.contains("databse_url"), "{err}");
}

#[test]
fn bad_values_name_their_key_also_in_flattened_sections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, expected) in [
        ("log_format = \"JSON\"\n", "log_format"),
        ("queue_ack_wait = \"soon\"\n", "queue_ack_wait"),
        ("default_lease_ttl = \"soon\"\n", "default_lease_ttl"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err =
            nightshift_core::config::load::<nightshift_manager::ManagerConfig>(Some(&path), "NIGHTSHIFT_TEST_UNUSED")
                .unwrap_err()
                .to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.contains("JSON") || err.contains("'soon'"), "the bad value is quoted: {err}");
    }
}
