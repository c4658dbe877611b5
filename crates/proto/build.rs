//! Compiles proto/nightshift/v1/*.proto with protox (pure Rust, no system `protoc`), generates the
//! tonic clients/servers, and writes the encoded descriptor set used by gRPC server reflection.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "nightshift/v1/common.proto",
        "nightshift/v1/manager.proto",
        "nightshift/v1/scheduler.proto",
        "nightshift/v1/worker.proto",
        "nightshift/v1/memory.proto",
        "nightshift/v1/events.proto",
        "nightshift/v1/auth.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("nightshift_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps make encodings deterministic (specs are compared and stored as bytes).
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
