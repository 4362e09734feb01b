//! Worker SDK for Dispatch.
//!
//! A worker takes `job_run.<queue>` messages from NATS JetStream (one durable pull consumer per
//! queue, shared by every worker of that queue), claims each job through the gRPC
//! `WorkerService`, runs the handler registered for the job's type while heartbeating, and
//! reports the outcome with its lease id.
//!
//! - per-queue concurrency: at most N jobs of a queue run at once in this process;
//! - per-job timeout: the handler future is dropped and the attempt reported as failed;
//! - cancellation: a heartbeat answering `cancel_requested` stops the handler;
//! - graceful drain: [`Worker::run`] stops pulling when its token is cancelled, lets in-flight
//!   jobs finish within the grace period, then hands the rest back (`FailJob`, retryable,
//!   no delay) so another worker takes them at once.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use dispatch_worker::{Worker, WorkerConfig, JobContext, HandlerError};
//! let worker = Worker::new(WorkerConfig::default())
//!     .handler("greet", |ctx: JobContext| async move {
//!         Ok::<_, HandlerError>(serde_json::json!({"hello": ctx.payload["name"]}))
//!     });
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod announce;
mod attempt;
pub mod handlers;
mod lease;
pub mod metrics;
mod pull;
mod report;
mod rpc;
mod runner;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use dispatch_client::pb;

/// Worker settings. `Debug` never shows the token.
#[derive(Clone)]
pub struct WorkerConfig {
    /// gRPC endpoint of dispatch, e.g. `http://127.0.0.1:50051`.
    pub dispatch_url: String,
    /// NATS server, e.g. `nats://127.0.0.1:4222` (`nats://user:password@host:4222` and
    /// `tls://host:4222` work too).
    pub nats_url: String,
    /// NATS credentials and TLS (each secret also from a file).
    pub nats: dispatch_client::nats::NatsAuth,
    /// This worker's id, recorded on every claim.
    pub worker_id: String,
    /// Queues to take jobs from, each with its concurrency.
    pub queues: Vec<(String, usize)>,
    /// Lease asked for on claim and on every heartbeat; heartbeats go every third of it.
    pub lease: Duration,
    /// How long in-flight jobs may run after a drain starts before they are handed back.
    pub drain_grace: Duration,
    /// JetStream stream holding `job_run.>` (created by dispatch).
    pub run_stream: String,
    /// Where to serve Prometheus `GET /metrics`; `None` serves nothing.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// API key (a `worker` key) sent with every call, when dispatch has authentication on.
    pub token: Option<String>,
    /// TLS to dispatch (an `https://` `dispatch_url`): the CA to trust and, for mutual TLS,
    /// the client certificate. `None` with an `https://` URL trusts the system's roots.
    pub tls: Option<dispatch_client::Tls>,
    /// How long the worker keeps trying to reach NATS at start before it gives up (with a
    /// warning naming the server every second meanwhile).
    pub connect_timeout: Duration,
    /// Internal networks the built-in `http.fetch` may reach all the same (by default it
    /// refuses loopback, private, link-local and multicast addresses).
    pub fetch_allow: Vec<handlers::Net>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("dispatch_url", &self.dispatch_url)
            .field("nats_url", &redact_userinfo(&self.nats_url))
            .field("nats", &self.nats)
            .field("worker_id", &self.worker_id)
            .field("queues", &self.queues)
            .field("lease", &self.lease)
            .field("drain_grace", &self.drain_grace)
            .field("run_stream", &self.run_stream)
            .field("metrics_addr", &self.metrics_addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("fetch_allow", &self.fetch_allow)
            .finish()
    }
}

/// `url` with any `user:password@` or `token@` part of each server replaced by `***@`.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (servers, creds) = dispatch_client::nats::split_credentials(url);
    match creds {
        None => url.to_string(),
        Some(_) => servers
            .split(',')
            .map(|u| match u.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://***@{rest}"),
                None => u.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            dispatch_url: "http://127.0.0.1:50051".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            worker_id: format!("worker-{}", std::process::id()),
            queues: vec![("default".into(), 4)],
            lease: Duration::from_secs(30),
            drain_grace: Duration::from_secs(30),
            run_stream: "DISPATCH_RUN".into(),
            metrics_addr: None,
            token: None,
            tls: None,
            connect_timeout: Duration::from_secs(60),
            fetch_allow: Vec::new(),
        }
    }
}

/// What a handler gets for one attempt of a job.
#[derive(Clone)]
pub struct JobContext {
    /// The job as claimed (id, queue, type, attempt, options...). Its `payload` is unset when
    /// the claim brought the payload as JSON text (the batch claim does): read `payload`.
    pub job: pb::Job,
    /// The payload as JSON.
    pub payload: serde_json::Value,
    /// Cancelled when the attempt is stopped (timeout, cancellation, lost lease, drain).
    /// Handlers doing blocking or external work can watch it; the handler future is dropped
    /// anyway.
    pub cancelled: CancellationToken,
    pub(crate) progress: Arc<Mutex<Option<serde_json::Value>>>,
}

impl JobContext {
    /// Records progress; sent with the next heartbeat.
    pub fn set_progress(&self, progress: serde_json::Value) {
        if let Ok(mut p) = self.progress.lock() {
            *p = Some(progress);
        }
    }
}

/// A failed attempt, as a handler reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl HandlerError {
    /// A failure worth retrying (network trouble, a busy dependency...).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (bad input...): the job goes to FAILED at once.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// A boxed handler.
pub type Handler = Arc<dyn Fn(JobContext) -> BoxFuture<'static, Result<serde_json::Value, HandlerError>> + Send + Sync>;

/// A worker: configuration plus handlers by job type.
pub struct Worker {
    config: WorkerConfig,
    handlers: HashMap<String, Handler>,
}

impl Worker {
    /// A worker with no handlers yet.
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            handlers: HashMap::new(),
        }
    }

    /// Registers the handler for `job_type`.
    pub fn handler<F, Fut>(mut self, job_type: &str, f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, HandlerError>> + Send + 'static,
    {
        self.handlers
            .insert(job_type.to_string(), Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Registers the built-in handlers (`noop`, `sleep`, `http.fetch`, `fail`).
    pub fn with_builtin_handlers(self) -> Self {
        let policy = handlers::FetchPolicy {
            allow: self.config.fetch_allow.clone(),
        };
        handlers::register(self, policy)
    }

    /// Runs until `shutdown` is cancelled, then drains (see the crate docs).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        runner::run(self.config, Arc::new(self.handlers), shutdown).await
    }
}
