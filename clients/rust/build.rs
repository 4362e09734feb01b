//! Compiles `proto/dispatch/v1` with protox (no system protoc) into Rust types, tonic stubs
//! and proto3-JSON serde impls, and writes the encoded descriptor set for reflection.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // Encoded bytes keep extension options (google.api.http) that the prost types drop.
    let bytes = protox::Compiler::new([&root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files([
            "dispatch/v1/job.proto",
            "dispatch/v1/job_service.proto",
            "dispatch/v1/worker_service.proto",
        ])?
        .encode_file_descriptor_set();
    std::fs::write(out.join("dispatch_descriptor.bin"), &bytes)?;
    // google.rpc's error details on their own, for reflection: grpcurl then prints the field
    // violations of an INVALID_ARGUMENT instead of "google.rpc.BadRequest is not recognized".
    let details = protox::Compiler::new([&root])?
        .include_imports(false)
        .open_files(["google/rpc/error_details.proto"])?
        .encode_file_descriptor_set();
    std::fs::write(out.join("error_details_descriptor.bin"), &details)?;

    let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .ignore_unknown_fields()
        .build(&[".dispatch"])?;
    Ok(())
}
