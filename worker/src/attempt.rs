//! Running a claimed job: its handler under a timeout, its lease kept by the lease loop, its
//! outcome reported.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_client::{json, pb};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease::{self, Leases, Stop};
use crate::report::{self, Reporter};
use crate::rpc::{Client, pb_duration, std_duration, traced};
use crate::{Handler, JobContext, WorkerConfig};

pub(crate) type Handlers = Arc<HashMap<String, Handler>>;

/// How an attempt ended, seen from the worker.
enum Outcome {
    Done(Result<serde_json::Value, crate::HandlerError>),
    TimedOut(Duration),
    Cancelled,
    LeaseLost,
    HandedBack,
}

/// What the runner keeps of a job while its handler runs.
struct Attempt {
    id: String,
    queue: String,
    job_type: String,
    attempt: u32,
}

/// What running a job needs; one per attempt (cloned from the puller's).
#[derive(Clone)]
pub(crate) struct JobRunner {
    pub paused: watch::Sender<BTreeSet<String>>,
    pub client: Client,
    pub handlers: Handlers,
    pub cfg: WorkerConfig,
    pub hand_back: CancellationToken,
    pub metrics: crate::metrics::Metrics,
    pub reporter: Reporter,
    pub leases: Leases,
    /// Trace context sent with every call about this attempt: the job span's, or the one the
    /// run message carried when nothing is exported.
    pub traceparent: String,
}

