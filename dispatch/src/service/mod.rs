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
    /// Admission control for job creation: one permit per job being created.
    pub admission: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Permits for `n` jobs, or RESOURCE_EXHAUSTED when dispatch is at capacity.
    fn admit(&self, n: usize) -> Result<tokio::sync::SemaphorePermit<'_>, tonic::Status> {
        self.admission.try_acquire_many(n as u32).map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "dispatch is at capacity ({} jobs being created at once); retry with backoff",
                self.config.jobs.max_inflight_creates
            ))
        })
    }
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
