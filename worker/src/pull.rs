//! Pulling and claiming: one puller per queue takes run messages from the queue's durable
//! consumer as slots free up and claims what arrived together in one ClaimJobs call; each
//! granted job then runs in its slot (attempt.rs). A message names one job (kind `run`) or
//! several (kind `runs`, `JobRuns`): each job takes a slot of its own, the jobs of a message
//! beyond the free slots wait in the puller for one, and the message is settled once every
//! job in it is ([`Delivery`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        // Jobs per message lately: a pull asks for as many messages as should fill the free
        // slots. Pessimistic (a message may hold up to 64): it starts at the most, follows a
        // larger message at once and a smaller one slowly, so that few jobs wait for a slot.
        let mut jobs_per_message = MAX_JOBS_PER_MESSAGE;
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
            while permits.len() < CLAIMS_PER_CALL {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let messages = ((permits.len() as f64 / jobs_per_message).ceil() as usize).clamp(1, MESSAGES_PER_PULL);
            let batch = self
                .consumer
                .batch()
                .max_messages(messages)
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
            let mut group: Vec<Pulled> = Vec::new();
            loop {
                let next = match batch.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        self.claim(&mut group);
                        batch.next().await
                    }
                };
                let Some(Ok(msg)) = next else { break };
                let Some((runs, header_tp)) = decode(&msg) else {
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                };
                let n = runs.len() as f64;
                jobs_per_message = if n > jobs_per_message {
                    n
                } else {
                    0.8 * jobs_per_message + 0.2 * n
                };
                let delivery = Arc::new(Delivery {
                    msg,
                    left: AtomicUsize::new(runs.len()),
                    again: AtomicBool::new(false),
                });
                let mut runs = runs.into_iter();
                while let Some(run) = runs.next() {
                    let permit = match permits
                        .pop()
                        .map(Ok)
                        .unwrap_or_else(|| self.slots.clone().try_acquire_owned())
                    {
                        Ok(p) => p,
                        Err(_) => {
                            // More jobs than free slots: claim what is here, then wait for one,
                            // and take every other slot free by then.
                            self.claim(&mut group);
                            let p = tokio::select! {
                                p = self.slots.clone().acquire_owned() => match p {
                                    Ok(p) => p,
                                    Err(_) => return,
                                },
                                _ = shutdown.cancelled() => {
                                    // This job and the rest of its message go back to NATS.
                                    delivery.settle_many(1 + runs.len(), true).await;
                                    return;
                                }
                            };
                            while permits.len() + 1 < CLAIMS_PER_CALL {
                                match self.slots.clone().try_acquire_owned() {
                                    Ok(more) => permits.push(more),
                                    Err(_) => break,
                                }
                            }
                            p
                        }
                    };
                    group.push(Pulled {
                        run,
                        header_tp: header_tp.clone(),
                        delivery: delivery.clone(),
                        permit,
                    });
                    if group.len() >= CLAIMS_PER_CALL {
                        self.claim(&mut group);
                    }
                }
            }
            self.claim(&mut group);
        }
    }

    /// Claims the jobs gathered in `group` in a task of their own (one ClaimJobs call).
    fn claim(&self, group: &mut Vec<Pulled>) {
        if group.is_empty() {
            return;
        }
        let runner = self.runner.clone();
        self.tracker.spawn(Box::pin(
            runner.claim_group(std::mem::take(group), self.tracker.clone()),
        ));
    }
}

/// Jobs claimed in one ClaimJobs call at most (dispatch takes up to 1,000).
const CLAIMS_PER_CALL: usize = 256;

/// Jobs a run message holds at most (dispatch's `loops.relay_runs_per_message` is 1 to 64).
const MAX_JOBS_PER_MESSAGE: f64 = 64.0;

/// Messages asked for in one pull at most: bounds the jobs a pull can bring beyond the free
/// slots when messages turn out larger than lately.
const MESSAGES_PER_PULL: usize = 64;

/// The jobs a run message names (one for kind `run`, several for `runs`), and the trace
/// context its header carries; `None` when the message is undecodable or names none.
fn decode(msg: &jetstream::Message) -> Option<(Vec<pb::JobRun>, String)> {
    let headers = msg.headers.as_ref();
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let runs = if header("Dispatch-Kind").as_deref() == Some("runs") {
        pb::JobRuns::decode(msg.payload.clone()).map(|r| r.runs)
    } else {
        pb::JobRun::decode(msg.payload.clone()).map(|r| vec![r])
    };
    let (runs, bad): (Vec<_>, Vec<_>) = match runs {
        Ok(runs) => runs.into_iter().partition(|r| !r.job_id.is_empty() && r.attempt > 0),
        Err(e) => {
            tracing::error!(error = %e, subject = %msg.subject, "undecodable run message dropped");
            return None;
        }
    };
    if !bad.is_empty() {
        tracing::error!(jobs = bad.len(), subject = %msg.subject, "run message names jobs without id or attempt; those dropped");
    }
    if runs.is_empty() {
        return None;
    }
    Some((runs, header("traceparent").unwrap_or_default()))
}

