//! The console role: built from its options, mounted as web pages on a server (its own, or
//! `nightshift dev`'s one port), with a background task that drops expired sessions.
use std::sync::Arc;
use std::time::Duration;

use nightshift_rpc::{CancellationToken, GrpcServer, Role, RoleError};

use crate::backend::Backends;
use crate::config::ConsoleConfig;
use crate::error::ConsoleError;
use crate::pages::{App, router};
use crate::session::Sessions;

/// How often expired sessions are dropped.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The console, ready to mount.
pub struct ConsoleRole {
    app: Arc<App>,
}

impl ConsoleRole {
    /// Checks the options and prepares the (lazily connecting) channels to the services.
    pub fn build(cfg: &ConsoleConfig) -> Result<Self, ConsoleError> {
        if cfg.session_ttl.is_zero() || cfg.max_sessions == 0 || cfg.call_timeout.is_zero() {
            return Err(ConsoleError::Invalid(
                "session_ttl, max_sessions and call_timeout must be greater than zero".into(),
            ));
        }
        if !cfg.trace_url.is_empty() && !cfg.trace_url.starts_with("http://") && !cfg.trace_url.starts_with("https://")
        {
            return Err(ConsoleError::Invalid("trace_url: an http:// or https:// URL (with {run_id})".into()));
        }
        let app = App {
            backends: Backends::new(cfg)?,
            sessions: Sessions::new(cfg.session_ttl, cfg.max_sessions),
            secure: cfg.server.tls.serves_tls(),
            trace_url: cfg.trace_url.clone(),
            closing: CancellationToken::new(),
            oidc: crate::oidc::OidcClient::new(&cfg.oidc)?,
            metrics: crate::pages::Sources::new(cfg)?,
        };
        Ok(Self { app: Arc::new(app) })
    }

    /// The console's routes, to serve on any HTTP server (benchmarks, tests).
    pub fn router(&self) -> axum::Router {
        router(self.app.clone())
    }
}

#[async_trait::async_trait]
impl Role for ConsoleRole {
    fn name(&self) -> &'static str {
        "console"
    }

    fn mount(&self, server: &mut GrpcServer) {
        server.pages(self.router());
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<(), RoleError> {
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = purge.tick() => self.app.sessions.purge(),
            }
        }
        // Live streams end now, so that the server's graceful stop does not wait on them.
        self.app.closing.cancel();
        Ok(())
    }
}
