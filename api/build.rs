//! Generates the gRPC code from `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "workload.proto",
            "warden/v1/agent.proto",
            "warden/v1/admin.proto",
            "grpc/health/v1/health.proto",
        ],
        ["proto"],
    )?;
    // The Workload API's descriptors alone, for gRPC server reflection on the agent socket (W-14).
    let workload = protox::compile(["workload.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("workload_descriptor.bin"),
        prost::Message::encode_to_vec(&workload),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
