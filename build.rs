//! Compiles `proto/` once for the whole workspace with protox (pure Rust: no `protoc`
//! needed on the machine) and tonic-prost-build, and writes the encoded
//! `FileDescriptorSet` (`writ_descriptor.bin` in `OUT_DIR`) that server reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/writ/v1/writ.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("writ_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
