//! `bench`: throughput, latency and memory of a Dispatch stack (`make bench`).
//!
//! Starts a stack the way `make run` does (redis-server, nats-server with JetStream file
//! storage, the `dispatch` binary, one `worker` process with the built-in `noop` handler), or
//! uses a running one (`--grpc-url`, `--nats-url`, `--redis-url`), then measures:
//! - **throughput**: `--jobs` no-op jobs with a ~100-byte JSON payload, submitted in
//!   `CreateJobs` batches, then the same number singly with `CreateJob`; enqueue rate (first
//!   submit → last accepted) and end-to-end rate (first submit → last `SUCCEEDED` recorded,
//!   the timestamp on its `job_complete` event);
//! - **latency** at `--rate` jobs/s offered for `--latency-s` seconds, single `CreateJob`
//!   calls: enqueue → start (the call sent → the time on the `job_processing` event) and
//!   enqueue → `SUCCEEDED`, to the microsecond (events carry Redis's time in µs; the bench
//!   and Redis share the host's clock);
//! - **memory**: Redis bytes per queued job beyond its payload, and dispatch/worker RSS.
//!
//! Prints a table, then one JSON line. Exits non-zero when any job did not succeed, so a small
//! run is a smoke test. Figures come from here, never from timed tests.

mod compare;
mod stack;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use clap::Parser;
use dispatch_client::pb::{self, job_service_client::JobServiceClient};
use fred::prelude::*;
use futures::StreamExt;
use prost::Message;

use stack::{Options, Stack, rss_mb};
use stats::{rate, summary};

/// mimalloc instead of glibc's allocator: the bench's own CPU per job falls from ~26 to ~15 µs
/// (its callers build and decode large batches), leaving more of the machine to the system it
/// measures. Tried in dispatch and the worker too: no gain there, and a higher peak RSS.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Throughput, latency and memory of a Dispatch stack")]
struct Args {
    /// No-op jobs of the batched throughput run (the default lasts well over 10 s here, so the
    /// figure is a steady state, not a burst).
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// No-op jobs of the single-submission run (0 skips it).
    #[arg(long, default_value_t = 40_000)]
    single_jobs: usize,
    /// Jobs per CreateJobs call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent callers submitting batches.
    #[arg(long, default_value_t = 4)]
    callers: usize,
    /// Concurrent callers submitting single CreateJob calls.
    #[arg(long, default_value_t = 64)]
    single_callers: usize,
    /// Offered rate of the latency run, jobs/s.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 10)]
    latency_s: u64,
    /// Queued jobs for the memory figure (0 skips it), measured first, on a fresh Redis.
    #[arg(long, default_value_t = 20_000)]
    mem_jobs: usize,
    /// Concurrency of each worker process started here.
    #[arg(long, default_value_t = 1_000)]
    worker_concurrency: usize,
    /// Worker processes started here (CPU and RSS figures are the first one's).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Redis with its append-only file on (default: no persistence, as the peers ran).
    #[arg(long)]
    redis_aof: bool,
    /// Keys and TLS on everywhere: Redis and NATS with TLS and passwords, dispatch with API
    /// keys and TLS on its listeners, the bench and the worker calling with keys over TLS
    /// (the memory phase is skipped: security does not change a record's size).
    #[arg(long, conflicts_with = "grpc_url")]
    secure: bool,
    /// Queue of the throughput and latency runs; a running stack's workers must serve it.
    #[arg(long, default_value = "bench")]
    queue: String,
    /// dispatch of a running stack (then also give --nats-url; --redis-url for memory).
    #[arg(long, requires = "nats_url")]
    grpc_url: Option<String>,
    /// NATS of a running stack.
    #[arg(long)]
    nats_url: Option<String>,
    /// Redis of a running stack (memory figures).
    #[arg(long)]
    redis_url: Option<String>,
    /// Jobs of the warm-up before each run (batched, not measured).
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Runs of the whole suite; with more than one, a table of each figure's median and
    /// spread, then a last JSON line of the medians. Each run starts its own stack (unless one
    /// runs elsewhere: then all run on it).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// A directory holding another build's `bench`, `dispatch` and `worker` (say of the commit
    /// before a change; `tools/bench.sh --baseline-rev REV` builds one): its runs alternate
    /// with this build's, each on a fresh stack, and both sets are summarised side by side.
    /// The other flags go to both benches.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// Give up waiting for a run's jobs after this long.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// The ~100-byte JSON payload of every job.
fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({
        "objectId": format!("obj-{i:08}"),
        "tenant": "acme",
        "action": "resize",
        "size": {"w": 640, "h": 480},
        "tags": ["bench", "noop", "x"]
    })
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

fn ts_ms(t: Option<&dispatch_client::pbjson_types::Timestamp>) -> f64 {
    t.map(|t| t.seconds as f64 * 1e3 + f64::from(t.nanos) / 1e6)
        .unwrap_or(0.0)
}

fn job_request(queue: &str, i: usize) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        queue: queue.to_string(),
        r#type: "noop".into(),
        payload: Some(dispatch_client::json::to_proto(&payload(i))),
        ..Default::default()
    }
}

