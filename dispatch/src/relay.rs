//! The outbox relay: publishes outbox entries to JetStream and deletes each one only after
//! its publish is acknowledged. Batched: one read of every partition's outbox (one pipeline),
//! all publishes in flight at once, one ack/delete per partition (one pipeline). By default
//! only the last message of each stream in a batch asks for an ack, which vouches for the
//! earlier ones (`Loops::relay_ack_each`; docs/reliability.md says what that gives up).
//!
//! With prompt publishing (`Loops::relay_prompt`, off by default) the calls that commit
//! transitions hand their outbox entries to [`publish_prompt`] at once, and the relay loop only
//! publishes what that misses: entries it could not take or failed to publish (it notifies the
//! relay, which re-reads its consumer's pending entries), entries of relays that died, and
//! entries nobody read (written without prompt publishing); it then polls every
//! `relay_poll_ms` instead of waking after every transition.
//!
//! Several dispatch replicas share the outboxes through a Redis consumer group per partition;
//! entries left unacknowledged by a replica that died are taken over after
//! `relay_claim_idle_ms`, and consumers of replicas that are gone are removed after
//! `relay_forget_idle_ms`. A publish repeated after a crash is dropped by JetStream's
//! `Nats-Msg-Id` de-duplication.
//!
//! The run messages one script run wrote for one queue go out as one `job_run.<queue>` message
//! of kind `runs` (`JobRuns`, up to `Loops::relay_runs_per_message` jobs); a lone run keeps the
//! single-job format (kind `run`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus;
use crate::config::Loops;
use crate::metrics::Metrics;
use crate::store::{Delivered, OutboxEntry, OutboxMsg, Outcome, Partition, Store};

