//! `loadcheck`: submits N jobs to a stack it starts itself (redis-server, nats-server, dispatch,
//! worker processes) while injecting faults — a worker killed with SIGKILL every
//! `--kill-every-ms` (and replaced), nats-server killed and restarted every
//! `--nats-restart-every-ms` — then checks the invariants against Redis and the JetStream
//! event stream and prints them: lost (accepted but no record), completed twice (two distinct
//! completion events), stuck (not terminal at the deadline). Exits 1 when any is non-zero.
//!
//! `cargo run --release -p dispatch-testkit --bin loadcheck -- --jobs 100000 --kill-every-ms 5000`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use dispatch_client::pb;
use dispatch_testkit::Stack;
use futures::StreamExt;
use prost::Message;
use rand::Rng;

#[derive(Parser, Debug)]
#[command(about = "Submit jobs under injected faults and verify none is lost, doubled or stuck")]
struct Args {
    /// Jobs to submit.
    #[arg(long, default_value_t = 2_000)]
    jobs: usize,
    /// Jobs per CreateJobs call.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Concurrent submitting callers (many, with big batches, overload dispatch on purpose).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Concurrency of each worker.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Kill a random worker (SIGKILL) and start a new one this often; 0 = never.
    #[arg(long, default_value_t = 2_000)]
    kill_every_ms: u64,
    /// Kill and restart nats-server this often; 0 = never.
    #[arg(long, default_value_t = 0)]
    nats_restart_every_ms: u64,
    /// Each job sleeps a random 0..=N ms, so kills catch jobs mid-run.
    #[arg(long, default_value_t = 50)]
    max_job_ms: u64,
    /// Give up waiting for terminal states after this long.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut stack = Stack::start_with(|c| {
        c.loops.sweep_after_ms = 3_000;
        c.jobs.max_attempts = 10;
    })
    .await;
    let lease_s = 3;
    let mut workers: Vec<_> = (0..args.workers)
        .map(|i| stack.spawn_worker_process(&format!("load-{i}"), "default", args.concurrency, lease_s))
        .collect();
    let started = Instant::now();

    // Submit in the background while faults are injected, from `clients` concurrent callers.
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut client = stack.jobs().await;
        let share = args.jobs / args.clients.max(1) + usize::from(c < args.jobs % args.clients.max(1));
        let (batch, max_ms) = (args.batch, args.max_job_ms);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(share);
            let mut rejected = 0usize;
            while ids.len() + rejected < share {
                let n = batch.min(share - ids.len() - rejected);
                let reqs = (0..n)
                    .map(|_| {
                        let ms = rand::rng().random_range(0..=max_ms);
                        serde_json::from_value(
                            serde_json::json!({"queue":"default","type":"sleep","payload":{"durationMs": ms}}),
                        )
                        .unwrap()
                    })
                    .collect();
                match client
                    .create_jobs(pb::CreateJobsRequest {
                        jobs: reqs,
                        ids_only: true,
                    })
                    .await
                {
                    Ok(r) => ids.extend(r.into_inner().results.into_iter().filter_map(|r| r.job.map(|j| j.id))),
                    // Not accepted (RESOURCE_EXHAUSTED under overload), so not promised.
                    Err(_) => rejected += n,
                }
            }
            (ids, rejected)
        }));
    }
    let submitter = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut rejected = 0;
        for t in tasks {
            let (ids, r) = t.await.unwrap();
            all.extend(ids);
            rejected += r;
        }
        (all, rejected)
    });

    let store = stack.store().await;
    let deadline = started + Duration::from_secs(args.timeout_s);
    let mut next_kill = Instant::now() + Duration::from_millis(args.kill_every_ms.max(1));
    let mut next_nats = Instant::now() + Duration::from_millis(args.nats_restart_every_ms.max(1));
    let (mut kills, mut nats_restarts) = (0, 0);
    let mut submitter = Some(submitter);
    let mut accepted: Vec<String> = Vec::new();
    let mut rejected = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if args.kill_every_ms > 0 && Instant::now() >= next_kill {
            let i = rand::rng().random_range(0..workers.len());
            workers[i] = stack.spawn_worker_process(
                &format!("load-{}", args.workers + kills),
                "default",
                args.concurrency,
                lease_s,
            );
            kills += 1;
            next_kill += Duration::from_millis(args.kill_every_ms);
        }
        if args.nats_restart_every_ms > 0 && Instant::now() >= next_nats {
            stack.restart_nats();
            nats_restarts += 1;
            next_nats += Duration::from_millis(args.nats_restart_every_ms);
        }
        if submitter.as_ref().is_some_and(|h| h.is_finished()) {
            let (ids, rej) = submitter.take().unwrap().await?;
            accepted = ids;
            rejected = rej;
        }
        if submitter.is_none() {
            let open: u64 = store
                .queue_counts()
                .await?
                .iter()
                .flat_map(|q| ["SCHEDULED", "QUEUED", "RUNNING"].map(|s| q.counts.get(s).copied().unwrap_or(0)))
                .sum();
            if open == 0 || Instant::now() >= deadline {
                break;
            }
        }
    }
    let elapsed = started.elapsed();

    // One pass over every accepted job: lost (no record), outcome, stuck (not terminal).
    let mut lost = 0;
    let mut succeeded = 0;
    let mut failed = 0;
    let mut stuck = 0;
    for chunk in accepted.chunks(500) {
        let recs = store.get_many(chunk).await?;
        lost += chunk.len() - recs.len();
        stuck += recs.iter().filter(|r| !r.state.is_terminal()).count();
        succeeded += recs
            .iter()
            .filter(|r| r.state == dispatch::store::State::Succeeded)
            .count();
        failed += recs
            .iter()
            .filter(|r| r.state == dispatch::store::State::Failed)
            .count();
    }
    // Distinct completion events per job, from the event stream itself.
    let completions = completions_per_job(&stack).await?;
    let twice = completions.values().filter(|&&n| n > 1).count();
    let missing_events = accepted.iter().filter(|id| !completions.contains_key(*id)).count();

    println!(
        "loadcheck: {} jobs submitted, {} accepted, {} rejected (not promised)",
        args.jobs,
        accepted.len(),
        rejected
    );
    println!(
        "loadcheck: {succeeded} succeeded, {failed} failed (dead-lettered), in {:.1}s",
        elapsed.as_secs_f64()
    );
    println!("loadcheck: faults: {kills} workers killed with SIGKILL, {nats_restarts} nats-server restarts");
    println!(
        "loadcheck: completion events missing for {missing_events} jobs (events are notifications; Redis is the record)"
    );
    println!(
        "loadcheck: peak RSS of this process (dispatch runs in it): {} MB",
        peak_rss_mb()
    );
    println!("lost {lost}, completed twice {twice}, stuck {stuck}");
    drop(workers);
    stack.stop().await;
    if lost + twice + stuck > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn completions_per_job(stack: &Stack) -> anyhow::Result<HashMap<String, usize>> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let js = async_nats::jetstream::new(stack.nats_client().await);
    let stream = js.get_stream(&stack.config.streams.events_stream).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: "job_complete.>".into(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut per_job: HashMap<String, usize> = HashMap::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut n = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!(e))?;
            *per_job
                .entry(pb::JobEvent::decode(m.payload.clone())?.job_id)
                .or_default() += 1;
            n += 1;
        }
        if n == 0 {
            break;
        }
    }
    Ok(per_job)
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}
