//! The worker loop: pull, claim, run, heartbeat, report, drain.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use dispatch_client::json;
use dispatch_client::pb::{self, worker_service_client::WorkerServiceClient};
use futures::FutureExt;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;

use crate::report::Reporter;
use crate::{Handler, JobContext, WorkerConfig};

pub(crate) type Client = WorkerServiceClient<dispatch_client::Transport>;
type Handlers = Arc<HashMap<String, Handler>>;

/// How an attempt ended, seen from the worker.
enum Outcome {
    Done(Result<serde_json::Value, crate::HandlerError>),
    TimedOut(Duration),
    Cancelled,
    LeaseLost,
    HandedBack,
}

pub(crate) async fn run(cfg: WorkerConfig, handlers: Handlers, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Lazy: the worker starts (and waits on NATS) even while dispatch is still coming up.
    let mut client = match (&cfg.tls, cfg.dispatch_url.starts_with("https://")) {
        (Some(tls), _) => dispatch_client::Client::connect_lazy_tls(cfg.dispatch_url.clone(), tls)?,
        (None, true) => dispatch_client::Client::connect_lazy_tls(cfg.dispatch_url.clone(), &Default::default())?,
        (None, false) => dispatch_client::Client::connect_lazy(cfg.dispatch_url.clone())?,
    };
    if let Some(token) = &cfg.token {
        client = client
            .with_token(token)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    }
    let client = client.workers();
    let Some(nats) = connect_nats(&cfg, &shutdown).await? else {
        return Ok(());
    };
    let js = jetstream::new(nats);
    // dispatch creates the stream; wait for it.
    let stream = loop {
        match js.get_stream(&cfg.run_stream).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::info!(error = %e, stream = %cfg.run_stream, "waiting for the run stream");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    let metrics = crate::metrics::Metrics::new();
    if let Some(addr) = cfg.metrics_addr {
        let (m, token) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = m.serve(addr, token).await {
                tracing::error!(error = %e, %addr, "worker metrics server failed");
            }
        });
    }
    let tracker = TaskTracker::new();
    // Cancelled when the grace period is over: running jobs are handed back.
    let hand_back = CancellationToken::new();
    let reporter = Reporter::start(client.clone());
    // The paused queues, as the last Announce reply (or a claim refused for a pause) said.
    // The first announcement is made before any pull, so a queue paused before the worker
    // started is never pulled.
    let (paused, _) = watch::channel(BTreeSet::new());
    let mut announcer = Announcer::new(client.clone(), cfg.clone(), paused.clone());
    tokio::select! {
        _ = announcer.once(0) => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let mut pullers = Vec::new();
    let mut slots_of = Vec::new();
    for (queue, concurrency) in &cfg.queues {
        let consumer = stream
            .get_or_create_consumer(
                &format!("worker-{queue}"),
                pull::Config {
                    durable_name: Some(format!("worker-{queue}")),
                    filter_subject: format!("job_run.{queue}"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating consumer for queue {queue}: {e}"))?;
        let slots = Arc::new(Semaphore::new((*concurrency).max(1)));
        slots_of.push(((*concurrency).max(1), slots.clone()));
        let ctx = Puller {
            queue: queue.clone(),
            paused: paused.clone(),
            consumer,
            client: client.clone(),
            handlers: handlers.clone(),
            cfg: cfg.clone(),
            slots,
            tracker: tracker.clone(),
            hand_back: hand_back.clone(),
            metrics: metrics.clone(),
            reporter: reporter.clone(),
        };
        pullers.push(tokio::spawn(ctx.run(shutdown.clone())));
    }
    let announcer = tokio::spawn(announcer.run(slots_of, shutdown.clone()));
    tracing::info!(worker_id = %cfg.worker_id, queues = ?cfg.queues, "worker started");
    shutdown.cancelled().await;
    for p in pullers {
        let _ = p.await;
    }
    let _ = announcer.await;
    tracker.close();
    tracing::info!(in_flight = tracker.len(), grace = ?cfg.drain_grace, "draining");
    if tokio::time::timeout(cfg.drain_grace, tracker.wait()).await.is_err() {
        tracing::warn!(in_flight = tracker.len(), "grace period over: handing jobs back");
        hand_back.cancel();
        tracker.wait().await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

struct Puller {
    queue: String,
    paused: watch::Sender<BTreeSet<String>>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    client: Client,
    handlers: Handlers,
    cfg: WorkerConfig,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    hand_back: CancellationToken,
    metrics: crate::metrics::Metrics,
    reporter: Reporter,
}

impl Puller {
    async fn run(self, shutdown: CancellationToken) {
        let mut pauses = self.paused.subscribe();
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
                    self.metrics.errors.with_label_values(&["pull"]).inc();
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
                let runner = JobRunner {
                    paused: self.paused.clone(),
                    client: self.client.clone(),
                    handlers: self.handlers.clone(),
                    cfg: self.cfg.clone(),
                    hand_back: self.hand_back.clone(),
                    metrics: self.metrics.clone(),
                    reporter: self.reporter.clone(),
                    traceparent: String::new(),
                };
                self.tracker
                    .spawn(Box::pin(runner.claim_group(group, self.tracker.clone())));
            }
        }
    }
}

/// A pulled message with the concurrency slot it will run in.
type Pulled = (jetstream::Message, OwnedSemaphorePermit);

#[derive(Clone)]
struct JobRunner {
    paused: watch::Sender<BTreeSet<String>>,
    client: Client,
    handlers: Handlers,
    cfg: WorkerConfig,
    hand_back: CancellationToken,
    metrics: crate::metrics::Metrics,
    reporter: Reporter,
    /// Trace context sent with every call about this attempt: the job span's, or the one the
    /// run message carried when nothing is exported.
    traceparent: String,
}

impl JobRunner {
    /// A request carrying this attempt's trace context.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.traceparent.parse()
            && !self.traceparent.is_empty()
        {
            req.metadata_mut().insert("traceparent", v);
        }
        req
    }
}

fn pb_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn std_duration(d: Option<&pbjson_types::Duration>) -> Option<Duration> {
    d.filter(|d| d.seconds >= 0 && d.nanos >= 0)
        .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
}

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
        let reply = self.client.clone().claim_jobs(pb::ClaimJobsRequest { claims }).await;
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
                    // From here the Redis lease is the one retry clock.
                    let _ = msg.ack().await;
                    // Boxed: the job's future is large, and moving it into a task cost more
                    // than the allocation.
                    let run = Box::pin(tracing::Instrument::instrument(runner.run_claimed(job), span));
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
        self.run_claimed(job).await;
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

    /// Runs a claimed job and reports its outcome.
    async fn run_claimed(mut self, job: pb::Job) {
        let labels = [job.queue.clone(), job.r#type.clone()];
        self.metrics.started.with_label_values(&labels).inc();
        let in_flight = self.metrics.in_flight.with_label_values(&[&job.queue]);
        in_flight.inc();
        let began = std::time::Instant::now();
        self.run_job(job).await;
        in_flight.dec();
        self.metrics
            .run_time
            .with_label_values(&labels)
            .observe(began.elapsed().as_secs_f64());
    }

    async fn run_job(&mut self, job: pb::Job) {
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
        let ctx = JobContext {
            payload: json::from_proto(job.payload.as_ref()),
            job,
            cancelled: CancellationToken::new(),
            progress: Arc::new(Mutex::new(None)),
        };
        let job = job_ref;
        let cancelled = ctx.cancelled.clone();
        // The heartbeat task sets `stop` to Cancelled or LeaseLost and cancels the token.
        let stop: Arc<Mutex<Option<Outcome>>> = Arc::new(Mutex::new(None));
        let beat = tokio::spawn(tracing::Instrument::in_current_span(heartbeat(
            self.client.clone(),
            Beat {
                job_id: job.id.clone(),
                progress: ctx.progress.clone(),
                cancelled: cancelled.clone(),
            },
            lease_id.clone(),
            self.cfg.lease,
            stop.clone(),
            self.traceparent.clone(),
        )));
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
            _ = cancelled.cancelled() => stop.lock().ok().and_then(|mut s| s.take()).unwrap_or(Outcome::LeaseLost),
            _ = self.hand_back.cancelled() => Outcome::HandedBack,
        };
        cancelled.cancel();
        beat.abort();
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
        let client = self.client.clone();
        let r = with_retries(|| {
            let mut c = client.clone();
            let req = self.request(req.clone());
            async move { c.fail_job(req).await.map(|_| ()) }
        })
        .await;
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

/// Connects to NATS. A server that is not there yet is retried every second with a warning
/// naming it, until `cfg.connect_timeout` has passed without one connection (then an error);
/// a refused login or TLS handshake fails at once. `None` when stopped meanwhile. Once
/// connected, the client reconnects on its own for as long as it takes.
async fn connect_nats(cfg: &WorkerConfig, shutdown: &CancellationToken) -> anyhow::Result<Option<async_nats::Client>> {
    let shown = crate::redact_userinfo(&cfg.nats_url);
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    loop {
        let (opts, servers) = dispatch_client::nats::connect_options(&cfg.nats_url, &cfg.nats)
            .await
            .map_err(anyhow::Error::msg)?;
        match opts
            .name(&cfg.worker_id)
            .connection_timeout(Duration::from_secs(2))
            .connect(servers.as_str())
            .await
        {
            Ok(client) => return Ok(Some(client)),
            Err(e) if !dispatch_client::nats::not_there_yet(&e) => {
                anyhow::bail!("NATS at {shown} refused the connection: {e}")
            }
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "NATS at {shown} not reachable after {} s: {e}",
                        cfg.connect_timeout.as_secs()
                    );
                }
                tracing::warn!(nats = %shown, error = %e, "NATS not reachable yet; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Retries a report while dispatch is unreachable or at capacity (about 30 s in all); other
/// errors are final.
pub(crate) async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(s),
        }
    }
}

/// What the runner keeps of a job while its handler runs.
struct Attempt {
    id: String,
    queue: String,
    job_type: String,
    attempt: u32,
}

/// What a heartbeat needs of a running job: its id, the progress its handler sets, and the
/// token that stops the handler.
struct Beat {
    job_id: String,
    progress: Arc<Mutex<Option<serde_json::Value>>>,
    cancelled: CancellationToken,
}

/// Beats every third of the lease until aborted; stops the job on cancel or a lost lease.
async fn heartbeat(
    client: Client,
    ctx: Beat,
    lease_id: String,
    lease: Duration,
    stop: Arc<Mutex<Option<Outcome>>>,
    traceparent: String,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let mut req = tonic::Request::new(pb::HeartbeatRequest {
            job_id: ctx.job_id.clone(),
            lease_id: lease_id.clone(),
            progress: ctx
                .progress
                .lock()
                .ok()
                .and_then(|mut p| p.take())
                .map(|p| json::to_proto(&p)),
            lease_duration: Some(pb_duration(lease)),
        });
        if let Ok(v) = traceparent.parse()
            && !traceparent.is_empty()
        {
            req.metadata_mut().insert("traceparent", v);
        }
        match client.clone().heartbeat(req).await {
            Ok(r) if r.get_ref().cancel_requested => {
                tracing::info!(job_id = %ctx.job_id, "cancel requested; stopping the job");
                if let Ok(mut s) = stop.lock() {
                    *s = Some(Outcome::Cancelled);
                }
                ctx.cancelled.cancel();
                return;
            }
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                if let Ok(mut st) = stop.lock() {
                    *st = Some(Outcome::LeaseLost);
                }
                ctx.cancelled.cancel();
                return;
            }
            Err(s) => tracing::warn!(job_id = %ctx.job_id, error = %s, "heartbeat failed; will retry"),
        }
    }
}

