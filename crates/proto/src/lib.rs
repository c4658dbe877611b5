//! Generated code of the `nightshift.v1` gRPC API (see `proto/nightshift/v1/`).
//!
//! Every message, client (`*_client`) and server (`*_server`) lives in [`v1`].

/// The `nightshift.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("nightshift.v1");
}

/// Encoded `FileDescriptorSet` of the whole API (with imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nightshift_descriptor.bin"));

pub use prost_types;
