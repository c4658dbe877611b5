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

impl v1::AgentRef {
    /// The agent named `name` in the `default` namespace.
    pub fn by_name(name: impl Into<String>) -> Self {
        Self { r#ref: Some(v1::agent_ref::Ref::Name(name.into())), namespace: String::new() }
    }

    /// The agent named `name` in `namespace`.
    pub fn by_name_in(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), ..Self::by_name(name) }
    }

    /// The agent with id `id`.
    pub fn by_id(id: impl Into<String>) -> Self {
        Self { r#ref: Some(v1::agent_ref::Ref::Id(id.into())), namespace: String::new() }
    }
}