/// What the events stream said about each job of a run: when it started and when it ended.
#[derive(Default)]
struct Seen {
    started: HashMap<String, f64>,
    succeeded: HashMap<String, f64>,
    failed_attempts: usize,
}

/// Events of one phase, gathered by a task that stops (and drops its consumer) with this.
struct Follow {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the events of `queue` (an ordered JetStream consumer: nothing is dropped however
/// fast they come) from now on, or from the stream's sequence `from` (stored events first);
/// `started` adds the `job_processing` events.
async fn follow(js: &jetstream::Context, queue: &str, started: bool, from: Option<u64>) -> anyhow::Result<Follow> {
    let stream = js.get_stream("DISPATCH_EVENTS").await?;
    let mut filter_subjects = vec![format!("job_complete.{queue}"), format!("job_failed.{queue}")];
    if started {
        filter_subjects.push(format!("job_processing.{queue}"));
    }
    let deliver_policy = match from {
        Some(start_sequence) => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
        None => jetstream::consumer::DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(msg)) = messages.next().await {
            let Ok(ev) = pb::JobEvent::decode(msg.payload.clone()) else {
                continue;
            };
            let at = ts_ms(ev.timestamp.as_ref());
            let mut s = out.lock().unwrap();
            match ev.state {
                x if x == pb::JobState::Running as i32 => {
                    s.started.insert(ev.job_id, at);
                }
                x if x == pb::JobState::Succeeded as i32 => {
                    s.succeeded.insert(ev.job_id, at);
                }
                _ => s.failed_attempts += 1,
            }
        }
    });
    Ok(Follow { seen, task })
}

/// The next sequence of the events stream: where the events of what is submitted next begin.
async fn events_next_seq(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream("DISPATCH_EVENTS").await?;
    Ok(stream.info().await?.state.last_sequence + 1)
}

