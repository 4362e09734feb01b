//! Dispatch: a gRPC-first distributed job dispatcher.
//!
//! # Layout
//! - [`auth`]: API keys, roles, the rule of every RPC, and the gRPC layer that checks them.
//! - [`limits`]: watch streams per key and in total, job creation rate per key.
//! - [`config`]: layered configuration (defaults, TOML, `DISPATCH_*`, flags).
//! - [`api`]: protobuf ↔ domain conversions, request validation, error → status mapping.
//! - [`store`]: job records in Redis; each transition is one Lua script (`store/lua/`) that
//!   checks state and lease and appends to the outbox atomically.
//! - [`bus`]: NATS JetStream streams, subjects and message encoding.
//! - [`relay`]: publishes the outbox to JetStream, deleting entries after their ack.
//! - [`background`]: the scheduler, lease reaper and sweeper loops.
//! - [`watch`]: wake-ups for `WatchJob` streams.
//! - [`service`]: the `JobService` and `WorkerService` gRPC implementations.
//! - [`metrics`]: Prometheus metrics (`GET /metrics` on the HTTP port).
//! - [`gateway`]: REST/JSON over HTTP, generated from the proto's `google.api.http`
//!   annotations, with the OpenAPI document and `/api/docs`.
//! - [`server`]: wires it all: [`server::start`] returns a handle with the bound address.

pub mod api;
pub mod auth;
pub mod background;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod gateway;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod relay;
pub mod server;
pub mod service;
pub mod store;
pub mod watch;

pub use config::Config;
pub use server::{Running, start};
