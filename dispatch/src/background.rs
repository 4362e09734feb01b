//! Background loops. Each step is one atomic Redis script, so any number of dispatch
//! replicas can run them at once without promoting, reaping or sweeping a job twice.
//!
//! - scheduler: due SCHEDULED jobs (delayed, or in backoff) → QUEUED with a run message;
//! - reaper: RUNNING jobs whose lease expired → a failed attempt (retry, FAILED, CANCELLED);
//! - sweeper: QUEUED jobs unclaimed for `sweep_after_ms` get their run message written again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Loops;
use crate::metrics::Metrics;
use crate::store::{self, Store};

const BATCH: usize = 500;

/// Runs the three loops until `shutdown`; `wake` is notified when they wrote to the outbox.
pub async fn run(store: Store, cfg: Loops, wake: Arc<Notify>, metrics: Metrics, shutdown: CancellationToken) {
    let s1 = store.clone();
    let s2 = store.clone();
    let s3 = store;
    tokio::join!(
        every(
            "scheduler",
            cfg.scheduler_interval_ms,
            wake.clone(),
            shutdown.clone(),
            move || {
                let s = s1.clone();
                async move { s.promote_due(BATCH).await }
            }
        ),
        every(
            "reaper",
            cfg.reaper_interval_ms,
            wake.clone(),
            shutdown.clone(),
            move || {
                let s = s2.clone();
                let m = metrics.clone();
                async move {
                    let n = s.reap_expired(BATCH).await?;
                    m.lease_expiries.inc_by(n);
                    Ok(n)
                }
            }
        ),
        every("sweeper", cfg.sweeper_interval_ms, wake, shutdown, move || {
            let s = s3.clone();
            let age = cfg.sweep_after_ms;
            async move { s.sweep_queued(age, BATCH).await }
        }),
    );
}

/// Calls `step` every `interval_ms`, and again at once while it finds a full batch.
async fn every<F, Fut>(name: &'static str, interval_ms: u64, wake: Arc<Notify>, shutdown: CancellationToken, step: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, store::Error>>,
{
    let interval = Duration::from_millis(interval_ms.max(10));
    loop {
        match step().await {
            Ok(n) if n > 0 => {
                tracing::debug!(loop_name = name, jobs = n, "background step moved jobs");
                wake.notify_one();
                if n as usize >= BATCH {
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(loop_name = name, error = %e, "background step failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
