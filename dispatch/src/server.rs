//! Wiring: connects Redis and NATS, starts the gRPC server, the outbox relay and the
//! background loops, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use dispatch_client::pb::{job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::api::Limits;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::{JobApi, Shared, WorkerApi};
use crate::store::Store;
use crate::{background, bus, relay, watch};

/// Script runs whose outbox entries wait for the prompt publisher at most; past that, the
/// relay publishes them.
const PROMPT_QUEUE: usize = 4_096;

/// A running dispatch. Drop does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// The address gRPC is bound to (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The address the HTTP side (REST gateway, OpenAPI, docs) is bound to.
    pub http_addr: SocketAddr,
    /// The address of the separate `/metrics` listener, when configured.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// A token that stops everything when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops taking requests, stops the loops and the relay, and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until everything has stopped (after the token is cancelled).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts dispatch with `config`. Fails fast when Redis or NATS cannot be reached at start.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let keys = match config.auth.keys_file.as_str() {
        "" => None,
        f => Some(crate::auth::Keys::load(std::path::Path::new(f)).map_err(anyhow::Error::msg)?),
    };
    let store = match Store::connect(&config.redis_url, (&config).into()).await {
        Ok(s) => s,
        // Not a connection problem: say only what to do.
        Err(e @ crate::store::Error::Incompatible(_)) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "connecting to Redis at {}",
                crate::config::redact_url(&config.redis_url)
            )));
        }
    };
    let hub = watch::Hub::start(&config.redis_url, &config.redis, store.layout(), store.client().clone())
        .await
        .context("subscribing to the watch channel")?;
    let nats = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        bus::connect(&config.nats_url, &config.nats, "dispatch"),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "timed out connecting to NATS at {}",
            crate::config::redact_url(&config.nats_url)
        )
    })?
    .map_err(|e| {
        anyhow::anyhow!(
            "connecting to NATS at {}: {e}",
            crate::config::redact_url(&config.nats_url)
        )
    })?;
    let js = async_nats::jetstream::new(nats);
    // JetStream may still be starting (or recovering its store) when its port opens: retry.
    let streams_deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match bus::ensure_streams(&js, &config.streams).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < streams_deadline => {
                tracing::warn!(error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => return Err(anyhow::Error::msg(e)),
        }
    }

    let tls = crate::listen::tls_acceptor(&config.tls)?;
    let listener = crate::listen::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let grpc_addr = listener.local_addr()?;
    let http_listener = crate::listen::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let metrics_listener = match config.http.metrics_addr.as_str() {
        "" => None,
        a => {
            let addr: SocketAddr = a.parse().context("http.metrics_addr")?;
            Some(
                crate::listen::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener on {addr}"))?,
            )
        }
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;

    let shutdown = CancellationToken::new();
    let relay_wake = Arc::new(Notify::new());
    let metrics = Metrics::new();
    // This dispatch's relay consumer; with prompt publishing, every script run reads the
    // entries it wrote into it and hands them to the publisher.
    let consumer = format!("relay-{}", uuid::Uuid::new_v4().simple());
    let missed = Arc::new(Notify::new());
    let (store, prompt_queue) = if config.loops.relay_enabled && config.loops.relay_prompt {
        let (tx, rx) = tokio::sync::mpsc::channel(PROMPT_QUEUE);
        let prompt = crate::store::Prompt::new(consumer.clone(), tx, missed.clone());
        (store.with_prompt(prompt), Some(rx))
    } else {
        (store, None)
    };
    let config = Arc::new(config);
    let shared = Shared {
        store: store.clone(),
        creates: crate::store::Committer::new(store.clone(), config.jobs.idempotency_window_ms),
        js: js.clone(),
        limits: Limits {
            defaults: config.jobs.clone(),
        },
        config: config.clone(),
        relay_wake: relay_wake.clone(),
        hub,
        admission: Arc::new(tokio::sync::Semaphore::new(config.jobs.max_inflight_creates)),
        worker_admission: Arc::new(tokio::sync::Semaphore::new(config.limits.worker_calls)),
        metrics: metrics.clone(),
        keys: keys.clone(),
        watches: crate::limits::Watches::new(config.limits.watch_streams, config.limits.watch_streams_per_key),
        create_rate: crate::limits::CreateRate::new(
            config.limits.create_per_key_per_s,
            config.limits.create_burst_per_key,
        ),
        shutdown: shutdown.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<JobApi>>().await;
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dispatch_client::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(dispatch_client::ERROR_DETAILS_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dispatch_client::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(dispatch_client::ERROR_DETAILS_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut tasks = Vec::new();
    let grpc_shutdown = shutdown.clone();
    let handshake = std::time::Duration::from_millis(config.tls.handshake_timeout_ms);
    let http_timeouts = crate::listen::HttpTimeouts {
        header: std::time::Duration::from_millis(config.http.header_timeout_ms),
        idle: std::time::Duration::from_millis(config.http.idle_timeout_ms),
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.limits.grpc_max_concurrent_streams))
        // Idle connections are probed and, when the peer is gone, closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(crate::auth::GrpcAuthLayer(keys.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(JobServiceServer::new(JobApi(shared.clone())))
        .add_service(WorkerServiceServer::new(WorkerApi(shared.clone())));
    let http_router = crate::gateway::router(
        JobApi(shared.clone()),
        WorkerApi(shared),
        config.http.clone(),
        keys.clone(),
        shutdown.clone(),
    );
    let http_router = if config.http.dashboard {
        http_router.merge(crate::dashboard::router(&config.http.jaeger_url))
    } else {
        http_router
    };
    let metrics_router = crate::gateway::metrics_router(metrics.clone(), store.clone());
    let http_router = match metrics_listener {
        // /metrics on its own plain listener (for the scraper), not beside the API.
        Some(l) => {
            let conns = crate::listen::incoming(l, 64, None, handshake, shutdown.clone());
            tasks.push(tokio::spawn(crate::listen::serve_http(
                conns,
                metrics_router,
                http_timeouts,
                shutdown.clone(),
            )));
            http_router
        }
        None => http_router.merge(metrics_router),
    };
    let http_conns = crate::listen::incoming(
        http_listener,
        config.limits.http_connections,
        tls.clone(),
        handshake,
        shutdown.clone(),
    );
    tasks.push(tokio::spawn(crate::listen::serve_http(
        http_conns,
        http_router,
        http_timeouts,
        shutdown.clone(),
    )));
    let grpc_conns = crate::listen::incoming(
        listener,
        config.limits.grpc_connections,
        tls.clone(),
        handshake,
        shutdown.clone(),
    );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(ReceiverStream::new(grpc_conns), grpc_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));
    if config.loops.relay_enabled {
        let wake = match prompt_queue {
            Some(queue) => {
                tasks.push(tokio::spawn(relay::publish_prompt(
                    store.clone(),
                    js.clone(),
                    config.loops.clone(),
                    queue,
                    missed.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )));
                relay::Wake::Missed(missed)
            }
            None => relay::Wake::Transitions(relay_wake.clone()),
        };
        tasks.push(tokio::spawn(relay::run(
            store.clone(),
            js.clone(),
            config.loops.clone(),
            consumer,
            wake,
            metrics.clone(),
            shutdown.clone(),
        )));
    } else {
        tracing::warn!("outbox relay disabled (fault injection): nothing will be published");
    }
    tasks.push(tokio::spawn(background::run(
        store,
        js,
        config.loops.clone(),
        config.streams.clone(),
        relay_wake,
        metrics,
        shutdown.clone(),
    )));
    match keys {
        Some(keys) => {
            tracing::info!(file = %config.auth.keys_file, "authentication on: every call needs an API key");
            tasks.push(tokio::spawn(
                keys.watch(std::time::Duration::from_secs(1), shutdown.clone()),
            ));
        }
        None if !(grpc_addr.ip().is_loopback() && http_addr.ip().is_loopback()) => {
            tasks.push(tokio::spawn(warn_insecure(grpc_addr, http_addr, shutdown.clone())));
        }
        None => {}
    }
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        metrics = ?metrics_addr,
        tls = tls.is_some(),
        mutual_tls = !config.tls.client_ca_file.is_empty(),
        "dispatch started"
    );
    Ok(Running {
        grpc_addr,
        http_addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// Says, at start and every hour, that anyone who can reach the ports can do anything
/// (`--insecure`: authentication off on a non-loopback address).
async fn warn_insecure(grpc: SocketAddr, http: SocketAddr, stop: CancellationToken) {
    loop {
        tracing::warn!(
            %grpc, %http,
            "authentication is off on a non-loopback address (--insecure): anyone who can reach \
             these ports can read and change every job; turn keys on (docs/security.md)"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}
