//! Background loops. Each write is one atomic Redis script that checks its job again, so any
//! number of dispatch replicas can run them at once without promoting, reaping, expiring or
//! re-publishing a job twice.
//!
//! - timers (every `scheduler_interval_ms`, each partition): due SCHEDULED jobs (delayed, or
//!   in backoff) → QUEUED with a run message; RUNNING jobs whose lease expired → a failed
//!   attempt; finished jobs past their retention → deleted (see tick.lua).
//! - sweeper (every `sweeper_interval_ms`): a queue whose run stream holds fewer messages than
//!   it has QUEUED jobs is scanned, and each QUEUED job whose run message is really missing
//!   (for longer than `sweep_after_ms`) gets it written again. A backlog waiting for workers
//!   in messages of one job each costs one stream-info call per sweep; one in `runs` messages
//!   (several jobs each, so fewer messages than jobs) costs, once its oldest job is older
//!   than `sweep_after_ms`, a read of each of its messages per sweep (one round trip per
//!   message of up to 64 jobs).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Loops, Streams};
use crate::metrics::Metrics;
use crate::store::{self, Partition, Store, SweepCandidate};

/// Jobs per script call.
const BATCH: usize = 500;
/// QUEUED jobs of one queue looked at per sweep.
const SWEEP_SCAN: usize = 20_000;

/// Runs the loops until `shutdown`; `wake` is notified when they wrote to an outbox.
pub async fn run(
    store: Store,
    js: jetstream::Context,
    cfg: Loops,
    streams: Streams,
    wake: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    // One task for every partition's timers: one wake-up per interval, the partitions' steps
    // sent together.
    let timers = {
        let (store, wake, metrics) = (store.clone(), wake.clone(), metrics.clone());
        every("timers", cfg.scheduler_interval_ms, shutdown.clone(), move || {
            let (store, wake, metrics) = (store.clone(), wake.clone(), metrics.clone());
            async move {
                let due = store.due(BATCH).await?;
                let steps = due
                    .into_iter()
                    .map(|(p, ids)| timers_step(&store, p, ids, &wake, &metrics));
                let mut more = false;
                for r in futures::future::join_all(steps).await {
                    more |= r?;
                }
                Ok(more)
            }
        })
    };
    let sweeper = every("sweeper", cfg.sweeper_interval_ms, shutdown.clone(), move || {
        let (store, js, wake, metrics) = (store.clone(), js.clone(), wake.clone(), metrics.clone());
        let (age, run_stream) = (cfg.sweep_after_ms, streams.run_stream.clone());
        async move {
            let n = sweep(&store, &js, &run_stream, age, &wake).await?;
            metrics.run_messages_rewritten.inc_by(n);
            Ok(false)
        }
    });
    tokio::join!(timers, sweeper);
}

/// Handles due timers of partition `p` until fewer than a batch are due. Returns whether a
/// whole batch was handled (more may be due).
async fn timers_step(
    store: &Store,
    p: Partition,
    ids: Vec<String>,
    wake: &Notify,
    metrics: &Metrics,
) -> Result<bool, Failure> {
    let t = store.tick_ids(p, ids).await?;
    if t.promoted + t.reaped > 0 {
        wake.notify_one();
        tracing::debug!(
            partition = p.0,
            promoted = t.promoted,
            reaped = t.reaped,
            "timers moved jobs"
        );
    }
    metrics.lease_expiries.inc_by(t.reaped);
    metrics.expired.inc_by(t.expired);
    Ok(t.due >= BATCH)
}

/// Why a loop step failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("run stream: {0}")]
    Nats(String),
}

