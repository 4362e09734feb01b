//! Rust types and gRPC stubs for the Dispatch API (`dispatch.v1`), generated at build time
//! from `proto/dispatch/v1` (the one source of truth).
//!
//! - [`pb`]: the messages, `job_service_client`/`worker_service_client` for callers and
//!   `job_service_server`/`worker_service_server` for the dispatch service. Every message has
//!   proto3-JSON serde impls (camelCase, int64 as string, enums by name).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//! - [`json`]: conversions between `serde_json::Value` and `google.protobuf.Value`.
//! - [`Client`]: a small wrapper with the everyday verbs (connect, create, get, wait, watch,
//!   cancel, retry); the generated clients stay reachable through it.

/// Generated code for the `dispatch.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/dispatch.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dispatch.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of the dispatch protos and their imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dispatch_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `google/rpc/error_details.proto` alone (its import,
/// `google/protobuf/duration.proto`, is in [`FILE_DESCRIPTOR_SET`]), for gRPC reflection.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/error_details_descriptor.bin"));

pub mod client;
pub mod json;
#[cfg(feature = "nats")]
pub mod nats;

pub use client::{Client, Tls, Token, Transport, field_violations, is_terminal};

pub use pbjson_types;
pub use tonic;
