//! A gRPC server with health and reflection built in.
use std::future::Future;
use std::net::SocketAddr;

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tower_layer::Layer;

use crate::auth::{AuditSink, AuthLayer, Guard};
use crate::in_process::InProcess;
use crate::tls::ServerTls;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The `/metrics` endpoint could not start.
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    /// The `[auth]` section cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] crate::auth_options::AuthConfigError),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A role's background work failed.
    #[error("role {role}: {source}")]
    Role {
        /// The role.
        role: &'static str,
        /// Cause.
        source: crate::role::RoleError,
    },
}

/// Routes of one server process plus its health reporter.
///
/// Add application services with [`GrpcServer::routes`] (`add_service`), declare them with
/// [`GrpcServer::serving`], then [`GrpcServer::serve`].
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    names: Vec<&'static str>,
    pages: Option<axum::Router>,
}

/// Whether `path` can name a gRPC method: `/<package>.<Service>/<Method>`, the first segment
/// always holding a dot. Every other path is a web page ([`GrpcServer::pages`]), which the
/// gRPC auth layer leaves to the page handlers (they sign their users in themselves) and which
/// can never reach a gRPC service, so that no call bypasses the auth layer by its path.
pub fn is_grpc_path(path: &str) -> bool {
    path.strip_prefix('/').and_then(|p| p.split('/').next()).is_some_and(|service| service.contains('.'))
}

impl GrpcServer {
    /// A server that carries health; reflection (v1 and v1alpha) is added by
    /// [`GrpcServer::serve`] for exactly the services declared with [`GrpcServer::serving`], so
    /// `grpcurl list` never shows a service this process does not serve.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self { routes, health, names: Vec::new(), pages: None }
    }

    fn reflection(&self) -> tonic_reflection::server::Builder<'static> {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(nightshift_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in &self.names {
            b = b.with_service_name(*name);
        }
        b
    }

    /// The routes, to add application services to.
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Serves `pages` (HTTP/1.1 and HTTP/2) on the same port for every path that is not a gRPC
    /// path ([`is_grpc_path`]): the console in `nightshift dev`. The pages authenticate their
    /// own users; the gRPC auth layer does not see them.
    pub fn pages(&mut self, pages: axum::Router) -> &mut Self {
        self.pages = Some(pages);
        self
    }

    /// Declares a mounted service (by its full gRPC name) for health checks.
    pub fn serving(&mut self, service_name: &'static str) -> &mut Self {
        self.names.push(service_name);
        self
    }

    /// The health reporter, to flip services to NOT_SERVING (e.g. while draining).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Reports `""` and every declared service NOT_SERVING, for the time between a shutdown
    /// signal and the end of serving (load balancers and readiness probes stop sending calls).
    pub fn not_serving(&self) -> impl Future<Output = ()> + Send + 'static {
        let (health, names) = (self.health.clone(), self.names.clone());
        async move {
            health.set_service_status("", ServingStatus::NotServing).await;
            for name in names {
                health.set_service_status(name, ServingStatus::NotServing).await;
            }
        }
    }

    /// Binds `addr` (use port 0 for an ephemeral port).
    pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr: addr.to_owned(), source })
    }

    /// Binds `options.listen` and loads the TLS certificate when `options.tls` configures one:
    /// what a role's binary serves on.
    ///
    /// Calls are admitted by `guard` (see [`crate::AuthOptions::guard`]).
    pub async fn listen(options: &crate::ServerOptions, guard: Guard) -> Result<Listener, ServeError> {
        let tls = ServerTls::load(&options.tls)?;
        Ok(Listener {
            tcp: Self::bind(&options.listen).await?,
            tls,
            guard,
            audit: None,
            in_process: options.in_process.clone(),
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes in-flight calls.
    pub async fn serve(
        mut self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Listener { tcp, tls, guard, audit, in_process } = listener.into();
        let v1 = self.reflection().build_v1()?;
        let v1alpha = self.reflection().build_v1alpha()?;
        self.routes.add_service(v1).add_service(v1alpha);
        let local: Option<SocketAddr> = tcp.local_addr().ok();
        self.health.set_service_status("", ServingStatus::Serving).await;
        for name in &self.names {
            self.health.set_service_status(*name, ServingStatus::Serving).await;
        }
        tracing::info!(addr = ?local, tls = tls.is_some(), services = ?self.names, pages = self.pages.is_some(),
            "gRPC server listening");
        let pages = self.pages.is_some();
        let mut routes = self.routes.routes();
        if let Some(http) = self.pages {
            // A path no gRPC service claims goes to the pages instead of UNIMPLEMENTED.
            routes = tonic::service::Routes::from(routes.into_axum_router().fallback_service(http));
        }
        // The same stack as the network's below (metrics outside, auth inside, one span per
        // call), for the calls of this process's own roles.
        in_process.serve(
            crate::metrics::MetricsLayer
                .layer(AuthLayer { guard: guard.clone(), audit: audit.clone(), pages }.layer(routes.clone())),
        );
        let router = tonic::transport::Server::builder()
            // Browsers speak HTTP/1.1 to a plaintext port.
            .accept_http1(pages)
            // One span per call, named by its gRPC method: exported over OTLP when telemetry
            // is configured to (see nightshift_telemetry::init).
            .trace_fn(crate::trace::server_span)
            // Requests and latency by method and status code, on every server's /metrics.
            .layer(crate::metrics::MetricsLayer)
            // Inside the metrics layer, so that refused calls are counted too.
            .layer(AuthLayer { guard, audit, pages })
            .add_routes(routes);
        let served = match tls {
            Some(tls) => router.serve_with_incoming_shutdown(crate::tls::incoming(tcp, tls), shutdown).await,
            None => {
                router
                    .serve_with_incoming_shutdown(
                        // Without TCP_NODELAY small responses wait ~40 ms for the peer's delayed
                        // ACK (measured: worker start p50 44.8 ms → 1.9 ms; docs/benchmarks.md).
                        tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true)),
                        shutdown,
                    )
                    .await
            }
        };
        in_process.stop();
        served?;
        tracing::info!(addr = ?local, "gRPC server stopped");
        Ok(())
    }
}

/// A bound socket and how connections on it are secured.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
    guard: Guard,
    audit: Option<AuditSink>,
    in_process: InProcess,
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Sends a record of every mutating call to `sink` besides the log.
    pub fn with_audit(mut self, sink: AuditSink) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Admits calls with `guard`.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// Also serves the calls of this process's own clients routed by `link` (`nightshift dev`).
    pub fn with_in_process(mut self, link: InProcess) -> Self {
        self.in_process = link;
        self
    }

    /// Serves TLS with `tls` (`None` = plaintext).
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }
}

/// A plain socket serves plaintext h2c without authentication, as tests and in-process
/// harnesses use it.
impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, tls: None, guard: Guard::Open, audit: None, in_process: InProcess::default() }
    }
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}