/// A pulled message, shared by the jobs it names: settled when the last of them is, acked if
/// each was claimed or refused for good, else handed back (nak) to be delivered again (the
/// claims of jobs taken already are then refused, and those messages dropped).
pub(crate) struct Delivery {
    msg: jetstream::Message,
    /// Jobs of the message not settled yet.
    left: AtomicUsize,
    /// Whether a job of it must be delivered again.
    again: AtomicBool,
}

impl Delivery {
    /// One job of the message settled; `again` when it must be delivered again.
    async fn settle(&self, again: bool) {
        self.settle_many(1, again).await;
    }

    async fn settle_many(&self, n: usize, again: bool) {
        if again {
            self.again.store(true, Ordering::Release);
        }
        if self.left.fetch_sub(n, Ordering::AcqRel) == n {
            let _ = if self.again.load(Ordering::Acquire) {
                self.msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await
            } else {
                self.msg.ack().await
            };
        }
    }
}

/// A job of a pulled message with the concurrency slot it will run in.
struct Pulled {
    run: pb::JobRun,
    /// The message's `traceparent` header (a single run's trace context).
    header_tp: String,
    delivery: Arc<Delivery>,
    permit: OwnedSemaphorePermit,
}

impl JobRunner {
    /// Claims a group of pulled jobs in one ClaimJobs call, then runs each granted one in its
    /// slot. Refused claims settle their message as acked; on a failed call the messages come
    /// back.
    async fn claim_group(self, group: Vec<Pulled>, tracker: TaskTracker) {
        let items: Vec<_> = group
            .into_iter()
            .map(|p| {
                let (runner, span) = self.prepare(&p.run, &p.header_tp);
                (runner, span, p)
            })
            .collect();
        let claims = items
            .iter()
            .map(|(runner, _, p)| pb::ClaimJobRequest {
                job_id: p.run.job_id.clone(),
                attempt: p.run.attempt,
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
                for (runner, span, p) in items {
                    tracker.spawn(async move {
                        tracing::Instrument::instrument(runner.claim_and_run(p.run, p.delivery), span).await;
                        drop(p.permit);
                    });
                }
                return;
            }
            other => {
                if let Err(s) = &other {
                    tracing::warn!(dispatch = %self.cfg.dispatch_url, code = ?s.code(), error = %s.message(), jobs = items.len(), "claim failed; messages will be redelivered");
                }
                self.metrics.errors.with_label_values(&["claim"]).inc();
                for (.., p) in items {
                    p.delivery.settle(true).await;
                }
                return;
            }
        };
        for ((runner, span, p), result) in items.into_iter().zip(results) {
            match (result.job, result.error) {
                (Some(job), _) => {
                    let payload_json = result.payload_json;
                    // From here the Redis lease is the one retry clock.
                    p.delivery.settle(false).await;
                    // Boxed: the job's future is large, and moving it into a task cost more
                    // than the allocation.
                    let run = Box::pin(tracing::Instrument::instrument(
                        runner.run_claimed(job, payload_json),
                        span,
                    ));
                    let permit = p.permit;
                    tracker.spawn(async move {
                        run.await;
                        drop(permit);
                    });
                }
                (None, e) => {
                    let (code, reason) = e.map_or((Code::Internal, String::new()), |e| (Code::from(e.code), e.message));
                    let again = span.in_scope(|| self.not_claimed(&p.run.queue, code, &reason));
                    p.delivery.settle(again).await;
                }
            }
        }
    }

    /// Opens the attempt's span for a pulled job, a child of the relay's publish span (the
    /// job's trace, from the job's own `traceparent` in a `runs` message, else the message's
    /// header).
    fn prepare(&self, run: &pb::JobRun, header_tp: &str) -> (JobRunner, tracing::Span) {
        let sent = if run.traceparent.is_empty() {
            header_tp.to_string()
        } else {
            run.traceparent.clone()
        };
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
        (runner, span)
    }

    /// Claims one job with ClaimJob, then runs it.
    async fn claim_and_run(mut self, run: pb::JobRun, delivery: Arc<Delivery>) {
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
                delivery.settle(false).await;
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
                let again = self.not_claimed(&run.queue, code, s.message());
                delivery.settle(again).await;
                return;
            }
        };
        self.run_claimed(job, String::new()).await;
    }

    /// What a claim that was not granted means for its message: settled (`false`) when the
    /// job moved on without it (`FAILED_PRECONDITION`, `NOT_FOUND`), else to be delivered
    /// again (`true`).
    fn not_claimed(&self, queue: &str, code: Code, reason: &str) -> bool {
        if matches!(code, Code::FailedPrecondition | Code::NotFound) {
            tracing::debug!(reason, "claim refused; message dropped");
            if reason == format!("queue {queue} is paused") {
                // Dispatch writes the dropped messages again when the queue is resumed.
                self.paused.send_if_modified(|p| p.insert(queue.to_string()));
            }
            self.metrics.claims_refused.with_label_values(&[queue]).inc();
            false
        } else {
            tracing::warn!(dispatch = %self.cfg.dispatch_url, ?code, reason, "claim failed; message will be redelivered");
            self.metrics.errors.with_label_values(&["claim"]).inc();
            true
        }
    }
}
