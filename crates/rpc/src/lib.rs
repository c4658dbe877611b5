//! gRPC plumbing shared by every Nightshift server.
//!
//! Every server carries `grpc.health.v1.Health` and server reflection in both the `v1` and the
//! `v1alpha` flavour (grpcurl 1.8 only speaks `v1alpha`), so that
//! `grpcurl -plaintext HOST:PORT list` and `describe` work against any of them, alone or mounted
//! together by `nightshift dev`.

mod metrics;
mod server;
mod shutdown;
mod trace;

pub use server::{GrpcServer, ServeError};
pub use shutdown::shutdown_signal;
pub use tonic_health::ServingStatus;
pub use trace::{TraceContext, TracedChannel, traced};
