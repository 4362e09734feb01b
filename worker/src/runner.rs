//! The worker loop: connect, announce, one puller per queue (pull.rs), then drain.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WorkerConfig;
use crate::announce::Announcer;
use crate::attempt::{Handlers, JobRunner};
use crate::lease::Leases;
use crate::pull::Puller;
use crate::report::Reporter;

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
    let leases = Leases::start(client.clone(), cfg.lease);
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
            consumer,
            slots,
            tracker: tracker.clone(),
            runner: JobRunner {
                paused: paused.clone(),
                client: client.clone(),
                handlers: handlers.clone(),
                cfg: cfg.clone(),
                hand_back: hand_back.clone(),
                metrics: metrics.clone(),
                reporter: reporter.clone(),
                leases: leases.clone(),
                traceparent: String::new(),
            },
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
