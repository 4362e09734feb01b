//! `dispatch.v1.JobService`.

use std::pin::Pin;
use std::time::Duration;

use dispatch_client::pb::{self, job_service_server::JobService};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Shared, traceparent};
use crate::api::{self, FieldErrors, validate};
use crate::store::{self, State};

/// Implements JobService over the store.
#[derive(Clone)]
pub struct JobApi(pub Shared);

const MAX_BATCH: usize = 1000;
const MAX_PAGE: u32 = 1000;
/// Most jobs a filtered ListJobs reads in one call.
const FILTER_SCAN: usize = 5000;
/// Most label conditions in one ListJobs.
const MAX_LABEL_FILTERS: usize = 16;

/// The `key=value` label conditions of a ListJobs, checked.
fn labels_filter<'a>(errs: &mut FieldErrors, labels: &'a [String]) -> Vec<(&'a str, &'a str)> {
    if labels.len() > MAX_LABEL_FILTERS {
        errs.add("labels", format!("at most {MAX_LABEL_FILTERS} conditions"));
    }
    let mut out = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k, v)),
            _ => errs.add(format!("labels[{i}]"), "must be written key=value"),
        }
    }
    out
}

impl JobApi {
    /// Creates one job through the group commit (see store::group).
    async fn create_one(&self, job: store::NewJob) -> Result<pb::CreateJobResponse, Status> {
        let created = self.0.creates.create(job).await.map_err(|e| self.0.store_err(e))?;
        Ok(self.created(created, false))
    }

