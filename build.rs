//! Compiles `proto/` once for the whole workspace with protox (pure Rust: no `protoc`
//! needed on the machine) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/writ/v1/writ.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
