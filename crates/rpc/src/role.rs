//! One way to build and run a service role, whether it runs alone (`nightshift-manager`, …) or
//! with the others in one process (`nightshift dev`).
//!
//! Every service crate exposes the same shape: its options (serde, loaded from TOML + env by
//! `nightshift_core::config::load`) → `XxxRole::build(options, deps)` → a [`Role`]. A process
//! then hands its roles to [`serve_roles`], which mounts their gRPC services on one
//! [`GrpcServer`], runs their background work, and shuts them down in order.
use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::options::ServerOptions;
use crate::server::{GrpcServer, Listener, ServeError};

/// The error a role's background work ends with.
pub type RoleError = Box<dyn std::error::Error + Send + Sync>;

/// A built service role.
#[async_trait::async_trait]
pub trait Role: Send + 'static {
    /// Its name, for logs (`manager`, `scheduler`, …).
    fn name(&self) -> &'static str;

    /// Adds the role's gRPC services to `server` and declares them for health and reflection.
    fn mount(&self, server: &mut GrpcServer);

    /// Runs the role's background work (firing loop, queue consumer, …) until `shutdown` is
    /// cancelled, then winds it down (a worker drains). Returning an error cancels `shutdown` for
    /// every role of the process: a role that cannot work stops its process rather than leave it
    /// half up. The default, for roles that only answer requests, waits for the token.
    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        shutdown.cancelled().await;
        Ok(())
    }
}

/// An endpoint option (`manager_endpoint`, `events_endpoint`, …) that is not a valid URI, or whose
/// TLS material cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {source}")]
pub struct BadEndpoint {
    /// The option.
    pub field: &'static str,
    /// Why the URI was refused.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BadEndpoint {
    /// Names the option behind a refused URI: `.map_err(BadEndpoint::of("events_endpoint"))`.
    pub fn of<E: Into<Box<dyn std::error::Error + Send + Sync>>>(field: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self { field, source: source.into() }
    }
}

/// Start-up every binary shares: logs (and OTLP trace export when configured), the process's
/// rustls provider, and the `/metrics` endpoint when `metrics_listen` is set.
pub async fn init_process(server: &ServerOptions) -> Result<(), ServeError> {
    nightshift_telemetry::init(server.log_format);
    // reqwest (LLM, MCP, Chroma) links aws-lc-rs and async-nats / qdrant link ring: rustls needs
    // the process default chosen before the first TLS connection.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if !server.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&server.metrics_listen)
            .await
            .map_err(|e| ServeError::Metrics(e.to_string()))?;
    }
    Ok(())
}

/// Mounts `roles` on one server on `listener`, runs their background work, and serves until
/// `shutdown` resolves (or a role fails). Then, in this order: health turns NOT_SERVING, every
/// role's token is cancelled and its `run` awaited while the server still answers (so a
/// draining worker in the same process can still reach the manager), and the server finishes
/// its in-flight calls.
pub async fn serve_roles(
    roles: Vec<Box<dyn Role>>,
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut server = GrpcServer::new();
    for role in &roles {
        role.mount(&mut server);
    }
    let token = CancellationToken::new();
    let tasks: Vec<_> = roles
        .into_iter()
        .map(|role| {
            let name = role.name();
            let run = tokio::spawn(role.run(token.clone()));
            // A watcher per role, so that a role that fails *or panics* stops the process too.
            let token = token.clone();
            let watcher = tokio::spawn(async move {
                let result = run.await.unwrap_or_else(|join| Err(format!("panicked: {join}").into()));
                if let Err(e) = &result {
                    tracing::error!(role = name, error = %e, "role failed; shutting the process down");
                    token.cancel();
                }
                result
            });
            (name, watcher)
        })
        .collect();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let not_serving = server.not_serving();
    let stop = token.clone();
    let supervisor = tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            () = token.cancelled() => {}
        }
        not_serving.await;
        token.cancel();
        let mut first_error = None;
        for (name, task) in tasks {
            let result = task.await.unwrap_or_else(|join| Err(format!("watcher failed: {join}").into()));
            if let Err(source) = result {
                first_error.get_or_insert(ServeError::Role { role: name, source });
            }
        }
        let _ = stopped_tx.send(());
        first_error
    });
    let served = server
        .serve(listener, async move {
            let _ = stopped_rx.await;
        })
        .await;
    if served.is_err() {
        // The server itself failed: wind the roles down (a worker drains) before returning.
        stop.cancel();
    }
    let roles_ended = supervisor.await;
    served?;
    match roles_ended {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(join) => Err(ServeError::Role { role: "supervisor", source: join.to_string().into() }),
    }
}