/// Announces the worker to dispatch every interval (dispatch's reply says how often), and
/// keeps `paused` to the paused queues the reply names. While dispatch cannot be reached the
/// worker says so at WARN, naming it, once a minute.
struct Announcer {
    client: Client,
    cfg: WorkerConfig,
    paused: watch::Sender<BTreeSet<String>>,
    started: Duration,
    hostname: String,
    interval: Duration,
    last_warning: Option<std::time::Instant>,
    /// False once dispatch said it takes no announcements (an older version).
    on: bool,
}

impl Announcer {
    fn new(client: Client, cfg: WorkerConfig, paused: watch::Sender<BTreeSet<String>>) -> Self {
        Announcer {
            client,
            cfg,
            paused,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            interval: Duration::from_secs(2),
            last_warning: None,
            on: true,
        }
    }

    async fn run(mut self, slots: Vec<(usize, Arc<Semaphore>)>, shutdown: CancellationToken) {
        while self.on {
            let in_flight = slots
                .iter()
                .map(|(n, s)| n.saturating_sub(s.available_permits()) as u32)
                .sum();
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            self.once(in_flight).await;
        }
    }

    /// One announcement; the paused queues updated from its reply.
    async fn once(&mut self, in_flight: u32) {
        let req = pb::AnnounceRequest {
            worker_id: self.cfg.worker_id.clone(),
            queues: self
                .cfg
                .queues
                .iter()
                .map(|(q, c)| (q.clone(), (*c).max(1) as u32))
                .collect(),
            in_flight,
            hostname: self.hostname.clone(),
            version: concat!("dispatch-worker ", env!("CARGO_PKG_VERSION")).to_string(),
            started_at: Some(pbjson_types::Timestamp {
                seconds: self.started.as_secs() as i64,
                nanos: self.started.subsec_nanos() as i32,
            }),
        };
        match self.client.clone().announce(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if self.last_warning.take().is_some() {
                    tracing::info!(dispatch = %self.cfg.dispatch_url, "dispatch reachable again");
                }
                let now: BTreeSet<String> = r.paused_queues.into_iter().collect();
                self.paused.send_if_modified(|p| {
                    let changed = *p != now;
                    *p = now;
                    changed
                });
                if let Some(d) = std_duration(r.interval.as_ref()).filter(|d| !d.is_zero()) {
                    self.interval = d;
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::info!("dispatch does not take announcements (an older version); not announcing");
                self.on = false;
            }
            Err(s) => {
                if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(dispatch = %self.cfg.dispatch_url, code = ?s.code(), error = %s.message(), "cannot reach dispatch; retrying");
                    self.last_warning = Some(std::time::Instant::now());
                }
            }
        }
    }
}