/// One sweep over every queue. Returns the run messages written again.
async fn sweep(
    store: &Store,
    js: &jetstream::Context,
    run_stream: &str,
    age_ms: u64,
    wake: &Notify,
) -> Result<u64, Failure> {
    let counts = store.queue_counts().await?;
    let paused = store.paused_queues().await?;
    let queued: Vec<(String, u64)> = counts
        .into_iter()
        .filter(|q| !paused.contains_key(&q.name))
        .map(|q| {
            let n = q.counts.get("QUEUED").copied().unwrap_or(0);
            (q.name, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if queued.is_empty() {
        return Ok(0);
    }
    let stream = js
        .get_stream(run_stream)
        .await
        .map_err(|e| Failure::Nats(e.to_string()))?;
    let in_stream = subject_counts(&stream).await?;
    let mut written = 0;
    for (queue, n) in queued {
        written += sweep_queue(store, &stream, &in_stream, &queue, n, age_ms, wake).await?;
    }
    Ok(written)
}

/// Writes again the run messages of a resumed queue that its paused time lost (a worker that
/// pulled one while the queue was paused had its claim refused and dropped it), at once.
/// Returns how many.
pub async fn sweep_resumed(
    store: &Store,
    js: &jetstream::Context,
    run_stream: &str,
    queue: &str,
    wake: &Notify,
) -> Result<u64, String> {
    let go = async {
        let n = store
            .queue_counts()
            .await?
            .into_iter()
            .find(|q| q.name == queue)
            .and_then(|q| q.counts.get("QUEUED").copied())
            .unwrap_or(0);
        if n == 0 {
            return Ok(0);
        }
        let stream = js
            .get_stream(run_stream)
            .await
            .map_err(|e| Failure::Nats(e.to_string()))?;
        let in_stream = subject_counts(&stream).await?;
        sweep_queue(store, &stream, &in_stream, queue, n, 0, wake).await
    };
    go.await.map_err(|e: Failure| e.to_string())
}

/// Sweeps one queue that has `n` QUEUED jobs (see [`sweep`]).
async fn sweep_queue(
    store: &Store,
    stream: &jetstream::stream::Stream,
    in_stream: &HashMap<String, u64>,
    queue: &str,
    n: u64,
    age_ms: u64,
    wake: &Notify,
) -> Result<u64, Failure> {
    let subject = format!("job_run.{queue}");
    let held = in_stream.get(&subject).copied().unwrap_or(0);
    if held >= n {
        return Ok(0);
    }
    // Fewer messages than QUEUED jobs. Nothing to do unless a job has waited longer than
    // age_ms (a queue under load is always a little behind its outbox): ids are UUIDv7,
    // so the oldest QUEUED id tells how long the oldest job exists.
    let oldest = store
        .list_ids(&[queue.to_string()], &[store::State::Queued], "", 1)
        .await?;
    let now = store.time_ms().await?;
    if oldest
        .first()
        .and_then(|id| store::id_time_ms(id))
        .is_some_and(|t| now.saturating_sub(t) < age_ms)
    {
        return Ok(0);
    }
    // Find out which jobs lack their message. The time and the outboxes' oldest entries first:
    // a message the relay publishes while the stream is read may go unseen, and its job is
    // younger than the oldest entry its partition's outbox holds now, or than now.
    let now = store.time_ms().await?;
    let floors: HashMap<Partition, u64> = store
        .outbox_heads()
        .await?
        .into_iter()
        .map(|(p, _, oldest)| (p, oldest.map_or(now, |o| o.min(now))))
        .collect();
    let present = if held > 0 {
        messages_of(stream, &subject, held + SWEEP_SCAN as u64).await?
    } else {
        HashMap::new()
    };
    let ids = store.queued_ids(queue, SWEEP_SCAN).await?;
    let mut by_partition: HashMap<Partition, Vec<SweepCandidate>> = HashMap::new();
    for id in ids {
        let attempts_in_stream = present.get(&id).cloned().unwrap_or_default();
        by_partition
            .entry(store.layout().partition_of(&id))
            .or_default()
            .push(SweepCandidate { id, attempts_in_stream });
    }
    let mut written = 0;
    for (p, jobs) in by_partition {
        let mut n_p = 0;
        for chunk in jobs.chunks(BATCH) {
            n_p += store
                .sweep(p, age_ms, floors.get(&p).copied().unwrap_or(now), chunk)
                .await?;
        }
        if n_p > 0 {
            wake.notify_one();
            tracing::info!(queue = %queue, partition = p.0, jobs = n_p, "run messages missing from the run stream written again");
        }
        written += n_p;
    }
    Ok(written)
}

/// Messages per subject in the run stream.
async fn subject_counts(stream: &jetstream::stream::Stream) -> Result<HashMap<String, u64>, Failure> {
    let mut info = stream
        .info_with_subjects("job_run.>")
        .await
        .map_err(|e| Failure::Nats(e.to_string()))?;
    let mut counts = HashMap::new();
    while let Some(item) = info.next().await {
        let (subject, n) = item.map_err(|e| Failure::Nats(e.to_string()))?;
        counts.insert(subject, n as u64);
    }
    Ok(counts)
}

/// The (job id → attempts) of the run messages the stream holds on `subject` (at most
/// `limit` messages, to its end; a `runs` message names several jobs), read one by one with the stream's message-get API (a work-queue stream refuses the
/// ack-less consumer that would read them in bulk, and an acking one would take them from the
/// workers). Costs one round trip per message; the sweeper only gets here for a queue that has
/// fewer messages than QUEUED jobs and a job older than `sweep_after_ms`.
async fn messages_of(
    stream: &jetstream::stream::Stream,
    subject: &str,
    limit: u64,
) -> Result<HashMap<String, Vec<u32>>, Failure> {
    use jetstream::stream::LastRawMessageErrorKind as Kind;
    let mut present: HashMap<String, Vec<u32>> = HashMap::new();
    let mut seq = 1u64;
    for _ in 0..limit {
        let msg = match stream.get_first_raw_message_by_subject(subject, seq).await {
            Ok(msg) => msg,
            Err(e) if e.kind() == Kind::NoMessageFound => break,
            Err(e) => return Err(Failure::Nats(e.to_string())),
        };
        seq = msg.sequence + 1;
        if msg.headers.get(crate::bus::KIND_HEADER).map(|k| k.as_str()) == Some("runs") {
            // Several jobs in one message (bus::outgoing_runs): each has its message.
            match <dispatch_client::pb::JobRuns as prost::Message>::decode(msg.payload.clone()) {
                Ok(body) => {
                    for run in body.runs {
                        present.entry(run.job_id).or_default().push(run.attempt);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, sequence = msg.sequence, "undecodable runs message in the run stream")
                }
            }
            continue;
        }
        // Nats-Msg-Id: "<id>:<attempt>" or "<id>:<attempt>:s<n>" (see bus::outgoing).
        if let Some(msg_id) = msg.headers.get("Nats-Msg-Id") {
            let mut parts = msg_id.as_str().split(':');
            if let (Some(id), Some(Ok(attempt))) = (parts.next(), parts.next().map(str::parse::<u32>)) {
                present.entry(id.to_string()).or_default().push(attempt);
            }
        }
    }
    Ok(present)
}

/// Calls `step` every `interval_ms`, and again at once while it says there is more.
async fn every<F, Fut>(name: &'static str, interval_ms: u64, shutdown: CancellationToken, step: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<bool, Failure>>,
{
    let interval = Duration::from_millis(interval_ms.max(10));
    while !shutdown.is_cancelled() {
        match step().await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(loop_name = name, error = %e, "background step failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_tells_when_it_was_made() {
        let layout = store::Layout { partitions: 16 };
        let before = store::now_ms();
        let id = layout.new_id(Partition(3));
        let t = store::id_time_ms(&id).unwrap();
        assert!(t >= before && t <= store::now_ms(), "{t} not within the call");
        assert_eq!(
            store::id_time_ms("0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f0003"),
            Some(0x0190a5b27c3d)
        );
        assert_eq!(store::id_time_ms("short"), None);
        assert_eq!(store::id_time_ms("zzzzzzzz-zzzz"), None);
    }
}
