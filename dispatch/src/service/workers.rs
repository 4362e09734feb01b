//! `dispatch.v1.WorkerService`.

use dispatch_client::pb::{self, worker_service_server::WorkerService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::Shared;
use crate::api::{self, FieldErrors, validate};
use crate::auth::Identity;
use crate::store::Claim;

/// Longest lease a worker may ask for.
const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

/// Implements WorkerService over the store.
#[derive(Clone)]
pub struct WorkerApi(pub Shared);

/// Most items in one ClaimJobs or CompleteJobs call.
const MAX_BATCH: usize = 1000;

impl WorkerApi {
    fn lease_ms(&self, errs: &mut FieldErrors, d: Option<&pbjson_types::Duration>) -> u64 {
        self.lease_ms_of(errs, "lease_duration", d)
    }

    fn lease_ms_of(&self, errs: &mut FieldErrors, field: &str, d: Option<&pbjson_types::Duration>) -> u64 {
        match d.map(|d| validate::duration_ms(errs, field, d, MAX_LEASE_MS)) {
            None | Some(0) => self.0.config.jobs.lease_ms,
            Some(ms) if ms < 1000 => {
                errs.add(field, "must be at least 1s");
                ms
            }
            Some(ms) => ms,
        }
    }

    /// Checks a claim (`prefix` names it in field violations); its lease length.
    fn check_claim(&self, errs: &mut FieldErrors, prefix: &str, r: &pb::ClaimJobRequest) -> u64 {
        validate::job_id(errs, &format!("{prefix}job_id"), &r.job_id);
        validate::worker_id(errs, &format!("{prefix}worker_id"), &r.worker_id);
        if r.attempt == 0 {
            errs.add(format!("{prefix}attempt"), "must be at least 1");
        }
        validate::traceparent(errs, &format!("{prefix}traceparent"), &r.traceparent);
        self.lease_ms_of(errs, &format!("{prefix}lease_duration"), r.lease_duration.as_ref())
    }

    /// Checks a success report; its result as JSON text.
    fn check_complete(&self, errs: &mut FieldErrors, prefix: &str, r: &pb::CompleteJobRequest) -> String {
        validate::job_id(errs, &format!("{prefix}job_id"), &r.job_id);
        validate::lease_id(errs, &format!("{prefix}lease_id"), &r.lease_id);
        validate::traceparent(errs, &format!("{prefix}traceparent"), &r.traceparent);
        validate::json_value(
            errs,
            &format!("{prefix}result"),
            r.result.as_ref(),
            self.0.config.jobs.max_payload_bytes,
        )
    }
}

/// PERMISSION_DENIED, and an audit line, when authentication is on and the caller's key is
/// not the one `lease_id` was granted to: a lease id is a capability of the key that claimed.
fn check_holder(who: Option<&Identity>, job_id: &str, lease_id: &str) -> Result<(), Status> {
    match who {
        Some(id) if !id.holds(lease_id) => {
            tracing::warn!(audit = true, key = %id.name, job_id, "report refused: the lease was granted to another key");
            Err(Status::permission_denied(format!(
                "the lease of job {job_id} was not granted to key {}",
                id.name
            )))
        }
        _ => Ok(()),
    }
}

/// Checks the size of a batch call.
fn check_batch(errs: &mut FieldErrors, field: &str, n: usize) {
    if n == 0 || n > MAX_BATCH {
        errs.add(field, format!("must hold 1 to {MAX_BATCH} items"));
    }
}

/// The trace id for a batch item's log lines: its span's, else its own traceparent's, else
/// the job's.
fn item_trace_id(span: Option<&tracing::Span>, item_tp: &str, job_tp: &str) -> String {
    let id = dispatch_telemetry::trace_id(span.unwrap_or(&tracing::Span::none()), item_tp);
    if id.is_empty() {
        dispatch_telemetry::trace_id(&tracing::Span::none(), job_tp)
    } else {
        id
    }
}

/// A batch item's refusal as it travels in the response.
fn item_error(e: crate::store::Error) -> pb::ItemError {
    let s = Status::from(e);
    pb::ItemError {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_job(&self, req: Request<pb::ClaimJobRequest>) -> Result<Response<pb::ClaimJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/ClaimJob", req.metadata());
        async move {
            let _turn = self.0.worker_turn().await?;
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            let lease_ms = self.check_claim(&mut errs, "", r);
            errs.into_result(())?;
            let lease_id = crate::auth::lease_id(req.extensions().get::<Identity>());
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

    async fn claim_jobs(&self, req: Request<pb::ClaimJobsRequest>) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/ClaimJobs", req.metadata());
        async move {
            let _turn = self.0.worker_turn().await?;
            let reqs = &req.get_ref().claims;
            let mut errs = FieldErrors::default();
            check_batch(&mut errs, "claims", reqs.len());
            let claims: Vec<Claim> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| Claim {
                    lease_ms: self.check_claim(&mut errs, &format!("claims[{i}]."), r),
                    id: r.job_id.clone(),
                    attempt: r.attempt,
                    worker_id: r.worker_id.clone(),
                    lease_id: crate::auth::lease_id(req.extensions().get::<Identity>()),
                })
                .collect();
            errs.into_result(())?;
            // One span per claim in the job's own trace, when traces are exported.
            let spans = super::item_spans(
                "dispatch.v1.WorkerService/ClaimJobs",
                req.metadata(),
                reqs.iter().map(|r| r.traceparent.as_str()),
            );
            let outcomes = self.0.store.claim_many(&claims).await.map_err(|e| self.0.store_err(e))?;
            let as_json = req.get_ref().payload_as_json;
            let results = outcomes
                .into_iter()
                .enumerate()
                .map(|(i, o)| match o {
                    Ok(mut job) => {
                        if let Some(s) = spans.get(i) {
                            s.in_scope(|| super::note_job(&job));
                        }
                        self.0.metrics.on_claim(&job);
                        // The line carries the job's own trace id, not the batch call's.
                        let trace_id = item_trace_id(spans.get(i), &reqs[i].traceparent, &job.traceparent);
                        let _in = spans.get(i).map(|s| s.enter());
                        tracing::info!(job_id = %job.id, queue = %job.queue, job_type = %job.job_type, attempt = job.attempt, worker_id = %job.worker_id, trace_id, "job claimed");
                        let (pb_job, payload_json) = if as_json {
                            (api::job_to_pb_without_payload(&job), std::mem::take(&mut job.payload))
                        } else {
                            (api::job_to_pb(&job), String::new())
                        };
                        pb::ClaimJobResult {
                            job: Some(pb_job),
                            error: None,
                            payload_json,
                        }
                    }
                    Err(e) => pb::ClaimJobResult {
                        job: None,
                        error: Some(item_error(e)),
                        payload_json: String::new(),
                    },
                })
                .collect();
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::ClaimJobsResponse { results }))
        }
        .instrument(span)
        .await
    }

    async fn complete_jobs(
        &self,
        req: Request<pb::CompleteJobsRequest>,
    ) -> Result<Response<pb::CompleteJobsResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/CompleteJobs", req.metadata());
        async move {
            let _turn = self.0.worker_turn().await?;
            let reqs = &req.get_ref().completions;
            let mut errs = FieldErrors::default();
            check_batch(&mut errs, "completions", reqs.len());
            let reports: Vec<(String, String, String)> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let result = self.check_complete(&mut errs, &format!("completions[{i}]."), r);
                    (r.job_id.clone(), r.lease_id.clone(), result)
                })
                .collect();
            errs.into_result(())?;
            let spans = super::item_spans(
                "dispatch.v1.WorkerService/CompleteJobs",
                req.metadata(),
                reqs.iter().map(|r| r.traceparent.as_str()),
            );
            // Reports of leases granted to another key are refused on their own and never
            // reach the store.
            let who = req.extensions().get::<Identity>();
            let refused: Vec<Option<Status>> = reports
                .iter()
                .map(|(id, lease, _)| check_holder(who, id, lease).err())
                .collect();
            let kept: Vec<(String, String, String)>;
            let allowed: &[(String, String, String)] = if refused.iter().all(Option::is_none) {
                &reports
            } else {
                kept = reports
                    .iter()
                    .zip(&refused)
                    .filter(|(_, r)| r.is_none())
                    .map(|(rep, _)| rep.clone())
                    .collect();
                &kept
            };
            let mut stored = if allowed.is_empty() {
                Vec::new()
            } else {
                self.0
                    .store
                    .complete_many(allowed)
                    .await
                    .map_err(|e| self.0.store_err(e))?
            }
            .into_iter();
            let outcomes: Vec<Result<_, Status>> = refused
                .into_iter()
                .map(|r| match r {
                    Some(status) => Err(status),
                    None => stored
                        .next()
                        .unwrap_or_else(|| Err(crate::store::Error::Corrupt("a report without an outcome".into())))
                        .map_err(Status::from),
                })
                .collect();
            let results = outcomes
                .into_iter()
                .zip(&reports)
                .enumerate()
                .map(|(i, (o, (id, _, _)))| match o {
                    Ok(done) => {
                        if let Some(s) = spans.get(i) {
                            s.record("job_id", id.as_str());
                            s.record("queue", done.queue.as_str());
                            s.record("job_type", done.job_type.as_str());
                            s.record("attempt", done.attempt);
                        }
                        self.0.metrics.on_complete(&done);
                        if done.fresh {
                            let trace_id = item_trace_id(spans.get(i), &reqs[i].traceparent, "");
                            let _in = spans.get(i).map(|s| s.enter());
                            tracing::info!(job_id = %id, queue = %done.queue, job_type = %done.job_type, attempt = done.attempt, trace_id, "job succeeded");
                        }
                        pb::CompleteJobResult {
                            job_id: id.clone(),
                            state: pb::JobState::Succeeded as i32,
                            error: None,
                        }
                    }
                    Err(s) => pb::CompleteJobResult {
                        job_id: id.clone(),
                        state: pb::JobState::Unspecified as i32,
                        error: Some(pb::ItemError {
                            code: s.code() as i32,
                            message: s.message().to_string(),
                        }),
                    },
                })
                .collect();
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::CompleteJobsResponse { results }))
        }
        .instrument(span)
        .await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/Heartbeat", req.metadata());
        async move {
            let _turn = self.0.worker_turn().await?;
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
            check_holder(req.extensions().get::<Identity>(), &r.job_id, &r.lease_id)?;
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
            let _turn = self.0.worker_turn().await?;
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            let result = self.check_complete(&mut errs, "", r);
            errs.into_result(())?;
            check_holder(req.extensions().get::<Identity>(), &r.job_id, &r.lease_id)?;
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
            let _turn = self.0.worker_turn().await?;
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
            check_holder(req.extensions().get::<Identity>(), &r.job_id, &r.lease_id)?;
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

    async fn announce(&self, req: Request<pb::AnnounceRequest>) -> Result<Response<pb::AnnounceResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.WorkerService/Announce", req.metadata());
        async move {
            let _turn = self.0.worker_turn().await?;
            let r = req.into_inner();
            let mut errs = FieldErrors::default();
            validate::worker_id(&mut errs, "worker_id", &r.worker_id);
            if r.queues.len() > 256 {
                errs.add("queues", "must name at most 256 queues");
            }
            for q in r.queues.keys() {
                validate::queue_name(&mut errs, &format!("queues[{q}]"), q);
            }
            if r.hostname.len() > 256 {
                errs.add("hostname", "must be at most 256 characters");
            }
            if r.version.len() > 256 {
                errs.add("version", "must be at most 256 characters");
            }
            errs.into_result(())?;
            let started_at_ms = r
                .started_at
                .as_ref()
                .filter(|t| t.seconds >= 0)
                .map(|t| t.seconds as u64 * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
                .unwrap_or(0);
            let record = Announced {
                worker_id: r.worker_id.clone(),
                queues: r.queues.into_iter().collect(),
                in_flight: r.in_flight,
                hostname: r.hostname,
                version: r.version,
                started_at_ms,
                last_seen_ms: crate::store::now_ms(),
            };
            let json = serde_json::to_string(&record).map_err(|e| Status::internal(e.to_string()))?;
            let store = &self.0.store;
            let (_, paused) = tokio::try_join!(store.announce_worker(&r.worker_id, &json), store.paused_queues())
                .map_err(|e| self.0.store_err(e))?;
            Ok(Response::new(pb::AnnounceResponse {
                paused_queues: paused.into_keys().collect(),
                interval: Some(api::dur(self.0.config.loops.announce_interval_ms)),
            }))
        }
        .instrument(span)
        .await
    }
}

/// A worker's last announcement, as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Announced {
    pub worker_id: String,
    pub queues: std::collections::BTreeMap<String, u32>,
    pub in_flight: u32,
    pub hostname: String,
    pub version: String,
    /// 0 when the worker did not say.
    pub started_at_ms: u64,
    /// By the clock of the dispatch that heard it.
    pub last_seen_ms: u64,
}

impl Announced {
    pub(super) fn to_pb(&self) -> pb::WorkerInfo {
        pb::WorkerInfo {
            worker_id: self.worker_id.clone(),
            queues: self.queues.clone().into_iter().collect(),
            in_flight: self.in_flight,
            hostname: self.hostname.clone(),
            version: self.version.clone(),
            started_at: (self.started_at_ms > 0).then(|| api::ts(self.started_at_ms)),
            last_seen: Some(api::ts(self.last_seen_ms)),
        }
    }
}