/// Waits until every id has succeeded; the latest completion time.
async fn wait_done(seen: &Mutex<Seen>, ids: &[String], timeout: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let s = seen.lock().unwrap();
            if s.succeeded.len() >= ids.len() {
                let times: Option<Vec<f64>> = ids.iter().map(|id| s.succeeded.get(id).copied()).collect();
                if let Some(t) = times {
                    return Ok(t.into_iter().fold(0.0, f64::max));
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {} jobs succeeded within {timeout:?} ({} failed attempts)",
                s.succeeded.len(),
                ids.len(),
                s.failed_attempts
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Submits `n` jobs from `callers` concurrent callers, `batch` per `CreateJobs` call, or one
/// `CreateJob` call each when `batch` is 0; returns their ids.
async fn submit(
    client: &JobServiceClient<dispatch_client::Transport>,
    queue: &str,
    n: usize,
    batch: usize,
    callers: usize,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers.max(1) {
        let (mut c, next, queue) = (client.clone(), next.clone(), queue.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let start = next.fetch_add(batch.max(1), std::sync::atomic::Ordering::Relaxed);
                if start >= n {
                    return Ok::<_, anyhow::Error>(ids);
                }
                if batch == 0 {
                    let r = c.create_job(job_request(&queue, start)).await?.into_inner();
                    ids.extend(r.job.map(|j| j.id));
                    continue;
                }
                let jobs = (start..(start + batch).min(n))
                    .map(|i| job_request(&queue, i))
                    .collect();
                let r = c
                    .create_jobs(pb::CreateJobsRequest { jobs, ids_only: true })
                    .await?
                    .into_inner();
                ids.extend(r.results.into_iter().filter_map(|r| r.job).map(|j| j.id));
            }
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// One throughput run's figures.
struct Throughput {
    /// First submit → last success, seconds.
    seconds: f64,
    enqueue_jobs_s: f64,
    e2e_jobs_s: f64,
    failed_attempts: usize,
    /// CPU time per job of each process started here, in µs.
    cpu_us_per_job: Vec<(&'static str, f64)>,
}

/// The sum of the system's processes' (all but the bench) CPU µs per job.
fn system_cpu_us(per_job: &[(&'static str, f64)]) -> f64 {
    per_job.iter().filter(|(n, _)| *n != "bench").map(|(_, us)| us).sum()
}

/// CPU seconds used so far by each process.
fn cpu_now(pids: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    pids.iter()
        .map(|(name, pid)| (*name, stack::cpu_s(*pid).unwrap_or(0.0)))
        .collect()
}

/// CPU µs per job of each process between `before` and now, over `jobs` jobs.
fn cpu_per_job(
    pids: &[(&'static str, u32)],
    before: Vec<(&'static str, f64)>,
    jobs: usize,
) -> Vec<(&'static str, f64)> {
    cpu_now(pids)
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, before))| (name, (after - before) * 1e6 / jobs.max(1) as f64))
        .collect()
}

async fn throughput(
    args: &Args,
    client: &JobServiceClient<dispatch_client::Transport>,
    js: &jetstream::Context,
    single: bool,
    pids: &[(&'static str, u32)],
) -> anyhow::Result<Throughput> {
    // Only the ends: following every start too would load NATS and this process for nothing.
    let follow = follow(js, &args.queue, false, None).await?;
    let seen = &follow.seen;
    let cpu_before = cpu_now(pids);
    let t0 = Instant::now();
    let first_ms = now_ms();
    let ids = if single {
        submit(client, &args.queue, args.jobs, 0, args.single_callers).await?
    } else {
        submit(client, &args.queue, args.jobs, args.batch, args.callers).await?
    };
    let enqueue_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(ids.len() == args.jobs, "{} of {} jobs accepted", ids.len(), args.jobs);
    let last_ms = wait_done(seen, &ids, Duration::from_secs(args.timeout_s)).await?;
    let failed_attempts = seen.lock().unwrap().failed_attempts;
    let cpu_us_per_job = cpu_per_job(pids, cpu_before, ids.len());
    let seconds = (last_ms - first_ms).max(1.0) / 1e3;
    if seconds < 10.0 && args.jobs > args.warmup {
        println!(
            "  note: this phase lasted {seconds:.1} s, under the 10 s of a steady state: raise --jobs / --single-jobs"
        );
    }
    Ok(Throughput {
        seconds,
        enqueue_jobs_s: rate(ids.len(), enqueue_s),
        e2e_jobs_s: rate(ids.len(), (last_ms - first_ms).max(1.0) / 1e3),
        failed_attempts,
        cpu_us_per_job,
    })
}

/// Latency figures in ms: enqueue → start and enqueue → succeeded, each [p50, p90, p99, max].
struct Latency {
    start: [f64; 4],
    done: [f64; 4],
    jobs: usize,
    /// dispatch RSS (MiB) when the steady load began and when it ended.
    rss_steady: Option<(f64, f64)>,
    /// CPU time per job of each process started here over the steady load, in µs: at a low
    /// rate little is batched, so a job costs far more than in the throughput phases.
    cpu_us_per_job: Vec<(&'static str, f64)>,
}

async fn latency(
    args: &Args,
    client: &JobServiceClient<dispatch_client::Transport>,
    js: &jetstream::Context,
    dispatch_pid: Option<u32>,
    pids: &[(&'static str, u32)],
) -> anyhow::Result<Latency> {
    // The events are read once the submissions are done, from where this phase's begin: their
    // times are Redis's, so reading them later changes no figure, and no consumer of the
    // bench's own loads NATS and the machine while the latency is measured.
    let from = events_next_seq(js).await?;
    let cpu_before = cpu_now(pids);
    let n = (args.rate * args.latency_s) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let rss_before = dispatch_pid.and_then(rss_mb).map(|r| r.0);
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let (mut c, queue) = (client.clone(), args.queue.clone());
        // The job's enqueue time: when it is sent, on this host's clock (Redis's, which stamps
        // the events, is the same clock), to the microsecond.
        let sent = now_ms();
        calls.push(tokio::spawn(async move {
            (sent, c.create_job(job_request(&queue, i)).await)
        }));
    }
    let mut created = Vec::with_capacity(n);
    for c in calls {
        let (sent, reply) = c.await?;
        let job = reply?
            .into_inner()
            .job
            .ok_or_else(|| anyhow::anyhow!("no job in reply"))?;
        created.push((job.id.clone(), sent));
    }
    let rss_after = dispatch_pid.and_then(rss_mb).map(|r| r.0);
    let ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    let follow = follow(js, &args.queue, true, Some(from)).await?;
    let seen = &follow.seen;
    wait_done(seen, &ids, Duration::from_secs(args.timeout_s)).await?;
    let cpu_us_per_job = cpu_per_job(pids, cpu_before, n);
    let s = seen.lock().unwrap();
    let mut start = Vec::with_capacity(n);
    let mut done = Vec::with_capacity(n);
    for (id, created_ms) in &created {
        if let Some(t) = s.started.get(id) {
            start.push(t - created_ms);
        }
        done.push(s.succeeded[id] - created_ms);
    }
    Ok(Latency {
        start: summary(start),
        done: summary(done),
        jobs: n,
        rss_steady: rss_before.zip(rss_after),
        cpu_us_per_job,
    })
}

async fn used_memory(redis: &Client) -> anyhow::Result<f64> {
    let info: String = redis.info(Some(fred::types::InfoKind::Memory)).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

/// Redis bytes per queued job beyond its payload: `n` jobs on a queue no worker serves.
async fn memory(
    args: &Args,
    client: &JobServiceClient<dispatch_client::Transport>,
    redis_url: &str,
) -> anyhow::Result<f64> {
    let redis = Builder::from_config(fred::types::config::Config::from_url(redis_url)?).build()?;
    redis.init().await?;
    let queue = format!("bench-idle-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let outbox_empty = |r: Client| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        // The outboxes of every partition (a bench's own Redis: KEYS is fine here).
        let outboxes: Vec<String> = r.custom(fred::cmd!("KEYS"), vec!["dispatch:*:outbox"]).await?;
        loop {
            let mut left = 0u64;
            for k in &outboxes {
                left += r.xlen::<u64, _>(k.as_str()).await?;
            }
            if left == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "outbox not drained in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    };
    outbox_empty(redis.clone()).await?;
    let before = used_memory(&redis).await?;
    let ids = submit(client, &queue, args.mem_jobs, args.batch.max(1), 1).await?;
    outbox_empty(redis.clone()).await?;
    let after = used_memory(&redis).await?;
    let payload_bytes = serde_json::to_string(&payload(0))?.len() as f64;
    {
        // Take the idle jobs away again: left QUEUED, the sweeper would re-publish their run
        // messages after a minute, in the middle of the runs that follow.
        futures::stream::iter(ids)
            .for_each_concurrent(64, |id| {
                let mut c = client.clone();
                async move {
                    let _ = c
                        .cancel_job(pb::CancelJobRequest {
                            id,
                            reason: "bench".into(),
                        })
                        .await;
                }
            })
            .await;
    }
    let _ = redis.quit().await;
    Ok((after - before) / args.mem_jobs as f64 - payload_bytes)
}

fn row(name: &str, value: String) {
    println!("  {name:<44} {value}");
}

fn lat_row(name: &str, v: [f64; 4]) {
    row(
        name,
        format!("p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}", v[0], v[1], v[2], v[3]),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.baseline {
        return compare::alternate(&args, dir);
    }
    let options = Options {
        redis_aof: args.redis_aof,
        worker_concurrency: args.worker_concurrency,
        workers: args.workers,
        queues: vec![args.queue.clone()],
        secure: args.secure,
    };
    let mut results = Vec::new();
    for i in 0..args.runs.max(1) {
        if args.runs > 1 {
            println!("== run {} of {}", i + 1, args.runs);
        }
        let mut stack = match &args.grpc_url {
            Some(g) => Stack::existing(
                g.clone(),
                args.nats_url.clone().unwrap_or_default(),
                args.redis_url.clone(),
            ),
            None => Stack::start(&options).await?,
        };
        let outcome = run(&args, &stack).await;
        stack.stop();
        results.push(outcome?);
    }
    if results.len() > 1 {
        stats::print_spread(&format!("{} runs", results.len()), &[("this build", &results)]);
        // The last line stays one JSON object: here the median of each figure.
        println!("{}", stats::median_json(&results));
    }
    Ok(())
}

async fn run(args: &Args, stack: &Stack) -> anyhow::Result<serde_json::Value> {
    let client = stack.client().await?.jobs().max_decoding_message_size(64 << 20);
    let js = jetstream::new(stack.nats().await?);
    println!(
        "dispatch bench: {} jobs in batches of {} from {} callers, {} singly from {} callers, latency at {}/s for {} s",
        args.jobs, args.batch, args.callers, args.single_jobs, args.single_callers, args.rate, args.latency_s
    );

    // Memory first, on the freshest Redis: later, one of Redis's table doublings (which it
    // does at powers of two keys) can fall inside the measured window and be charged to it.
    let bytes_per_job = match (&stack.redis_url, args.mem_jobs) {
        (Some(url), n) if n > 0 => Some(memory(args, &client, url).await?),
        _ => None,
    };

    // Warm-up: connections, scripts, consumers, memory.
    let warm = Args {
        jobs: args.warmup.max(1),
        ..args.clone()
    };
    throughput(&warm, &client, &js, false, &stack.pids).await?;

    let batched = throughput(args, &client, &js, false, &stack.pids).await?;
    let single = if args.single_jobs > 0 {
        let a = Args {
            jobs: args.single_jobs,
            ..args.clone()
        };
        Some(throughput(&a, &client, &js, true, &stack.pids).await?)
    } else {
        None
    };
    let lat = if args.latency_s > 0 && args.rate > 0 {
        Some(latency(args, &client, &js, stack.dispatch_pid, &stack.pids).await?)
    } else {
        None
    };
    let dispatch_rss = stack.dispatch_pid.and_then(rss_mb);
    let worker_rss = stack.worker_pid.and_then(rss_mb);

    println!("throughput (no-op jobs)");
    row(
        "batched: enqueue rate (jobs/s)",
        format!("{:.0}", batched.enqueue_jobs_s),
    );
    row("batched: end to end (jobs/s)", format!("{:.0}", batched.e2e_jobs_s));
    let cpu = |per_job: &[(&'static str, f64)]| {
        let system: Vec<String> = per_job
            .iter()
            .filter(|(n, _)| *n != "bench")
            .map(|(n, us)| format!("{n} {us:.0}"))
            .collect();
        let own = per_job.iter().find(|(n, _)| *n == "bench").map_or(0.0, |c| c.1);
        format!(
            "{} = {:.0}  (bench's own share apart: {own:.0})",
            system.join(" + "),
            system_cpu_us(per_job)
        )
    };
    if !batched.cpu_us_per_job.is_empty() {
        row("batched: CPU per job (µs)", cpu(&batched.cpu_us_per_job));
    }
    if let Some(single) = &single {
        row("single: enqueue rate (jobs/s)", format!("{:.0}", single.enqueue_jobs_s));
        row("single: end to end (jobs/s)", format!("{:.0}", single.e2e_jobs_s));
        if !single.cpu_us_per_job.is_empty() {
            row("single: CPU per job (µs)", cpu(&single.cpu_us_per_job));
        }
    }
    if let Some(l) = &lat {
        println!("latency ({} jobs at {}/s, ms)", l.jobs, args.rate);
        lat_row("enqueue -> start", l.start);
        lat_row("enqueue -> succeeded", l.done);
        if !l.cpu_us_per_job.is_empty() {
            row("CPU per job at this rate (µs)", cpu(&l.cpu_us_per_job));
        }
        if let Some((a, b)) = l.rss_steady {
            row("dispatch RSS over the steady load (MiB)", format!("{a:.1} -> {b:.1}"));
        }
    }
    println!("memory");
    if let Some(b) = bytes_per_job {
        row("Redis bytes per queued job beyond payload", format!("{b:.0}"));
    }
    if let Some((now, peak)) = dispatch_rss {
        row("dispatch RSS now / peak (MiB)", format!("{now:.1} / {peak:.1}"));
    }
    if let Some((now, peak)) = worker_rss {
        row("worker RSS now / peak (MiB)", format!("{now:.1} / {peak:.1}"));
    }
    let failed = batched.failed_attempts + single.as_ref().map_or(0, |s| s.failed_attempts);
    row("failed attempts (expected 0)", failed.to_string());
    let mut json = serde_json::json!({
        "e2e_jobs_s": batched.e2e_jobs_s.round(),
        "e2e_seconds": (batched.seconds * 10.0).round() / 10.0,
        "enqueue_jobs_s": batched.enqueue_jobs_s.round(),
        "single_e2e_jobs_s": single.as_ref().map(|s| s.e2e_jobs_s.round()),
        "single_enqueue_jobs_s": single.as_ref().map(|s| s.enqueue_jobs_s.round()),
        "lat_start_p50_ms": lat.as_ref().map(|l| l.start[0]),
        "lat_start_p99_ms": lat.as_ref().map(|l| l.start[2]),
        "lat_done_p99_ms": lat.as_ref().map(|l| l.done[2]),
        "lat_cpu_system_us": lat
            .as_ref()
            .filter(|l| !l.cpu_us_per_job.is_empty())
            .map(|l| system_cpu_us(&l.cpu_us_per_job).round()),
        "redis_bytes_per_job": bytes_per_job.map(f64::round),
        "rss_mb": dispatch_rss.map(|r| (r.1 * 10.0).round() / 10.0),
        "worker_rss_mb": worker_rss.map(|r| (r.1 * 10.0).round() / 10.0),
        "jobs": args.jobs,
    });
    // CPU µs per job, batched run: every process of the system, their sum, and the bench's
    // own (its submit and its event follower) apart.
    if let Some(obj) = json.as_object_mut()
        && !batched.cpu_us_per_job.is_empty()
    {
        for (name, us) in &batched.cpu_us_per_job {
            obj.insert(format!("cpu_{name}_us"), serde_json::json!(us.round()));
        }
        obj.insert(
            "cpu_system_us".into(),
            serde_json::json!(system_cpu_us(&batched.cpu_us_per_job).round()),
        );
    }
    println!("{json}");
    anyhow::ensure!(failed == 0, "{failed} attempts failed");
    Ok(json)
}