    /// Counts and logs a created job; its response, with the full record or, `ids_only`,
    /// the id alone.
    fn created(&self, created: store::Created, ids_only: bool) -> pb::CreateJobResponse {
        if created.created {
            self.0
                .metrics
                .created
                .with_label_values(&[
                    self.0.metrics.queue(&created.job.queue),
                    self.0.metrics.job_type(&created.job.job_type),
                ])
                .inc();
            tracing::info!(job_id = %created.job.id, queue = %created.job.queue, job_type = %created.job.job_type, attempt = created.job.attempt, "job created");
        }
        let job = if ids_only {
            pb::Job {
                id: created.job.id,
                ..Default::default()
            }
        } else {
            self.0.job_view(&created.job)
        };
        pb::CreateJobResponse {
            job: Some(job),
            created: created.created,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(&self, req: Request<pb::CreateJobRequest>) -> Result<Response<pb::CreateJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/CreateJob", req.metadata());
        async move {
            // The job's trace context: this span's (a child of the caller's), or when nothing is
            // exported, the caller's traceparent as sent. Every later span of the job hangs off it.
            let tp = dispatch_telemetry::traceparent(&tracing::Span::current()).unwrap_or_else(|| traceparent(&req));
            let mut errs = FieldErrors::default();
            let job = self.0.limits.new_job(&mut errs, "", req.get_ref(), &tp);
            errs.into_result(())?;
            self.0.check_rate(req.extensions().get::<crate::auth::Identity>(), 1)?;
            let _permit = self.0.admit(1)?;
            let resp = self.create_one(job).await?;
            if let Some(j) = &resp.job {
                let span = tracing::Span::current();
                span.record("job_id", j.id.as_str());
                span.record("queue", j.queue.as_str());
                span.record("job_type", j.r#type.as_str());
                span.record("attempt", j.attempt);
            }
            self.0.relay_wake.notify_one();
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn create_jobs(
        &self,
        req: Request<pb::CreateJobsRequest>,
    ) -> Result<Response<pb::CreateJobsResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/CreateJobs", req.metadata());
        async move {
            // The jobs of one batch share its trace.
            let tp = dispatch_telemetry::traceparent(&tracing::Span::current()).unwrap_or_else(|| traceparent(&req));
            let mut errs = FieldErrors::default();
            let ids_only = req.get_ref().ids_only;
            let reqs = &req.get_ref().jobs;
            if reqs.is_empty() || reqs.len() > MAX_BATCH {
                errs.add("jobs", format!("must hold 1 to {MAX_BATCH} jobs"));
            }
            let jobs: Vec<_> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| self.0.limits.new_job(&mut errs, &format!("jobs[{i}]."), r, &tp))
                .collect();
            errs.into_result(())?;
            self.0
                .check_rate(req.extensions().get::<crate::auth::Identity>(), jobs.len())?;
            let _permit = self.0.admit(jobs.len())?;
            // One atomic step per partition the batch touches (one, unless it has
            // idempotency keys).
            let ids = self.0.store.new_ids(&jobs);
            let results = self
                .0
                .store
                .create_many(&ids, &jobs, self.0.config.jobs.idempotency_window_ms)
                .await
                .map_err(|e| self.0.store_err(e))?
                .into_iter()
                .map(|c| self.created(c, ids_only))
                .collect();
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::CreateJobsResponse { results }))
        }
        .instrument(span)
        .await
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/GetJob", req.metadata());
        async move {
            let id = &req.get_ref().id;
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "id", id);
            errs.into_result(())?;
            let job = self.0.store.get(id).await.map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            Ok(Response::new(pb::GetJobResponse {
                job: Some(self.0.job_view(&job)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/ListJobs", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            if !r.queue.is_empty() {
                validate::queue_name(&mut errs, "queue", &r.queue);
            }
            let state = api::state_from_pb(r.state);
            if state.is_none() && r.state != 0 {
                errs.add("state", "is not a known JobState");
            }
            if r.page_size > MAX_PAGE {
                errs.add("page_size", format!("must be at most {MAX_PAGE}"));
            }
            // Tokens are job ids (UUIDs): anything else did not come from an earlier page.
            if !r.page_token.is_empty() && uuid::Uuid::parse_str(&r.page_token).is_err() {
                errs.add("page_token", "is not a next_page_token of an earlier ListJobs");
            }
            if !r.r#type.is_empty() {
                validate::job_type(&mut errs, "type", &r.r#type);
            }
            let labels = labels_filter(&mut errs, &r.labels);
            errs.into_result(())?;
            let size = if r.page_size == 0 { 100 } else { r.page_size as usize };
            let queues = if r.queue.is_empty() {
                self.0.store.queue_names().await.map_err(|e| self.0.store_err(e))?
            } else {
                vec![r.queue.clone()]
            };
            let states: Vec<State> = match state {
                Some(s) => vec![s],
                None => State::ALL.to_vec(),
            };
            let filtered = !r.r#type.is_empty() || !labels.is_empty();
            let keep = |j: &store::JobRecord| {
                (r.r#type.is_empty() || j.job_type == r.r#type)
                    && labels
                        .iter()
                        .all(|(k, v)| j.labels.get(*k).map(String::as_str) == Some(*v))
            };
            // Unfiltered: one extra id tells whether another page exists. Filtered: jobs are
            // read a slice at a time and kept when they match, up to a bounded number read per
            // call; a page that stops there says where to go on.
            let mut cursor = r.page_token.clone();
            let mut jobs = Vec::new();
            let mut read = 0;
            let mut more;
            let mut last_read = String::new();
            loop {
                let want = if filtered { size.max(100) } else { size };
                let mut ids = self
                    .0
                    .store
                    .list_ids(&queues, &states, &cursor, want + 1)
                    .await
                    .map_err(|e| self.0.store_err(e))?;
                more = ids.len() > want;
                ids.truncate(want);
                if ids.is_empty() {
                    break;
                }
                read += ids.len();
                let records = self.0.store.get_each(&ids).await.map_err(|e| self.0.store_err(e))?;
                for (id, record) in ids.iter().zip(records) {
                    if jobs.len() == size {
                        // Full: the next page starts after the last job read, which is shown.
                        more = true;
                        break;
                    }
                    last_read = id.clone();
                    if let Some(j) = record.filter(|j| keep(j)) {
                        jobs.push(j);
                    }
                }
                if !filtered || jobs.len() == size || !more || read >= FILTER_SCAN {
                    break;
                }
                cursor = last_read.clone();
            }
            // A page ends early at the byte budget; the token then points after its last job.
            let budget = self.0.config.limits.list_reply_bytes;
            let mut shown = Vec::with_capacity(jobs.len());
            let mut bytes = 0;
            for j in &jobs {
                let job = self.0.job_view(j);
                let len = prost::Message::encoded_len(&job) + 8;
                if !shown.is_empty() && bytes + len > budget {
                    break;
                }
                bytes += len;
                shown.push(job);
            }
            let cut = shown.len() < jobs.len();
            let next_page_token = if cut {
                shown.last().map(|j| j.id.clone()).unwrap_or_default()
            } else if more {
                last_read
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListJobsResponse {
                jobs: shown,
                next_page_token,
            }))
        }
        .instrument(span)
        .await
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/WatchJob", req.metadata());
        async move {
            let slot = self.0.watches.open(req.extensions().get::<crate::auth::Identity>())?;
            let id = req.into_inner().id;
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "id", &id);
            errs.into_result(())?;
            // Subscribe before the first read so no wake-up falls between the two.
            let mut wakes = self.0.hub.watch(&id).await.map_err(|e| self.0.store_err(e.into()))?;
            let job = self.0.store.get(&id).await.map_err(|e| self.0.store_err(e))?;
            let store = self.0.store.clone();
            let stop = self.0.shutdown.clone();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                // The stream's place is freed when this task ends.
                let _slot = slot;
                let mut cursor = 0;
                loop {
                    let events = match store.history(&id, cursor, 256).await {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                    let full = events.len() == 256;
                    let mut last_terminal = false;
                    for e in &events {
                        cursor = e.sequence;
                        last_terminal = e.state.is_terminal();
                        let msg = pb::WatchJobResponse {
                            event: Some(api::event_to_pb(&job, e)),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return; // the caller went away
                        }
                    }
                    if full {
                        continue;
                    }
                    if last_terminal {
                        return;
                    }
                    // Wait for a change to this job, a periodic re-read, or the caller leaving.
                    tokio::select! {
                        _ = wakes.rx.recv() => {} // a change, or lagged/closed: re-read
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = tx.closed() => return,
                        _ = stop.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("dispatch is stopping; watch again"))).await;
                            return;
                        }
                    }
                }
            });
            let stream: WatchStream = Box::pin(ReceiverStream::new(rx));
            Ok(Response::new(stream))
        }
        .instrument(span)
        .await
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/CancelJob", req.metadata());
        async move {
            let r = req.get_ref();
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "id", &r.id);
            if r.reason.len() > 1024 {
                errs.add("reason", "must be at most 1024 characters");
            }
            errs.into_result(())?;
            let reason = if r.reason.is_empty() {
                "cancelled"
            } else {
                r.reason.as_str()
            };
            let job = self
                .0
                .store
                .cancel(&r.id, reason)
                .await
                .map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            if job.state == store::State::Cancelled {
                let queue = self.0.metrics.queue(&job.queue);
                self.0.metrics.cancelled.with_label_values(&[queue]).inc();
            }
            let key = super::key_name(req.extensions());
            tracing::info!(audit = true, key, job_id = %job.id, queue = %job.queue, attempt = job.attempt, state = job.state.as_str(), reason, "job cancel requested");
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::CancelJobResponse {
                job: Some(self.0.job_view(&job)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn retry_job(&self, req: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/RetryJob", req.metadata());
        async move {
            let id = &req.get_ref().id;
            let mut errs = FieldErrors::default();
            validate::job_id(&mut errs, "id", id);
            errs.into_result(())?;
            let job = self.0.store.retry(id).await.map_err(|e| self.0.store_err(e))?;
            super::note_job(&job);
            let key = super::key_name(req.extensions());
            tracing::info!(audit = true, key, job_id = %job.id, queue = %job.queue, attempt = job.attempt, "job re-run");
            self.0.relay_wake.notify_one();
            Ok(Response::new(pb::RetryJobResponse {
                job: Some(self.0.job_view(&job)),
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/ListQueues", req.metadata());
        async move {
            let queues = self.queue_infos(None).await?;
            Ok(Response::new(pb::ListQueuesResponse { queues }))
        }
        .instrument(span)
        .await
    }

    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/PauseQueue", req.metadata());
        async move {
            let key = super::key_name(req.extensions()).to_string();
            let name = req.into_inner().name;
            let mut errs = FieldErrors::default();
            validate::queue_name(&mut errs, "name", &name);
            errs.into_result(())?;
            self.0.store.pause_queue(&name).await.map_err(|e| self.0.store_err(e))?;
            tracing::warn!(audit = true, key = %key, queue = %name, "queue paused");
            let queue = self.queue_infos(Some(&name)).await?.pop();
            Ok(Response::new(pb::PauseQueueResponse { queue }))
        }
        .instrument(span)
        .await
    }

    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/ResumeQueue", req.metadata());
        async move {
            let key = super::key_name(req.extensions()).to_string();
            let name = req.into_inner().name;
            let mut errs = FieldErrors::default();
            validate::queue_name(&mut errs, "name", &name);
            errs.into_result(())?;
            let was = self
                .0
                .store
                .resume_queue(&name)
                .await
                .map_err(|e| self.0.store_err(e))?;
            if was {
                tracing::warn!(audit = true, key = %key, queue = %name, "queue resumed");
                // Run messages dropped while it was paused are written again now, not after the
                // sweeper's age limit; a failure here is repaired by the sweeper later.
                let s = &self.0;
                match crate::background::sweep_resumed(
                    &s.store,
                    &s.js,
                    &s.config.streams.run_stream,
                    &name,
                    &s.relay_wake,
                )
                .await
                {
                    Ok(n) if n > 0 => tracing::info!(queue = %name, jobs = n, "run messages written again on resume"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(queue = %name, error = %e, "resumed queue not swept; the sweeper will"),
                }
            }
            let queue = self.queue_infos(Some(&name)).await?.pop();
            Ok(Response::new(pb::ResumeQueueResponse { queue }))
        }
        .instrument(span)
        .await
    }

    async fn get_stats(&self, req: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/GetStats", req.metadata());
        async move {
            let r = req.into_inner();
            let mut errs = FieldErrors::default();
            if !r.queue.is_empty() {
                validate::queue_name(&mut errs, "queue", &r.queue);
            }
            if u64::from(r.minutes) > store::STATS_MINUTES {
                errs.add("minutes", format!("must be 0 to {} (0 means 60)", store::STATS_MINUTES));
            }
            errs.into_result(())?;
            let minutes = if r.minutes == 0 { 60 } else { u64::from(r.minutes) };
            let stats = self
                .0
                .store
                .stats(&r.queue, minutes)
                .await
                .map_err(|e| self.0.store_err(e))?;
            Ok(Response::new(pb::GetStatsResponse {
                minutes: stats
                    .into_iter()
                    .map(|m| pb::StatsMinute {
                        start: Some(api::ts(m.start_ms)),
                        succeeded: m.succeeded,
                        failed: m.failed,
                        retried: m.retried,
                        cancelled: m.cancelled,
                    })
                    .collect(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let span = super::rpc_span("dispatch.v1.JobService/ListWorkers", req.metadata());
        async move {
            let workers = self.live_workers().await?.iter().map(|w| w.to_pb()).collect();
            Ok(Response::new(pb::ListWorkersResponse { workers }))
        }
        .instrument(span)
        .await
    }
}

impl JobApi {
    /// The workers heard from within three announce intervals. The others are forgotten, so
    /// the hash holds only the live ones and those that just left.
    async fn live_workers(&self) -> Result<Vec<super::workers::Announced>, Status> {
        let all = self.0.store.workers().await.map_err(|e| self.0.store_err(e))?;
        let horizon = 3 * self.0.config.loops.announce_interval_ms;
        let now = store::now_ms();
        let mut stale = Vec::new();
        let mut live = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<super::workers::Announced>(&json) {
                Ok(w) if now.saturating_sub(w.last_seen_ms) <= horizon => live.push(w),
                _ => stale.push(id),
            }
        }
        if !stale.is_empty()
            && let Err(e) = self.0.store.forget_workers(&stale).await
        {
            tracing::warn!(error = %e, "cannot forget gone workers");
        }
        Ok(live)
    }

    /// Every queue's counts (or just `only`'s), with its pause and its oldest QUEUED job. A
    /// queue is listed when it holds a job, is paused, or a live worker takes jobs from it.
    async fn queue_infos(&self, only: Option<&str>) -> Result<Vec<pb::QueueInfo>, Status> {
        let store = &self.0.store;
        let (counts, paused) =
            tokio::try_join!(store.queue_counts(), store.paused_queues()).map_err(|e| self.0.store_err(e))?;
        let mut by_name: std::collections::BTreeMap<String, Option<store::QueueCounts>> =
            counts.into_iter().map(|q| (q.name.clone(), Some(q))).collect();
        for q in paused.keys() {
            by_name.entry(q.clone()).or_insert(None);
        }
        if only.is_none() {
            for w in self.live_workers().await? {
                for q in w.queues.into_keys() {
                    by_name.entry(q).or_insert(None);
                }
            }
        }
        if let Some(name) = only {
            by_name.retain(|q, _| q == name);
            by_name.entry(name.to_string()).or_insert(None);
        }
        let waiting: Vec<String> = by_name
            .iter()
            .filter(|(_, c)| {
                c.as_ref()
                    .is_some_and(|c| c.counts.get("QUEUED").copied().unwrap_or(0) > 0)
            })
            .map(|(q, _)| q.clone())
            .collect();
        let oldest = store.oldest_queued(&waiting).await.map_err(|e| self.0.store_err(e))?;
        Ok(by_name
            .into_iter()
            .map(|(name, counts)| {
                let c = |s: State| {
                    counts
                        .as_ref()
                        .and_then(|q| q.counts.get(s.as_str()).copied())
                        .unwrap_or(0)
                };
                pb::QueueInfo {
                    depth: c(State::Queued),
                    scheduled: c(State::Scheduled),
                    running: c(State::Running),
                    succeeded: c(State::Succeeded),
                    failed: c(State::Failed),
                    cancelled: c(State::Cancelled),
                    paused: paused.contains_key(&name),
                    paused_at: paused.get(&name).map(|ms| api::ts(*ms)),
                    oldest_queued_created_at: oldest.get(&name).map(|ms| api::ts(*ms)),
                    name,
                }
            })
            .collect())
    }
}