impl JobRunner {
    /// A request carrying this attempt's trace context.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        traced(msg, &self.traceparent)
    }

    /// Runs a claimed job and reports its outcome. `payload_json`: the payload as JSON text
    /// when the claim asked for it (`job.payload` is then unset); empty otherwise.
    pub(crate) async fn run_claimed(mut self, job: pb::Job, payload_json: String) {
        let labels = [job.queue.clone(), job.r#type.clone()];
        self.metrics.started.with_label_values(&labels).inc();
        let in_flight = self.metrics.in_flight.with_label_values(&[&job.queue]);
        in_flight.inc();
        let began = std::time::Instant::now();
        self.run_job(job, payload_json).await;
        in_flight.dec();
        self.metrics
            .run_time
            .with_label_values(&labels)
            .observe(began.elapsed().as_secs_f64());
    }

    async fn run_job(&mut self, job: pb::Job, payload_json: String) {
        let lease_id = job.lease.as_ref().map(|l| l.lease_id.clone()).unwrap_or_default();
        // What the runner keeps; the handler gets the job itself (no copy of it is made: a
        // job's payload is a tree of allocations).
        let job_ref = Attempt {
            id: job.id.clone(),
            queue: job.queue.clone(),
            job_type: job.r#type.clone(),
            attempt: job.attempt,
        };
        let Some(handler) = self.handlers.get(&job.r#type).cloned() else {
            let msg = format!(
                "no handler for job type {:?} on worker {}",
                job.r#type, self.cfg.worker_id
            );
            self.report_fail(&job_ref, &lease_id, &msg, false, None).await;
            return;
        };
        let timeout = std_duration(job.timeout.as_ref()).unwrap_or(Duration::from_secs(60));
        let payload = if payload_json.is_empty() {
            // From ClaimJob, or a dispatch that predates `payload_as_json`.
            json::from_proto(job.payload.as_ref())
        } else {
            serde_json::from_str(&payload_json).unwrap_or_else(|e| {
                tracing::warn!(job_id = %job.id, error = %e, "payload is not JSON; the handler gets null");
                serde_json::Value::Null
            })
        };
        let ctx = JobContext {
            payload,
            job,
            cancelled: CancellationToken::new(),
            progress: Arc::new(Mutex::new(None)),
        };
        let job = job_ref;
        let cancelled = ctx.cancelled.clone();
        // The lease loop keeps the lease while the handler runs, and stops the job (through
        // `cancelled`) when it learns of a cancellation or a lost lease.
        let held = self.leases.hold(lease::Job {
            job_id: job.id.clone(),
            lease_id: lease_id.clone(),
            traceparent: self.traceparent.clone(),
            progress: ctx.progress.clone(),
            cancelled: cancelled.clone(),
        });
        let handler_span = tracing::info_span!(
            "handler",
            otel.name = format!("handle {}", job.job_type),
            job_id = %job.id,
            queue = %job.queue,
            job_type = %job.job_type,
            attempt = job.attempt,
        );
        let outcome = tokio::select! {
            r = tracing::Instrument::instrument(handler(ctx), handler_span) => Outcome::Done(r),
            _ = tokio::time::sleep(timeout) => Outcome::TimedOut(timeout),
            _ = cancelled.cancelled() => match held.stopped() {
                Some(Stop::Cancelled) => Outcome::Cancelled,
                _ => Outcome::LeaseLost,
            },
            _ = self.hand_back.cancelled() => Outcome::HandedBack,
        };
        cancelled.cancel();
        drop(held);
        let labels = [job.queue.as_str(), job.job_type.as_str()];
        let failed = |reason: &str| {
            self.metrics
                .failed
                .with_label_values(&[labels[0], labels[1], reason])
                .inc()
        };
        match &outcome {
            Outcome::Done(Ok(_)) => self.metrics.succeeded.with_label_values(&labels).inc(),
            Outcome::Done(Err(_)) => failed("error"),
            Outcome::TimedOut(_) => failed("timeout"),
            Outcome::Cancelled => failed("cancelled"),
            Outcome::LeaseLost => self.metrics.lease_lost.with_label_values(&labels).inc(),
            Outcome::HandedBack => failed("handed_back"),
        }
        match outcome {
            Outcome::Done(Ok(result)) => self.report_complete(&job, &lease_id, result).await,
            Outcome::Done(Err(e)) => self.report_fail(&job, &lease_id, &e.message, e.retryable, None).await,
            Outcome::TimedOut(t) => {
                let msg = format!("timed out after {:.3}s", t.as_secs_f64());
                self.report_fail(&job, &lease_id, &msg, true, None).await
            }
            Outcome::Cancelled => self.report_fail(&job, &lease_id, "cancelled", false, None).await,
            Outcome::LeaseLost => {
                tracing::warn!(job_id = %job.id, attempt = job.attempt, "lease lost; attempt abandoned");
            }
            Outcome::HandedBack => {
                self.report_fail(
                    &job,
                    &lease_id,
                    "worker shutting down; handed back",
                    true,
                    Some(Duration::ZERO),
                )
                .await
            }
        }
    }

    async fn report_complete(&mut self, job: &Attempt, lease_id: &str, result: serde_json::Value) {
        let req = pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: lease_id.to_string(),
            result: Some(json::to_proto(&result)),
            traceparent: self.traceparent.clone(),
        };
        // Shares a CompleteJobs call with whatever else finished at the same time.
        let r = self.reporter.complete(req).await;
        if r.is_err() {
            self.metrics.errors.with_label_values(&["report"]).inc();
        }
        match r {
            Ok(()) => tracing::info!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, "job succeeded"),
            Err(s) => tracing::warn!(job_id = %job.id, attempt = job.attempt, error = %s, "completion not recorded"),
        }
    }

    async fn report_fail(
        &mut self,
        job: &Attempt,
        lease_id: &str,
        error: &str,
        retryable: bool,
        delay: Option<Duration>,
    ) {
        let req = pb::FailJobRequest {
            job_id: job.id.clone(),
            lease_id: lease_id.to_string(),
            error: error.chars().take(4096).collect(),
            retryable,
            retry_delay: delay.map(pb_duration),
        };
        let r = report::fail(&self.client, req, &self.traceparent).await;
        if r.is_err() {
            self.metrics.errors.with_label_values(&["report"]).inc();
        }
        match r {
            Ok(()) => {
                tracing::info!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, error, "job attempt failed")
            }
            Err(s) => tracing::warn!(job_id = %job.id, attempt = job.attempt, error = %s, "failure not recorded"),
        }
    }
}
