//! The `nightshift` command line.
//!
//! Exit codes: 0 success, 1 other failure, 2 usage error, 3 not found, 4 invalid input,
//! 5 conflict or wrong state (already exists, version conflict, paused...), 6 server unreachable.

// The CLI's output is stdout (tables, JSON, YAML; the address `nightshift dev` bound).
#![allow(clippy::print_stdout)]

mod agent;
mod approvals;
mod args;
mod auth;
mod dev;
mod events;
mod models;
mod output;
mod replay;
mod runs;
mod watch;

pub use args::Cli;
pub use dev::{DevConfig, DevWiring};

use args::Command;
use nightshift_rpc::{CallChannel, ClientOptions, TlsOptions};
use tonic::Code;

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = Server::of(&cli)?;
    match cli.command {
        Command::Dev(dev) => dev::run(dev, cli.log_format).await,
        Command::Agent(cmd) => agent::run(&server, cli.output, cmd).await,
        Command::Runs(cmd) => runs::run(&server, cli.output, cmd).await,
        Command::Approvals(cmd) => approvals::run(&server, cli.output, cmd).await,
        Command::Costs { by, since } => approvals::costs(&server, cli.output, &by, since.as_deref()).await,
        Command::Events(cmd) => events::run(&server, cli.output, cmd).await,
        Command::Auth(cmd) => auth::run(&server, cli.output, cmd).await,
        Command::Models(cmd) => models::run(cli.output, cmd).await,
    }
}

/// The gRPC status behind an error, if any.
fn status_of(e: &anyhow::Error) -> Option<&tonic::Status> {
    e.chain().find_map(|c| c.downcast_ref::<tonic::Status>())
}

/// A readable one-line description of an error (gRPC statuses without their internals).
pub fn describe_error(e: &anyhow::Error) -> String {
    match status_of(e) {
        Some(s) => {
            let kind = match s.code() {
                Code::InvalidArgument => "invalid input",
                Code::NotFound => "not found",
                Code::AlreadyExists => "already exists",
                Code::FailedPrecondition => "not possible now",
                Code::Aborted => "conflict",
                Code::Unavailable => "server unavailable",
                Code::DeadlineExceeded => "timed out",
                _ => "server error",
            };
            let context: Vec<String> =
                e.chain().take_while(|c| c.downcast_ref::<tonic::Status>().is_none()).map(|c| c.to_string()).collect();
            let prefix = if context.is_empty() { String::new() } else { format!("{}: ", context.join(": ")) };
            format!("{prefix}{kind}: {}", s.message())
        }
        None => format!("{e:#}"),
    }
}

/// The process exit code for an error (see the crate docs).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match status_of(e).map(tonic::Status::code) {
        Some(Code::NotFound) => 3,
        Some(Code::InvalidArgument) => 4,
        Some(Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted) => 5,
        Some(Code::Unavailable) => 6,
        _ => 1,
    }
}

/// The server the command talks to and how.
pub(crate) struct Server {
    endpoint: String,
    client: ClientOptions,
    /// `--namespace` ("" = not given).
    namespace: String,
}

impl Server {
    fn of(cli: &Cli) -> anyhow::Result<Self> {
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let tls = TlsOptions {
            ca_file: path(&cli.tls_ca),
            cert_file: path(&cli.tls_cert),
            key_file: path(&cli.tls_key),
            ..TlsOptions::default()
        };
        let api_key = match (&cli.api_key, &cli.api_key_file) {
            (Some(key), _) => key.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("--api-key-file {}: {e}", file.display()))?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        Ok(Self {
            endpoint: cli.endpoint.clone(),
            client: ClientOptions { tls, api_key, ..ClientOptions::default() },
            namespace: cli.namespace.clone().unwrap_or_default(),
        })
    }

    /// A reference to the agent `name` in `--namespace` (`default` when not given).
    pub(crate) fn agent(&self, name: impl Into<String>) -> Option<nightshift_proto::v1::AgentRef> {
        Some(nightshift_proto::v1::AgentRef::by_name_in(self.namespace.clone(), name))
    }

    /// `--namespace` as a list filter ("" = every namespace the credential holds).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A connected channel whose calls carry the CLI's credential.
    pub(crate) async fn channel(&self) -> anyhow::Result<CallChannel> {
        let endpoint = self.client.endpoint("--endpoint", &self.endpoint)?.timeout(std::time::Duration::from_secs(30));
        let channel = endpoint.connect().await.map_err(|e| {
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            anyhow::Error::new(tonic::Status::unavailable(format!(
                "cannot reach {}: {e}{cause} (is `nightshift dev` running?)",
                self.endpoint
            )))
        })?;
        Ok(self.client.wrap(channel))
    }

    /// A manager client.
    pub(crate) async fn manager(
        &self,
    ) -> anyhow::Result<nightshift_proto::v1::manager_service_client::ManagerServiceClient<CallChannel>> {
        Ok(nightshift_proto::v1::manager_service_client::ManagerServiceClient::new(self.channel().await?))
    }
}
