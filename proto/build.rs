//! Generates the `lorasweep.v1` code with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // compile_fds knows no paths, so cargo must be told what to watch.
    println!("cargo:rerun-if-changed=lorasweep");
    let fds = protox::compile(["lorasweep/v1/lorasweep.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
