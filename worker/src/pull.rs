//! Pulling and claiming: one puller per queue takes run messages from the queue's durable
//! consumer as slots free up and claims what arrived together in one ClaimJobs call; each
//! granted job then runs in its slot (attempt.rs).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use dispatch_client::pb;
use futures::FutureExt;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;

use crate::attempt::JobRunner;
use crate::rpc::pb_duration;

pub(crate) struct Puller {
    pub queue: String,
    pub consumer: jetstream::consumer::Consumer<pull::Config>,
    pub slots: Arc<Semaphore>,
    pub tracker: TaskTracker,
    /// What each claim group starts from.
    pub runner: JobRunner,
}

impl Puller {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut pauses = self.runner.paused.subscribe();
        loop {
            // A paused queue's run messages stay in the stream until it is resumed.
            if pauses.borrow_and_update().contains(&self.queue) {
                tracing::info!(queue = %self.queue, "queue paused: not taking its jobs until it is resumed");
                while pauses.borrow_and_update().contains(&self.queue) {
                    tokio::select! {
                        r = pauses.changed() => if r.is_err() { return },
                        _ = shutdown.cancelled() => return,
                    }
                }
                tracing::info!(queue = %self.queue, "queue resumed");
            }
            // Wait for at least one free slot, then take every free one.
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            while permits.len() < 256 {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let batch = self
                .consumer
                .batch()
                .max_messages(permits.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "pull failed");
                    self.runner.metrics.errors.with_label_values(&["pull"]).inc();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            // Claim what has arrived together in one call, without waiting for the rest of
            // the pull: a lone message is claimed at once.
            while let Some(Ok(first)) = batch.next().await {
                let mut group = Vec::new();
                let Some(permit) = permits.pop() else { break };
                group.push((first, permit));
                while let Some(permit) = permits.pop() {
                    match batch.next().now_or_never() {
                        Some(Some(Ok(msg))) => group.push((msg, permit)),
                        _ => {
                            permits.push(permit);
                            break;
                        }
                    }
                }
                let runner = self.runner.clone();
                self.tracker
                    .spawn(Box::pin(runner.claim_group(group, self.tracker.clone())));
            }
        }
    }
}

/// A pulled message with the concurrency slot it will run in.
type Pulled = (jetstream::Message, OwnedSemaphorePermit);

