//! Generates the gRPC server and client from `proto/mvserve.proto`. The .proto is compiled by
//! protox (pure Rust), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mvserve.proto");
    let fds = protox::compile(["mvserve.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
