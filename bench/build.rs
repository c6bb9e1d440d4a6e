//! Compiles the baseline server's proto (`proto/bench/v1/empty.proto`) with protox and
//! tonic-prost-build, exactly as the main workspace's `build.rs` compiles Writ's, so the
//! empty-RPC floor goes through the same code generation as Writ's own services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/bench/v1/empty.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