/// How the relay learns there is something to publish.
pub enum Wake {
    /// Notified after every local transition (no prompt publishing).
    Transitions(Arc<Notify>),
    /// Notified when the prompt publisher missed entries (see [`Prompt`](crate::store::Prompt)).
    Missed(Arc<Notify>),
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    store: Store,
    js: jetstream::Context,
    cfg: Loops,
    consumer: String,
    wake: Wake,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let partitions: Vec<Partition> = store.layout().all().collect();
    // Per partition: read this consumer's unacknowledged entries first (a publish that failed,
    // or entries taken over), before new ones.
    let mut pending_first = vec![true; partitions.len()];
    let mut last_autoclaim = Instant::now();
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if last_autoclaim.elapsed() > Duration::from_millis(cfg.relay_claim_idle_ms / 2) {
            last_autoclaim = Instant::now();
            housekeeping(&store, &partitions, &consumer, &cfg, &mut pending_first).await;
        }
        let reads: Vec<(Partition, bool)> = partitions.iter().copied().zip(pending_first.iter().copied()).collect();
        let batches = match store.outbox_read_many(&consumer, cfg.relay_batch, &reads).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot read the outbox");
                failures += 1;
                backoff(failures, &shutdown).await;
                continue;
            }
        };
        let total: usize = batches.iter().map(Vec::len).sum();
        if total == 0 {
            if pending_first.iter().any(|p| *p) {
                pending_first.fill(false);
                continue;
            }
            let (notify, missed) = match &wake {
                Wake::Transitions(n) => (n, false),
                Wake::Missed(n) => (n, true),
            };
            tokio::select! {
                _ = notify.notified() => if missed { pending_first.fill(true) },
                _ = tokio::time::sleep(Duration::from_millis(cfg.relay_poll_ms)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let full: Vec<bool> = batches.iter().map(|b| b.len() >= cfg.relay_batch).collect();
        metrics
            .relay_batch
            .observe(batches.iter().flatten().map(|e| e.msgs.len()).sum::<usize>() as f64);
        let entries: Vec<(usize, OutboxEntry)> = batches
            .into_iter()
            .enumerate()
            .flat_map(|(i, b)| b.into_iter().map(move |e| (i, e)))
            .collect();
        let (done, failed, outcomes) = publish_batch(&js, entries, &metrics, &cfg).await;
        finish(&store, &partitions, done, outcomes).await;
        if failed > 0 {
            failures += 1;
            pending_first.fill(true);
            tracing::warn!(failed, "relay publishes failed; retrying");
            backoff(failures, &shutdown).await;
        } else {
            failures = 0;
            // A full batch means more may be waiting; a pending re-read found its end.
            for (p, f) in pending_first.iter_mut().zip(full) {
                if !f {
                    *p = false;
                }
            }
        }
    }
}

/// Counts the finished jobs `outcomes` names and deletes the published entries `done`
/// ((partition index, stream id)).
async fn finish(store: &Store, partitions: &[Partition], done: Vec<(usize, String)>, outcomes: Outcomes) {
    let mut by_partition: Vec<(Partition, Vec<String>)> = partitions.iter().map(|p| (*p, Vec::new())).collect();
    for (i, id) in done {
        by_partition[i].1.push(id);
    }
    let (counted, deleted) = tokio::join!(store.record_outcomes(&outcomes), store.outbox_done_many(&by_partition));
    if let Err(e) = counted {
        tracing::warn!(error = %e, "relay cannot count finished jobs per minute");
    }
    if let Err(e) = deleted {
        // The entries stay pending and are published again; dedup drops the repeat.
        tracing::warn!(error = %e, "relay cannot delete published entries");
    }
}

/// Script runs' entries the prompt publisher takes from its queue per batch at most (as many
/// as the relay reads at once: 16 partitions × `relay_batch`'s default).
const PROMPT_BATCH: usize = 256;

/// How long the prompt publisher gathers published entries before deleting them (and counting
/// their outcomes) in one pipeline: at a low rate each transition would otherwise cost its own
/// deletion round trip. An entry waits this much longer in the outbox; nothing else changes.
const PROMPT_DELETE_AFTER: Duration = Duration::from_millis(20);

/// Published entries that trigger their deletion before `PROMPT_DELETE_AFTER`.
const PROMPT_DELETE_MAX: usize = 1_024;

/// Prompt publishing: publishes the entries the committing calls hand over (see
/// [`Prompt`](crate::store::Prompt)) as soon as they arrive, together when several are queued,
/// and deletes them once acknowledged, gathered over `PROMPT_DELETE_AFTER`. A failed publish
/// leaves its entries pending and notifies `missed`: the relay publishes them. Runs until
/// `shutdown`, then publishes what is queued already (for up to two seconds).
pub async fn publish_prompt(
    store: Store,
    js: jetstream::Context,
    cfg: Loops,
    mut queue: tokio::sync::mpsc::Receiver<Delivered>,
    missed: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let partitions: Arc<[Partition]> = store.layout().all().collect();
    // Published and not deleted yet: (partition index, stream id), and their outcomes.
    let mut published: Vec<(usize, String)> = Vec::new();
    let mut outcomes = Outcomes::new();
    let mut delete_at: Option<tokio::time::Instant> = None;
    let mut stop_at: Option<tokio::time::Instant> = None;
    let mut deletions = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            d = queue.recv() => match d {
                Some(d) => Some(d),
                None => break,
            },
            _ = tokio::time::sleep_until(delete_at.unwrap_or_else(tokio::time::Instant::now)), if delete_at.is_some() => None,
            _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => break,
            _ = shutdown.cancelled(), if stop_at.is_none() => {
                queue.close();
                stop_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                None
            }
        };
        if let Some(first) = next {
            let mut got = vec![first];
            while got.len() < PROMPT_BATCH {
                match queue.try_recv() {
                    Ok(d) => got.push(d),
                    Err(_) => break,
                }
            }
            let entries: Vec<(usize, OutboxEntry)> = got
                .into_iter()
                .filter_map(|(p, raw)| match crate::store::parse_entries(raw) {
                    Ok(es) => Some((p, es)),
                    Err(e) => {
                        // The entries stay pending: the relay reads them itself.
                        tracing::warn!(error = %e, "delivered outbox entries unreadable; the relay re-reads them");
                        missed.notify_one();
                        None
                    }
                })
                .flat_map(|(p, es)| es.into_iter().map(move |e| (usize::from(p.0), e)))
                .collect();
            metrics
                .relay_batch
                .observe(entries.iter().map(|(_, e)| e.msgs.len()).sum::<usize>() as f64);
            let (done, failed, counted) = publish_batch(&js, entries, &metrics, &cfg).await;
            if failed > 0 {
                tracing::warn!(failed, "prompt publishes failed; the relay retries them");
                missed.notify_one();
            }
            published.extend(done);
            for (key, n) in counted {
                *outcomes.entry(key).or_default() += n;
            }
            delete_at.get_or_insert_with(|| tokio::time::Instant::now() + PROMPT_DELETE_AFTER);
        }
        let due = delete_at.is_some_and(|t| t <= tokio::time::Instant::now());
        if !published.is_empty() && (due || published.len() >= PROMPT_DELETE_MAX) {
            let (store, partitions) = (store.clone(), partitions.clone());
            let (done, counted) = (std::mem::take(&mut published), std::mem::take(&mut outcomes));
            deletions.spawn(async move { finish(&store, &partitions, done, counted).await });
            delete_at = None;
            // Deletions run beside the publishing; only a few at once.
            while deletions.len() > 4 {
                deletions.join_next().await;
            }
        } else if published.is_empty() {
            delete_at = None;
        }
    }
    finish(&store, &partitions, published, outcomes).await;
    while deletions.join_next().await.is_some() {}
}