impl JobRunner {
    /// Claims a group of pulled jobs in one ClaimJobs call, then runs each granted one in its
    /// slot. Refused claims are acked and dropped; on a failed call the messages come back.
    async fn claim_group(self, group: Vec<Pulled>, tracker: TaskTracker) {
        let mut items = Vec::with_capacity(group.len());
        for (msg, permit) in group {
            match self.prepare(&msg) {
                Some((runner, run, span)) => items.push((runner, run, span, msg, permit)),
                None => {
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        if items.is_empty() {
            return;
        }
        let claims = items
            .iter()
            .map(|(runner, run, ..)| pb::ClaimJobRequest {
                job_id: run.job_id.clone(),
                attempt: run.attempt,
                worker_id: self.cfg.worker_id.clone(),
                lease_duration: Some(pb_duration(self.cfg.lease)),
                traceparent: runner.traceparent.clone(),
            })
            .collect();
        let reply = self
            .client
            .clone()
            .claim_jobs(pb::ClaimJobsRequest {
                claims,
                payload_as_json: true,
            })
            .await;
        let results = match reply {
            Ok(r) if r.get_ref().results.len() == items.len() => r.into_inner().results,
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::Unimplemented) => {
                // One odd message spoils a batch (or dispatch predates ClaimJobs): claim each
                // on its own.
                tracing::debug!(error = %s, "batch claim refused; claiming one by one");
                for (runner, run, span, msg, permit) in items {
                    tracker.spawn(async move {
                        tracing::Instrument::instrument(runner.claim_and_run(run, msg), span).await;
                        drop(permit);
                    });
                }
                return;
            }
            other => {
                if let Err(s) = &other {
                    tracing::warn!(dispatch = %self.cfg.dispatch_url, code = ?s.code(), error = %s.message(), jobs = items.len(), "claim failed; messages will be redelivered");
                }
                self.metrics.errors.with_label_values(&["claim"]).inc();
                for (.., msg, _) in items {
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                return;
            }
        };
        for ((runner, run, span, msg, permit), result) in items.into_iter().zip(results) {
            match (result.job, result.error) {
                (Some(job), _) => {
                    let payload_json = result.payload_json;
                    // From here the Redis lease is the one retry clock.
                    let _ = msg.ack().await;
                    // Boxed: the job's future is large, and moving it into a task cost more
                    // than the allocation.
                    let run = Box::pin(tracing::Instrument::instrument(
                        runner.run_claimed(job, payload_json),
                        span,
                    ));
                    tracker.spawn(async move {
                        run.await;
                        drop(permit);
                    });
                }
                (None, e) => {
                    let (code, reason) = e.map_or((Code::Internal, String::new()), |e| (Code::from(e.code), e.message));
                    let settle = self.not_claimed(&run.queue, msg, code, &reason);
                    tracing::Instrument::instrument(settle, span).await;
                }
            }
        }
    }

    /// Decodes a run message and opens the attempt's span, a child of the relay's publish span
    /// (the job's trace); `None` for an undecodable message.
    fn prepare(&self, msg: &jetstream::Message) -> Option<(JobRunner, pb::JobRun, tracing::Span)> {
        let run = match pb::JobRun::decode(msg.payload.clone()) {
            Ok(r) if !r.job_id.is_empty() && r.attempt > 0 => r,
            other => {
                tracing::error!(error = ?other.err(), subject = %msg.subject, "undecodable run message dropped");
                return None;
            }
        };
        let sent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "job",
            otel.name = format!("run {}", run.r#type),
            otel.kind = "consumer",
            job_id = %run.job_id,
            queue = %run.queue,
            job_type = %run.r#type,
            attempt = run.attempt,
            worker_id = %self.cfg.worker_id,
            trace_id = tracing::field::Empty,
        );
        dispatch_telemetry::set_parent(&span, &sent);
        let trace_id = dispatch_telemetry::trace_id(&span, &sent);
        if !trace_id.is_empty() {
            span.record("trace_id", trace_id.as_str());
        }
        let runner = JobRunner {
            traceparent: dispatch_telemetry::traceparent(&span).unwrap_or(sent),
            ..self.clone()
        };
        Some((runner, run, span))
    }

    /// Claims one job with ClaimJob, then runs it.
    async fn claim_and_run(mut self, run: pb::JobRun, msg: jetstream::Message) {
        let req = self.request(pb::ClaimJobRequest {
            job_id: run.job_id.clone(),
            attempt: run.attempt,
            worker_id: self.cfg.worker_id.clone(),
            lease_duration: Some(pb_duration(self.cfg.lease)),
            traceparent: String::new(),
        });
        let claim = self.client.claim_job(req).await;
        let job = match claim {
            Ok(r) => {
                // From here the Redis lease is the one retry clock.
                let _ = msg.ack().await;
                match r.into_inner().job {
                    Some(j) => j,
                    None => return,
                }
            }
            Err(s) => {
                // Alone, an invalid claim is the message's fault: drop it.
                let code = if s.code() == Code::InvalidArgument {
                    Code::FailedPrecondition
                } else {
                    s.code()
                };
                self.not_claimed(&run.queue, msg, code, s.message()).await;
                return;
            }
        };
        self.run_claimed(job, String::new()).await;
    }

    /// Settles the run message of a claim that was not granted: acked and dropped when the
    /// job moved on without it (`FAILED_PRECONDITION`, `NOT_FOUND`), else handed back to NATS
    /// for redelivery.
    async fn not_claimed(&self, queue: &str, msg: jetstream::Message, code: Code, reason: &str) {
        if matches!(code, Code::FailedPrecondition | Code::NotFound) {
            tracing::debug!(reason, "claim refused; message dropped");
            if reason == format!("queue {queue} is paused") {
                // Dispatch writes the dropped messages again when the queue is resumed.
                self.paused.send_if_modified(|p| p.insert(queue.to_string()));
            }
            self.metrics.claims_refused.with_label_values(&[queue]).inc();
            let _ = msg.ack().await;
        } else {
            tracing::warn!(dispatch = %self.cfg.dispatch_url, ?code, reason, "claim failed; message will be redelivered");
            self.metrics.errors.with_label_values(&["claim"]).inc();
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}
