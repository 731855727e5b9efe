//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the tonic
//! client and server into `OUT_DIR`. The encoded descriptor set is kept for server
//! reflection, so reflection clients can list the API without a proto file.
use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/baton/v1/coordinator.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("baton_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