/// Takes over entries of relays idle for `relay_claim_idle_ms`, and removes consumers of
/// relays that are gone, in every partition.
async fn housekeeping(
    store: &Store,
    partitions: &[Partition],
    consumer: &str,
    cfg: &Loops,
    pending_first: &mut [bool],
) {
    for (i, p) in partitions.iter().enumerate() {
        match store
            .outbox_autoclaim(*p, consumer, cfg.relay_claim_idle_ms, cfg.relay_batch)
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(
                    entries = n,
                    partition = p.0,
                    "relay took over outbox entries of an idle relay"
                );
                pending_first[i] = true;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "relay autoclaim failed"),
        }
        match store.outbox_forget_idle(*p, consumer, cfg.relay_forget_idle_ms).await {
            Ok(n) if n > 0 => tracing::info!(consumers = n, partition = p.0, "relay removed consumers of gone relays"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "relay cannot list the outbox consumers"),
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

/// Finished jobs per (minute start ms, queue, outcome), for the per-minute counts.
type Outcomes = BTreeMap<(u64, String, Outcome), u64>;

/// Publishes the messages of every entry (tagged with its partition's index; an entry's run
/// messages of one queue together as one `runs` message, up to `relay_runs_per_message` jobs
/// each), then waits for
/// the acks: of every message when `ack_each`, else of the last message of each stream in the
/// batch, which vouches for the ones published before it on this connection (see
/// `Loops::relay_ack_each`). Returns the (partition index, stream id) of the entries whose
/// every message was acknowledged, and of those with none to publish (deleted already, or
/// undecodable, which would never publish), the count of messages that failed, and the
/// outcomes published.
async fn publish_batch(
    js: &jetstream::Context,
    entries: Vec<(usize, OutboxEntry)>,
    metrics: &Metrics,
    cfg: &Loops,
) -> (Vec<(usize, String)>, usize, Outcomes) {
    let (ack_each, runs_per_message) = (cfg.relay_ack_each, cfg.relay_runs_per_message);
    let mut done = Vec::with_capacity(entries.len());
    // Per entry with messages: its id, and how many of its messages are not acknowledged yet.
    let mut ids = Vec::with_capacity(entries.len());
    let mut unconfirmed = Vec::with_capacity(entries.len());
    let mut ready = Vec::with_capacity(entries.len());
    for (part, e) in entries {
        let entry = ids.len();
        let mut n = 0;
        // Run messages of this entry by queue, each group one message (up to runs_per_message).
        let mut runs: Vec<Vec<&OutboxMsg>> = Vec::new();
        for m in &e.msgs {
            if m.kind == "run" {
                match runs
                    .iter_mut()
                    .find(|g| g[0].queue == m.queue && g.len() < runs_per_message)
                {
                    Some(g) => g.push(m),
                    None => runs.push(vec![m]),
                }
                continue;
            }
            let Some(msg) = bus::outgoing(m) else {
                tracing::error!(entry = %e.stream_id, message = ?m, "outbox message of unknown kind dropped");
                continue;
            };
            let outcome = Outcome::of(&m.kind, &m.state).map(|o| {
                let ms: u64 = m.ts.parse().unwrap_or(0);
                (ms - ms % 60_000, m.queue.clone(), o)
            });
            ready.push((false, (entry, outcome), msg));
            n += 1;
        }
        for group in runs {
            let subject = format!("job_run.{}", group[0].queue);
            let msg = if let [m] = group[..] {
                // Alone: the single-run format, its trace context in a header.
                let Some(mut msg) = bus::outgoing(m) else { continue };
                if let Some(tp) = publish_span(m, &subject) {
                    msg.headers.insert("traceparent", tp.as_str());
                }
                msg
            } else {
                let traced: Vec<(&OutboxMsg, String)> = group
                    .into_iter()
                    .map(|m| (m, publish_span(m, &subject).unwrap_or_else(|| m.tp.clone())))
                    .collect();
                bus::outgoing_runs(&traced)
            };
            ready.push((true, (entry, None), msg));
            n += 1;
        }
        if n == 0 {
            // Deleted already (acknowledged by another relay after a takeover), or nothing in
            // it can be published.
            done.push((part, e.stream_id));
        } else {
            ids.push((part, e.stream_id));
            unconfirmed.push(n);
        }
    }
    // The last message of each stream asks for the ack that vouches for the others.
    let last_of = |run: bool| ready.iter().rposition(|r| r.0 == run);
    let (last_run, last_event) = (last_of(true), last_of(false));
    let client = js.client();
    let mut acks = Vec::new();
    // Messages published without an ack of their own, per stream (run, events), waiting for
    // the ack of that stream's last message.
    let mut vouched: [Vec<Vouched>; 2] = [Vec::new(), Vec::new()];
    let mut failed = 0;
    let mut outcomes = Outcomes::new();
    for (i, (run, item, msg)) in ready.into_iter().enumerate() {
        let stream = usize::from(!run);
        if ack_each || Some(i) == last_run || Some(i) == last_event {
            match js.publish_with_headers(msg.subject, msg.headers, msg.payload).await {
                Ok(ack) => {
                    let mut group = std::mem::take(&mut vouched[stream]);
                    group.push(item);
                    acks.push((group, ack));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "publish failed");
                    metrics.nats_errors.with_label_values(&["publish"]).inc();
                    failed += 1 + vouched[stream].len();
                    vouched[stream].clear();
                }
            }
        } else {
            match client.publish_with_headers(msg.subject, msg.headers, msg.payload).await {
                Ok(()) => vouched[stream].push(item),
                Err(err) => {
                    tracing::warn!(error = %err, "publish failed");
                    metrics.nats_errors.with_label_values(&["publish"]).inc();
                    failed += 1;
                }
            }
        }
        // The client lets only so many acks be outstanding (a publish past that waits for one
        // to be read): read them before that.
        if acks.len() >= MAX_ACKS_IN_FLIGHT {
            failed += await_acks(std::mem::take(&mut acks), &mut unconfirmed, &mut outcomes, metrics).await;
        }
    }
    failed += await_acks(acks, &mut unconfirmed, &mut outcomes, metrics).await;
    done.extend(
        ids.into_iter()
            .zip(unconfirmed)
            .filter(|(_, left)| *left == 0)
            .map(|(id, _)| id),
    );
    (done, failed, outcomes)
}

