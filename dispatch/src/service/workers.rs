//! `dispatch.v1.WorkerService`.

use dispatch_client::pb::{self, worker_service_server::WorkerService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::Shared;
use crate::api::{self, FieldErrors, validate};

/// Longest lease a worker may ask for.
const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

/// Implements WorkerService over the store.
#[derive(Clone)]
pub struct WorkerApi(pub Shared);

impl WorkerApi {
    fn lease_ms(&self, errs: &mut FieldErrors, d: Option<&pbjson_types::Duration>) -> u64 {
        match d.map(|d| validate::duration_ms(errs, "lease_duration", d, MAX_LEASE_MS)) {
            None | Some(0) => self.0.config.jobs.lease_ms,
            Some(ms) if ms < 1000 => {
                errs.add("lease_duration", "must be at least 1s");
                ms
            }
            Some(ms) => ms,
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_job(&self, req: Request<pb::ClaimJobRequest>) -> Result<Response<pb::ClaimJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/ClaimJob", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "job_id", &r.job_id);
            validate::worker_id(&mut errs, "worker_id", &r.worker_id);
            if r.attempt == 0 {
                errs.add("attempt", "must be at least 1");
            }
            let lease_ms = self.lease_ms(&mut errs, r.lease_duration.as_ref());
            errs.into_result(())?;
            let lease_id = uuid::Uuid::new_v4().to_string();
            let job = self
                .0
                .store
                .claim(&r.job_id, r.attempt, &r.worker_id, &lease_id, lease_ms)
                .await
            .map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            self.0.metrics.on_claim(&job);
            tracing::info!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, worker_id = %r.worker_id, "job claimed");
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::ClaimJobResponse {
                job: Some(api::job_to_pb(&job)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/Heartbeat", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "job_id", &r.job_id);
            validate::lease_id(&mut errs, "lease_id", &r.lease_id);
            let lease_ms = self.lease_ms(&mut errs, r.lease_duration.as_ref());
            let progress = r
                .progress
                .as_ref()
                .map(|p| validate::json_value(&mut errs, "progress", Some(p), 64 * 1024));
            errs.into_result(())?;
            tracing::Span::current().record("job_id", r.job_id.as_str());
            let beat = self
                .0
                .store
                .heartbeat(&r.job_id, &r.lease_id, lease_ms, progress)
                .await
                .map_err(|e| self.0.store_err(e))?;
            Ok(Response::new(pb::HeartbeatResponse {
                cancel_requested: beat.cancel_requested,
                lease_deadline: Some(api::ts(beat.lease_deadline_ms)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn complete_job(
        &self,
        req: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/CompleteJob", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "job_id", &r.job_id);
            validate::lease_id(&mut errs, "lease_id", &r.lease_id);
            let result = validate::json_value(
                &mut errs,
                "result",
                r.result.as_ref(),
                self.0.config.jobs.max_payload_bytes,
            );
            errs.into_result(())?;
            let job = self
                .0
                .store
                .complete(&r.job_id, &r.lease_id, result)
                .await
                .map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            self.0.metrics.on_report(&job, job.started_at_ms);
            tracing::info!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, "job succeeded");
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::CompleteJobResponse {
                job: Some(api::job_to_pb(&job)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn fail_job(&self, req: Request<pb::FailJobRequest>) -> Result<Response<pb::FailJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/FailJob", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "job_id", &r.job_id);
            validate::lease_id(&mut errs, "lease_id", &r.lease_id);
            if r.error.is_empty() || r.error.len() > 4096 {
                errs.add("error", "must be 1 to 4096 characters");
            }
            let delay = r
                .retry_delay
                .as_ref()
                .map(|d| validate::duration_ms(&mut errs, "retry_delay", d, 24 * 3600 * 1000));
            errs.into_result(())?;
            let job = self
                .0
                .store
                .fail(&r.job_id, &r.lease_id, &r.error, r.retryable, delay)
                .await
            .map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            self.0.metrics.on_report(&job, job.started_at_ms);
            tracing::info!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, state = job.state.as_str(), error = %r.error, "job attempt failed");
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::FailJobResponse {
                job: Some(api::job_to_pb(&job)),
            }))
        }
        .instrument(span)
        .await
    }
}
