//! Server plumbing shared by every Nightshift role: the [`Role`] trait and [`serve_roles`] (how
//! each binary and `nightshift dev` compose roles), the [`ServerOptions`] section of every role's
//! options, and the gRPC server itself.
//!
//! Every server carries `grpc.health.v1.Health` and server reflection in both the `v1` and the
//! `v1alpha` flavour (grpcurl 1.8 only speaks `v1alpha`), so that
//! `grpcurl -plaintext HOST:PORT list` and `describe` work against any of them, alone or mounted
//! together by `nightshift dev`.

mod auth;
mod auth_options;
mod client;
mod exit;
mod in_process;
mod memory_authority;
mod metrics;
mod oidc;
mod options;
mod role;
mod server;
mod shutdown;
mod tls;
mod trace;

pub use auth::{
    AuditRecord, AuditSink, AuthFailure, Authenticator, Cached, Guard, MAX_CREDENTIAL, StaticKeys, WithStaticKeys,
    admit, caller_name, caller_namespaces, visible_namespaces,
};
pub use auth_options::{AuthConfigError, AuthMode, AuthOptions, LOCAL_CACHE, REMOTE_CACHE, is_loopback};
pub use client::{CallChannel, CallContext, ClientOptions, Transport, traced};
pub use exit::exit_code;
pub use in_process::{InProcess, InProcessCall};
pub use memory_authority::{LEASE_HEADER, MemoryAuthority, RUN_HEADER, RemoteMemoryAuthority};
pub use oidc::{Oidc, OidcConfigError, OidcOptions, WithOidc};
pub use options::{ServerOptions, hostname};
pub use role::{BadEndpoint, Role, RoleError, init_process, serve_roles};
pub use server::{GrpcServer, Listener, ServeError, is_grpc_path};
pub use shutdown::shutdown_signal;
pub use tls::{ServerTls, TlsError, TlsOptions};
pub use tokio_util::sync::CancellationToken;
pub use tonic_health::ServingStatus;

/// The allocator of every service process, which each binary's `main.rs` declares as its
/// `#[global_allocator]` (an allocator is the binary's to choose; one name here keeps the choice
/// in one place). jemalloc: glibc's malloc was a tenth of a run's CPU, and jemalloc took ≈ 10 %
/// off it at the same RSS, where mimalloc took 5 % for 57 MiB more (docs/benchmarks.md,
/// session 15).
pub type Allocator = tikv_jemallocator::Jemalloc;