/// When spans are exported: a producer span for one job's run message, child of the job's
/// trace context (the worker's span hangs off it), and its trace context to carry.
fn publish_span(m: &OutboxMsg, subject: &str) -> Option<String> {
    if !dispatch_telemetry::exporting() {
        return None;
    }
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        job_id = m.id.as_str(),
        queue = m.queue.as_str(),
        job_type = m.job_type.as_str(),
        attempt = m.attempt.as_str(),
    );
    dispatch_telemetry::set_parent(&span, &m.tp);
    dispatch_telemetry::traceparent(&span)
}

/// A message published without an ack of its own: its entry's index, and the outcome it
/// reports.
type Vouched = (usize, Option<(u64, String, Outcome)>);

/// Publishes whose acks are read together; below async-nats's default limit of outstanding
/// acks (5,000).
const MAX_ACKS_IN_FLIGHT: usize = 2_048;

/// A publish waiting for its ack: the messages it vouches for (itself last), the ack.
type Pending = (Vec<Vouched>, jetstream::context::PublishAckFuture);

/// Waits for `acks`; each message an ack vouches for counts off its entry's `unconfirmed`,
/// and its outcome goes to `outcomes`. Returns how many messages failed.
async fn await_acks(
    acks: Vec<Pending>,
    unconfirmed: &mut [usize],
    outcomes: &mut Outcomes,
    metrics: &Metrics,
) -> usize {
    let results =
        futures::future::join_all(acks.into_iter().map(|(group, ack)| async move { (group, ack.await) })).await;
    let mut failed = 0;
    for (group, r) in results {
        match r {
            Ok(_) => {
                for (entry, outcome) in group {
                    unconfirmed[entry] -= 1;
                    if let Some(key) = outcome {
                        *outcomes.entry(key).or_default() += 1;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, messages = group.len(), "publish not acknowledged");
                metrics.nats_errors.with_label_values(&["ack"]).inc();
                failed += group.len();
            }
        }
    }
    failed
}
