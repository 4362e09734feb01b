//! The outbox relay: publishes outbox entries to JetStream and deletes each one only after
//! its publish ack. Batched: one read, all publishes in flight at once, one ack/delete.
//!
//! Each partition has its own outbox and, in each dispatch, its own relay task. Several
//! dispatch replicas share an outbox through a Redis consumer group; entries left
//! unacknowledged by a replica that died are taken over after `relay_claim_idle_ms`, and the
//! group forgets consumers that are gone. A publish repeated after a crash is dropped by
//! JetStream's `Nats-Msg-Id` de-duplication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus;
use crate::config::Loops;
use crate::metrics::Metrics;
use crate::store::{Layout, Partition, Store};

/// Wakes the relay of a partition after a transition there wrote to its outbox. Cheap to
/// clone.
#[derive(Clone)]
pub struct Wake {
    layout: Layout,
    notify: Arc<[Notify]>,
}

impl Wake {
    pub fn new(layout: Layout) -> Wake {
        Wake {
            layout,
            notify: layout.all().map(|_| Notify::new()).collect(),
        }
    }

    /// After a transition of job `id`.
    pub fn job(&self, id: &str) {
        self.partition(self.layout.partition_of(id));
    }

    /// After transitions of jobs `ids`.
    pub fn jobs<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut seen = vec![false; self.notify.len()];
        for id in ids {
            let p = self.layout.partition_of(id);
            if !std::mem::replace(&mut seen[p.0 as usize], true) {
                self.partition(p);
            }
        }
    }

    /// After a write to partition `p`'s outbox.
    pub fn partition(&self, p: Partition) {
        if let Some(n) = self.notify.get(p.0 as usize) {
            n.notify_one();
        }
    }

    fn notified(&self, p: Partition) -> &Notify {
        &self.notify[p.0 as usize]
    }
}

/// Runs one relay per partition until `shutdown` is cancelled.
pub async fn run(
    store: Store,
    js: jetstream::Context,
    cfg: Loops,
    consumer: String,
    wake: Wake,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let relays = store.layout().all().map(|p| {
        run_partition(
            p,
            store.clone(),
            js.clone(),
            cfg.clone(),
            consumer.clone(),
            wake.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    });
    futures::future::join_all(relays).await;
}

#[allow(clippy::too_many_arguments)]
async fn run_partition(
    p: Partition,
    store: Store,
    js: jetstream::Context,
    cfg: Loops,
    consumer: String,
    wake: Wake,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut pending_first = true;
    let mut last_autoclaim = Instant::now();
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if last_autoclaim.elapsed() > Duration::from_millis(cfg.relay_claim_idle_ms / 2) {
            last_autoclaim = Instant::now();
            match store
                .outbox_autoclaim(p, &consumer, cfg.relay_claim_idle_ms, cfg.relay_batch)
                .await
            {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        entries = n,
                        partition = p.0,
                        "relay took over outbox entries of an idle relay"
                    );
                    pending_first = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay autoclaim failed"),
            }
            match store.outbox_forget_idle(p, &consumer, cfg.relay_forget_idle_ms).await {
                Ok(n) if n > 0 => {
                    tracing::info!(consumers = n, partition = p.0, "relay removed consumers of gone relays")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay cannot list the outbox consumers"),
            }
        }
        let entries = match store.outbox_read(p, &consumer, cfg.relay_batch, pending_first).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot read the outbox");
                failures += 1;
                backoff(failures, &shutdown).await;
                continue;
            }
        };
        if entries.is_empty() {
            if pending_first {
                pending_first = false;
                continue;
            }
            tokio::select! {
                _ = wake.notified(p).notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(cfg.relay_poll_ms)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let full = entries.len() >= cfg.relay_batch;
        metrics.relay_batch.observe(entries.len() as f64);
        let (done, failed) = publish_batch(&js, entries, &metrics).await;
        if let Err(e) = store.outbox_done(p, &done).await {
            // The entries stay pending and are published again; dedup drops the repeat.
            tracing::warn!(error = %e, "relay cannot delete published entries");
        }
        if failed > 0 {
            failures += 1;
            pending_first = true;
            tracing::warn!(failed, "relay publishes failed; retrying");
            backoff(failures, &shutdown).await;
        } else {
            failures = 0;
            // A full batch means more may be waiting; a pending re-read found its end.
            if !full {
                pending_first = false;
            }
        }
    }
}

async fn backoff(failures: u32, shutdown: &CancellationToken) {
    let ms = (50u64 << failures.min(5)).min(2_000);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Publishes every entry, then waits for all acks. Returns the stream ids published (and
/// undecodable ones, which would never publish) and the count that failed.
async fn publish_batch(
    js: &jetstream::Context,
    entries: Vec<crate::store::OutboxEntry>,
    metrics: &Metrics,
) -> (Vec<String>, usize) {
    let mut done = Vec::with_capacity(entries.len());
    let mut acks = Vec::with_capacity(entries.len());
    let mut failed = 0;
    for e in entries {
        if e.fields.is_empty() {
            // Deleted already (acknowledged by another relay after a takeover).
            done.push(e.stream_id);
            continue;
        }
        let Some(mut msg) = bus::outgoing(&e.fields) else {
            tracing::error!(entry = ?e, "outbox entry of unknown kind dropped");
            done.push(e.stream_id);
            continue;
        };
        if dispatch_telemetry::exporting() && e.fields.get("kind").is_some_and(|k| k == "run") {
            // A producer span per run message, child of the job's trace context; the worker's
            // span hangs off it.
            let get = |k: &str| e.fields.get(k).map(String::as_str).unwrap_or("");
            let span = tracing::info_span!(
                "publish",
                otel.name = format!("publish {}", msg.subject),
                otel.kind = "producer",
                messaging.system = "nats",
                job_id = get("id"),
                queue = get("queue"),
                job_type = get("type"),
                attempt = get("attempt"),
            );
            dispatch_telemetry::set_parent(&span, get("tp"));
            if let Some(tp) = dispatch_telemetry::traceparent(&span) {
                msg.headers.insert("traceparent", tp.as_str());
            }
        }
        match js.publish_with_headers(msg.subject, msg.headers, msg.payload).await {
            Ok(ack) => acks.push((e.stream_id, ack)),
            Err(err) => {
                tracing::warn!(error = %err, "publish failed");
                metrics.nats_errors.with_label_values(&["publish"]).inc();
                failed += 1;
            }
        }
    }
    let results = futures::future::join_all(acks.into_iter().map(|(id, ack)| async move { (id, ack.await) })).await;
    for (id, r) in results {
        match r {
            Ok(_) => done.push(id),
            Err(err) => {
                tracing::warn!(error = %err, "publish not acknowledged");
                metrics.nats_errors.with_label_values(&["ack"]).inc();
                failed += 1;
            }
        }
    }
    (done, failed)
}
