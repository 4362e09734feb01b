//! The gRPC services: `JobService` for producers and operators, `WorkerService` for workers.

mod jobs;
mod workers;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::api::Limits;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{JobRecord, Store};
use crate::watch::Hub;

pub use jobs::JobApi;
pub use workers::WorkerApi;

/// What both services share. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    /// Group commit of single CreateJob calls.
    pub creates: crate::store::Committer,
    /// JetStream, for writing again the run messages of a resumed queue.
    pub js: async_nats::jetstream::Context,
    pub limits: Limits,
    pub config: Arc<Config>,
    /// Wakes the local outbox relay after a transition wrote to an outbox.
    pub relay_wake: Arc<Notify>,
    pub hub: Hub,
    /// Admission control for job creation: one permit per job being created.
    pub admission: Arc<tokio::sync::Semaphore>,
    /// Admission control for the worker RPCs: one permit per call being handled.
    pub worker_admission: Arc<tokio::sync::Semaphore>,
    pub metrics: Metrics,
    /// The API keys when authentication is on.
    pub keys: Option<crate::auth::Keys>,
    /// Open watch streams.
    pub watches: crate::limits::Watches,
    /// Job creation per key.
    pub create_rate: crate::limits::CreateRate,
    /// Cancelled when dispatch stops: open watch streams end, so stopping never waits on
    /// a client.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Shared {
    /// Permits for `n` jobs, or RESOURCE_EXHAUSTED when dispatch is at capacity.
    fn admit(&self, n: usize) -> Result<tokio::sync::SemaphorePermit<'_>, tonic::Status> {
        self.admission.try_acquire_many(n as u32).map_err(|_| {
            self.metrics.rejected.with_label_values(&["overload"]).inc();
            tonic::Status::resource_exhausted(format!(
                "dispatch is at capacity ({} jobs being created at once); retry with backoff",
                self.config.jobs.max_inflight_creates
            ))
        })
    }
}

impl Shared {
    /// A turn for one worker call: waits up to `limits.worker_admission_wait_ms` for one of
    /// `limits.worker_calls`, else RESOURCE_EXHAUSTED with RetryInfo (the worker backs off;
    /// a flood of reports cannot starve the API or run Redis out of memory).
    async fn worker_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, tonic::Status> {
        let wait = std::time::Duration::from_millis(self.config.limits.worker_admission_wait_ms);
        match tokio::time::timeout(wait, self.worker_admission.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.metrics.rejected.with_label_values(&["overload"]).inc();
                let mut details = tonic_types::ErrorDetails::new();
                details.set_retry_info(Some(wait));
                Err(<tonic::Status as tonic_types::StatusExt>::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "dispatch is at capacity ({} worker calls at once, limits.worker_calls); retry in {} ms",
                        self.config.limits.worker_calls,
                        wait.as_millis()
                    ),
                    details,
                ))
            }
        }
    }

    /// RESOURCE_EXHAUSTED (with RetryInfo) when `who` may not create `n` more jobs now.
    fn check_rate(&self, who: Option<&crate::auth::Identity>, n: usize) -> Result<(), tonic::Status> {
        match (who, self.create_rate.take(who, n, std::time::Instant::now())) {
            (Some(id), Err(wait)) => {
                self.metrics.rejected.with_label_values(&["rate"]).inc();
                tracing::warn!(audit = true, key = %id.name, jobs = n, "creation refused: rate limit");
                Err(self.create_rate.refusal(id, wait))
            }
            _ => Ok(()),
        }
    }

    /// A job as JobService shows it: with authentication on, without its lease id, which
    /// only the worker that claimed the job receives (a lease id is a capability).
    fn job_view(&self, r: &JobRecord) -> dispatch_client::pb::Job {
        let mut job = crate::api::job_to_pb(r);
        if self.keys.is_some()
            && let Some(lease) = job.lease.as_mut()
        {
            lease.lease_id.clear();
        }
        job
    }

    /// A store error as a status, counting Redis failures.
    fn store_err(&self, e: crate::store::Error) -> tonic::Status {
        if matches!(e, crate::store::Error::Redis(_)) {
            self.metrics.redis_errors.inc();
        }
        tonic::Status::from(e)
    }
}

/// The name of the calling key, for audit lines ("" when authentication is off).
fn key_name(ext: &tonic::Extensions) -> &str {
    ext.get::<crate::auth::Identity>().map(|i| &*i.name).unwrap_or("")
}

/// The server span of one RPC, a child of the caller's span when it sent a `traceparent`
/// (gRPC metadata, or the HTTP header through the REST gateway). Job fields are recorded
/// once known ([`note_job`]); they become span attributes and log fields.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = server_span(method);
    let caller = metadata.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
    dispatch_telemetry::set_parent(&span, caller);
    let trace_id = dispatch_telemetry::trace_id(&span, caller);
    if !trace_id.is_empty() {
        span.record("trace_id", trace_id.as_str());
    }
    span
}

/// A server span for `method`, its job fields still empty.
fn server_span(method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        job_id = tracing::field::Empty,
        queue = tracing::field::Empty,
        job_type = tracing::field::Empty,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// One server span per item of a batch call, each a child of its item's trace context (the
/// item's `traceparent`, else the call's), so every job keeps one trace. Empty when traces are
/// not exported: then a batch costs one span, not one per job.
fn item_spans<'a>(
    method: &'static str,
    metadata: &tonic::metadata::MetadataMap,
    traceparents: impl Iterator<Item = &'a str>,
) -> Vec<tracing::Span> {
    if !dispatch_telemetry::exporting() {
        return Vec::new();
    }
    let call = metadata.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
    traceparents
        .map(|tp| {
            let span = server_span(method);
            dispatch_telemetry::set_parent(&span, if tp.is_empty() { call } else { tp });
            span
        })
        .collect()
}

/// Records the job's id, queue, type and attempt on the current RPC span.
fn note_job(job: &JobRecord) {
    let span = tracing::Span::current();
    span.record("job_id", job.id.as_str());
    span.record("queue", job.queue.as_str());
    span.record("job_type", job.job_type.as_str());
    span.record("attempt", job.attempt);
    let id = dispatch_telemetry::trace_id(&span, &job.traceparent);
    if !id.is_empty() {
        span.record("trace_id", id.as_str());
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
