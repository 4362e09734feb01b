//! Generates the REST gateway from the `google.api.http` annotations in `proto/dispatch/v1`:
//! the route table and typed calls (`rest_routes.rs`), the OpenAPI document (`openapi.json`)
//! and the HTML reference (`api.html`), all into OUT_DIR. See `tools/restgen`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = protox::Compiler::new([&root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["dispatch/v1/job_service.proto", "dispatch/v1/worker_service.proto"])?
        .encode_file_descriptor_set();
    let api = dispatch_restgen::Api::from_descriptor_set(&bytes, &["dispatch.v1"])?;

    let routes = dispatch_restgen::rust::generate(
        &api,
        &dispatch_restgen::rust::Options {
            runtime: "crate::gateway::transcode",
            packages: &[("dispatch.v1", "dispatch_client::pb")],
        },
    )?;
    std::fs::write(out.join("rest_routes.rs"), routes)?;

    let doc = dispatch_restgen::openapi::generate(
        &api,
        &dispatch_restgen::openapi::Info {
            title: "Dispatch API",
            version: env!("CARGO_PKG_VERSION"),
            description: "REST gateway of Dispatch, a distributed job dispatcher. Every route is \
                          derived from the google.api.http annotations of dispatch.v1 and calls \
                          the same code as gRPC. JSON follows the proto3 JSON mapping.",
        },
    );
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    std::fs::write(out.join("openapi.json"), &text)?;
    std::fs::write(out.join("api.html"), dispatch_restgen::html::generate(&doc))?;
    Ok(())
}
