//! The gRPC services: `JobService` for producers and operators, `WorkerService` for workers.

mod jobs;
mod workers;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::api::Limits;
use crate::config::Config;
use crate::store::Store;
use crate::watch::Hub;

pub use jobs::JobApi;
pub use workers::WorkerApi;

/// What both services share. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub limits: Limits,
    pub config: Arc<Config>,
    /// Wakes the local outbox relay after a transition wrote to the outbox.
    pub relay_wake: Arc<Notify>,
    pub hub: Hub,
}

/// The caller's W3C traceparent, if it sent one in the gRPC metadata.
fn traceparent<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or("")
        .to_string()
}
