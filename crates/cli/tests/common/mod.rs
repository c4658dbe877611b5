//! Helpers of the multi-process tests: the service binaries as child processes on loopback.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

/// target/debug, where `cargo test --workspace` builds every binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &str, binary: &str, env: &[(String, String)]) -> Proc {
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ns-dist-{}-{name}.log", std::process::id()))).unwrap();
    let mut cmd = Command::new(bin(binary));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { name: name.to_owned(), child: cmd.spawn().unwrap() }
}

pub async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn by_name(name: &str) -> Option<pb::AgentRef> {
    Some(pb::AgentRef { r#ref: Some(pb::agent_ref::Ref::Name(name.into())) })
}

pub async fn runs_of(m: &mut ManagerServiceClient<Channel>, agent: &str) -> Vec<pb::Run> {
    m.list_runs(pb::ListRunsRequest { agent: by_name(agent), page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs
}
