//! The store's v2 promises on real Redis (one node and a cluster), NATS and dispatch:
//! retention deletes everything of a finished job, Redis returns to its size, a backlog does
//! not multiply run messages, data of another layout is refused, jobs spread over every
//! master of a cluster, and a graceful cluster failover under load loses nothing.

use dispatch_testkit as common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Stack, Topology, eventually, redis_cli};
use dispatch_client::pb::{self, JobState};
use fred::prelude::*;
use futures::StreamExt;
use prost::Message;
use serde_json::json;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

async fn create_many(s: &Stack, n: usize, job: serde_json::Value) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut client = s.jobs().await;
    while ids.len() < n {
        let k = (n - ids.len()).min(1000);
        let jobs: Vec<serde_json::Value> = (0..k).map(|_| job.clone()).collect();
        let req: pb::CreateJobsRequest = serde_json::from_value(json!({ "jobs": jobs })).unwrap();
        let resp = client.create_jobs(req).await.unwrap().into_inner();
        ids.extend(resp.results.into_iter().map(|r| r.job.unwrap().id));
    }
    ids
}

async fn queues(s: &Stack) -> Vec<pb::QueueInfo> {
    let r = s.jobs().await.list_queues(pb::ListQueuesRequest {}).await.unwrap();
    r.into_inner().queues
}

/// Every id of `queue` (any state), paging with `page_size`.
async fn list_all(s: &Stack, queue: &str, page_size: u32) -> Vec<String> {
    let mut client = s.jobs().await;
    let (mut ids, mut token) = (Vec::new(), String::new());
    loop {
        let r = client
            .list_jobs(pb::ListJobsRequest {
                queue: queue.into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(r.jobs.into_iter().map(|j| j.id));
        if r.next_page_token.is_empty() {
            return ids;
        }
        token = r.next_page_token;
    }
}

async fn not_found(s: &Stack, id: &str) -> bool {
    let r = s.jobs().await.get_job(pb::GetJobRequest { id: id.into() }).await;
    matches!(r, Err(e) if e.code() == Code::NotFound)
}

/// Pass: a job with 1 s retention is gone (gRPC NOT_FOUND, REST 404) a few seconds after it
/// finished, and neither ListJobs nor ListQueues counts it; 0 keeps nothing; a queue's own
/// retention applies to its jobs; a job with the default retention stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_jobs_expire_with_everything_of_theirs() {
    let mut s = Stack::start_with(|c| {
        c.retention.queues.insert(
            "brief".into(),
            dispatch::config::QueueRetention {
                succeeded_ms: Some(1_000),
                ..Default::default()
            },
        );
    })
    .await;
    s.spawn_builtin_worker(&[("short", 4), ("brief", 4), ("kept", 4)]);
    let short = s
        .create(
            json!({"queue":"short","type":"noop","payload":{"x":1},"options":{"retention":"1s","idempotencyKey":"k1"}}),
        )
        .await
        .job
        .unwrap();
    let zero = s
        .create(json!({"queue":"short","type":"noop","options":{"retention":"0s"}}))
        .await
        .job
        .unwrap();
    let brief = s.create(json!({"queue":"brief","type":"noop"})).await.job.unwrap();
    let kept = s.create(json!({"queue":"kept","type":"noop"})).await.job.unwrap();
    let done = s.wait_state(&short.id, JobState::Succeeded, T).await;
    let finished = Instant::now();
    assert!(done.finished_at.is_some());
    for id in [&short.id, &zero.id, &brief.id] {
        eventually("the job to expire", Duration::from_secs(5), || async {
            not_found(&s, id).await.then_some(())
        })
        .await;
    }
    assert!(
        finished.elapsed() >= Duration::from_millis(900),
        "kept for its retention"
    );
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{}/api/job/{}", s.http, short.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    assert!(list_all(&s, "short", 100).await.is_empty());
    assert!(list_all(&s, "brief", 100).await.is_empty());
    // Emptied, a queue leaves ListQueues, or stays with no job while a worker listens on it.
    eventually("the emptied queues to hold nothing", T, || async {
        let q = queues(&s).await;
        let empty = |name: &str| {
            q.iter()
                .find(|q| q.name == name)
                .is_none_or(|q| q.depth + q.scheduled + q.running + q.succeeded + q.failed + q.cancelled == 0)
        };
        (empty("short") && empty("brief")).then_some(())
    })
    .await;
    // The default retention (24 h) keeps the other one, counted.
    s.wait_state(&kept.id, JobState::Succeeded, T).await;
    let q = queues(&s).await;
    assert_eq!(q.iter().find(|q| q.name == "kept").map(|q| q.succeeded), Some(1));
    // The idempotency key went with its job: the same key creates a new job.
    let again = s
        .create(json!({"queue":"short","type":"noop","options":{"idempotencyKey":"k1"}}))
        .await;
    assert!(again.created);
    assert_ne!(again.job.unwrap().id, short.id);
    s.stop().await;
}

/// DBSIZE (without the keys that do not grow with jobs: the per-minute counts, a key per
/// minute kept a day, and the workers' announcements) and used_memory, measured after a full collection of the Lua heap (garbage left by
/// earlier scripts, which Redis counts in used_memory and collects when it likes) and with an
/// empty slow log (it keeps the arguments of up to 128 slow commands, such as big batches).
async fn redis_size(c: &Client) -> (u64, u64) {
    let _: fred::types::Value = c
        .eval(
            "collectgarbage('collect') return 0",
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
        .await
        .unwrap();
    let cmd = fred::types::CustomCommand::new_static("SLOWLOG", fred::types::ClusterHash::FirstKey, false);
    let _: fred::types::Value = c.custom(cmd, vec!["RESET"]).await.unwrap();
    let all: u64 = c.dbsize().await.unwrap();
    let keys_cmd = fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false);
    let stats: Vec<String> = c.custom(keys_cmd, vec!["dispatch:{stats}:*"]).await.unwrap();
    let workers: u64 = c.exists("dispatch:{workers}").await.unwrap();
    let keys = all - stats.len() as u64 - workers;
    let info: String = c.info(Some(fred::types::InfoKind::Memory)).await.unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    (keys, used)
}

/// True when no queue holds a job (a queue a worker listens on is listed with none).
fn no_jobs(queues: &[pb::QueueInfo]) -> bool {
    queues
        .iter()
        .all(|q| q.depth + q.scheduled + q.running + q.succeeded + q.failed + q.cancelled == 0)
}

/// The parts of used_memory, for a failure message.
async fn memory_info(c: &Client) -> String {
    let info: String = c.info(Some(fred::types::InfoKind::Memory)).await.unwrap();
    info.lines()
        .filter(|l| ["used_memory", "mem_clients_normal"].iter().any(|k| l.starts_with(k)) && !l.contains("human"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every key with its MEMORY USAGE, for a failure message.
async fn key_sizes(c: &Client) -> String {
    let cmd = |name| fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false);
    let keys: Vec<String> = c.custom(cmd("KEYS"), vec!["*"]).await.unwrap();
    let mut out = String::new();
    for k in keys {
        let n: Option<u64> = c
            .custom(cmd("MEMORY"), vec!["USAGE", k.as_str(), "SAMPLES", "0"])
            .await
            .unwrap();
        out.push_str(&format!("{k}: {n:?}\n"));
    }
    out
}

/// Pass: after 10,000 jobs finish and expire, Redis holds as many keys as before and its
/// used_memory is at most 5% above where it started (after a warm-up round of the same 10,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_returns_to_its_size_after_jobs_expire() {
    let mut s = Stack::start_on(Topology::Single, |c| {
        c.retention.succeeded_ms = 500;
    })
    .await;
    let redis = dispatch::store::redis_client(&s.config.redis_url, &s.config.redis).unwrap();
    redis.init().await.unwrap();
    let (keys_empty, _) = redis_size(&redis).await;
    s.spawn_builtin_worker(&[("bulk", 200)]);
    // Warm up with the same load first: Redis keeps what its first use grows once (the Lua
    // heap, client query buffers sized for the largest batch, table sizes) and that is not
    // per job.
    create_many(&s, 10_000, json!({"queue":"bulk","type":"noop","payload":{"n":1}})).await;
    eventually("the warm-up jobs to expire", Duration::from_secs(60), || async {
        (redis_size(&redis).await.0 == keys_empty && no_jobs(&queues(&s).await)).then_some(())
    })
    .await;
    let (keys0, mem0) = redis_size(&redis).await;
    let info0 = memory_info(&redis).await;
    let ids = create_many(&s, 10_000, json!({"queue":"bulk","type":"noop","payload":{"n":1}})).await;
    assert_eq!(ids.len(), 10_000);
    let deadline = Instant::now() + Duration::from_secs(40);
    let (keys1, mem1) = loop {
        let (k, m) = redis_size(&redis).await;
        // Back to where it started, or below (the start may hold transient buffers).
        let close = m as f64 <= mem0 as f64 * 1.05;
        if k == keys0 && close && no_jobs(&queues(&s).await) {
            break (k, m);
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: DBSIZE {keys0} -> {k}, used_memory {mem0} -> {m}, queues {:?}\n{}\nbefore: {info0}\nafter: {}",
            queues(&s).await,
            key_sizes(&redis).await,
            memory_info(&redis).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("DBSIZE {keys0} -> {keys1}; used_memory {mem0} -> {mem1}");
    println!("before: {info0}\nafter: {}", memory_info(&redis).await);
    assert!(not_found(&s, &ids[0]).await && not_found(&s, &ids[9_999]).await);
    s.stop().await;
}

/// Pass: 20,000 jobs wait on a queue no worker serves, with sweep_after_ms = 1000; 30 s later
/// the run stream holds at most 20,000 + 1% messages, and a worker started then runs every
/// job on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_does_not_multiply_run_messages() {
    let mut s = Stack::start_with(|c| c.loops.sweep_after_ms = 1_000).await;
    let ids = create_many(&s, 20_000, json!({"queue":"backlog","type":"noop"})).await;
    let js = async_nats::jetstream::new(s.nats_client().await);
    let stream = js.get_stream("DISPATCH_RUN").await.unwrap();
    let messages = || {
        let st = stream.clone();
        async move { st.get_info().await.unwrap().state.messages }
    };
    // Jobs the stream's messages name (a `runs` message names up to 64).
    let jobs_held = || {
        let st = stream.clone();
        async move {
            let (mut jobs, mut seq) = (0, 1);
            while let Ok(m) = st.get_first_raw_message_by_subject("job_run.backlog", seq).await {
                seq = m.sequence + 1;
                jobs += match m.headers.get("Dispatch-Kind").map(|k| k.as_str()) {
                    Some("runs") => pb::JobRuns::decode(m.payload.clone()).unwrap().runs.len(),
                    _ => 1,
                };
            }
            jobs
        }
    };
    eventually("every run message published", T, || async {
        (jobs_held().await >= 20_000).then_some(())
    })
    .await;
    // The backlog is older than sweep_after_ms: the sweeper reads it every sweep, and writes
    // nothing again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let held = jobs_held().await;
    println!(
        "run stream after 30 s: {} messages naming {held} jobs for 20,000 jobs",
        messages().await
    );
    assert!(held <= 20_200, "run messages for {held} jobs for 20,000 jobs");
    s.spawn_builtin_worker(&[("backlog", 500)]);
    let started = Instant::now();
    eventually("the backlog to drain", Duration::from_secs(120), || async {
        let q = queues(&s).await;
        q.iter()
            .find(|q| q.name == "backlog")
            .is_some_and(|q| q.succeeded == 20_000)
            .then_some(())
    })
    .await;
    println!("drained in {:?}", started.elapsed());
    for id in ids.iter().step_by(997) {
        assert_eq!(s.get(id).await.attempt, 1);
    }
    eventually("the run stream to empty", T, || async {
        (messages().await == 0).then_some(())
    })
    .await;
    s.stop().await;
}

/// Pass: a Redis holding the layout before partitions, or another partition count, is
/// refused at start with a message that says what to do; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_of_another_layout_is_refused_at_start() {
    let s = Stack::start_on(Topology::Single, |_| {}).await;
    let mut other = s.config.clone();
    other.redis.partitions = 8;
    let err = dispatch::start(other)
        .await
        .err()
        .expect("another partition count is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("16 partitions") && msg.contains("redis.partitions = 16"),
        "{msg}"
    );

    // A Redis with keys of the first layout.
    let dir = tempfile::tempdir().unwrap();
    let legacy = common::start_servers_on(dir.path(), false, Topology::Single);
    let url = legacy.redis_url.clone();
    let c = dispatch::store::redis_client(&url, &Default::default()).unwrap();
    c.init().await.unwrap();
    let _: () = c.sadd("dispatch:queues", "default").await.unwrap();
    let err = dispatch::store::Store::connect(&url, Default::default())
        .await
        .err()
        .expect("the old layout is refused");
    assert!(err.to_string().contains("before partitions"), "{err}");
    let keys: u64 = c.dbsize().await.unwrap();
    assert_eq!(keys, 1, "nothing written next to the old layout");
    s.stop().await;
}

/// Pass: on a 3-master Redis Cluster (one seed node in the URL) jobs run, every master holds
/// some of them, and ListJobs pages through all of them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_spread_over_every_master_of_a_cluster() {
    let mut s = Stack::start_on(
        Topology::Cluster {
            masters: 3,
            replicas: 0,
        },
        |_| {},
    )
    .await;
    assert!(s.config.redis_url.starts_with("redis-cluster://"));
    // One by one: each job picks its partition (a batch shares one).
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(s.create(json!({"queue":"spread","type":"noop"})).await.job.unwrap().id);
    }
    s.spawn_builtin_worker(&[("spread", 32)]);
    for id in &ids {
        s.wait_state(id, JobState::Succeeded, T).await;
    }
    for port in s.redis_ports.clone() {
        let n: u64 = redis_cli(port, &["dbsize"]).trim().parse().unwrap();
        assert!(n > 30, "master {port} holds {n} keys");
    }
    let listed = list_all(&s, "spread", 7).await;
    assert_eq!(listed.len(), 300);
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), 300);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "ListJobs is in id order across partitions");
    s.stop().await;
}

/// Pass: `CLUSTER FAILOVER` (graceful) on a master while jobs are created and run: every
/// job succeeds (lost 0), each completion is published once (completed twice 0), none is
/// left behind (stuck 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_cluster_failover_under_load_loses_nothing() {
    let s = Stack::start_on(
        Topology::Cluster {
            masters: 3,
            replicas: 1,
        },
        |c| {
            c.loops.sweep_after_ms = 2_000;
        },
    )
    .await;
    let nats = s.nats_client().await;
    let mut complete = nats.subscribe("job_complete.>").await.unwrap();
    nats.flush().await.unwrap();
    let _workers: Vec<_> = (0..2)
        .map(|i| s.spawn_worker_process(&format!("fo-{i}"), "failover", 32, 3))
        .collect();
    let replica = s
        .redis_ports
        .iter()
        .copied()
        .find(|p| redis_cli(*p, &["role"]).starts_with("slave"))
        .expect("a replica");
    let mut ids = Vec::new();
    for round in 0..10 {
        ids.extend(
            create_many(
                &s,
                200,
                json!({"queue":"failover","type":"sleep","payload":{"durationMs": 20}}),
            )
            .await,
        );
        if round == 3 {
            let out = redis_cli(replica, &["cluster", "failover"]);
            assert!(out.contains("OK"), "CLUSTER FAILOVER: {out}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A manual failover that cannot finish within Redis's own 5 s (a busy machine) is
    // aborted by Redis; ask again until the replica has taken over.
    let mut asked = Instant::now();
    eventually("the replica to be a master", Duration::from_secs(60), || {
        if asked.elapsed() > Duration::from_secs(8) {
            asked = Instant::now();
            println!("failover: replica {replica} not a master yet; asking again");
            redis_cli(replica, &["cluster", "failover"]);
        }
        async { redis_cli(replica, &["role"]).starts_with("master").then_some(()) }
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(Duration::from_secs(90), async {
        while seen.len() < ids.len() {
            let m = complete.next().await.unwrap();
            *seen.entry(pb::JobEvent::decode(m.payload).unwrap().job_id).or_default() += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("lost or stuck: {} of {} completed", seen.len(), ids.len()));
    // Anything published twice arrives within the relay's next rounds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Some(Some(m)) = futures::FutureExt::now_or_never(complete.next()) {
        *seen.entry(pb::JobEvent::decode(m.payload).unwrap().job_id).or_default() += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    let stuck = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    println!(
        "failover: {} jobs, lost 0, completed twice {twice}, stuck {stuck}",
        ids.len()
    );
    assert_eq!((twice, stuck), (0, 0));
    for id in ids.iter().step_by(97) {
        assert_eq!(s.get(id).await.state, JobState::Succeeded as i32);
    }
    s.stop().await;
}

/// libfaketime, installed by tools/install.sh.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Starts the `dispatch` binary as a second replica of `s` with its clock `offset` ahead
/// (libfaketime), running its background loops every 20 ms; returns it and its gRPC URL once
/// it answers.
async fn skewed_replica(s: &Stack, offset: &str) -> (common::Proc, String) {
    let port = common::free_port();
    let log = std::fs::File::create(s.dir.path().join("dispatch-skewed.log")).unwrap();
    let proc = common::Proc(
        std::process::Command::new(common::bin("dispatch"))
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{port}"),
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--redis-url", &s.config.redis_url, "--nats-url", &s.config.nats_url])
            .args([
                "--set",
                "loops.scheduler_interval_ms=20",
                "--set",
                "loops.sweeper_interval_ms=200",
            ])
            .env("LD_PRELOAD", FAKETIME)
            .env("FAKETIME", offset)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dispatch binary"),
    );
    let url = format!("http://127.0.0.1:{port}");
    eventually("the skewed replica to answer", T, || {
        let url = url.clone();
        async move {
            let mut c = pb::job_service_client::JobServiceClient::connect(url).await.ok()?;
            c.list_queues(pb::ListQueuesRequest {}).await.ok().map(|_| ())
        }
    })
    .await;
    (proc, url)
}

/// Pass: with a second replica whose clock runs 60 s ahead (its timers loop running every
/// 20 ms), jobs that heartbeat for longer than their 1 s lease are neither reaped nor run
/// twice; records carry Redis's time whichever replica wrote them; ListJobs pages through the
/// jobs created by both replicas without skipping or repeating one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_clocks_a_minute_apart_neither_reap_nor_skip() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} missing: run tools/install.sh"
    );
    let s = Stack::start().await;
    let (_skewed, skewed_url) = skewed_replica(&s, "+60s").await;
    let _worker = s.spawn_worker_process("skew", "skew", 40, 1);
    let job = json!({"queue":"skew","type":"sleep","payload":{"durationMs": 2500},"options":{"maxAttempts":3}});
    let mut ids = create_many(&s, 20, job.clone()).await;
    let mut on_skewed = pb::job_service_client::JobServiceClient::connect(skewed_url)
        .await
        .unwrap();
    for _ in 0..20 {
        let req: pb::CreateJobRequest = serde_json::from_value(job.clone()).unwrap();
        let created = on_skewed.create_job(req).await.unwrap().into_inner().job.unwrap();
        // Written by the skewed replica, timed by Redis.
        let at = created.created_at.unwrap().seconds as u64;
        let now = dispatch::store::now_ms() / 1000;
        assert!(at.abs_diff(now) <= 5, "created_at {at} vs now {now}");
        ids.push(created.id);
    }
    for id in &ids {
        let done = s.wait_state(id, JobState::Succeeded, T).await;
        assert_eq!(done.attempt, 1, "job {id} was reaped and run again");
        assert!(done.error.is_none(), "job {id}: {:?}", done.error);
    }
    let listed = list_all(&s, "skew", 7).await;
    assert_eq!(listed.len(), 40);
    assert_eq!(
        listed.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    s.stop().await;
}

/// Relay consumers in partition `p`'s outbox group.
async fn relay_consumers(c: &Client, p: dispatch::store::Partition) -> usize {
    let cmd = fred::types::CustomCommand::new_static("XINFO", fred::types::ClusterHash::FirstKey, false);
    let v: fred::types::Value = c
        .custom(cmd, vec!["CONSUMERS".to_string(), p.outbox(), "relay".into()])
        .await
        .unwrap();
    v.into_array().len()
}

/// Pass: the relay consumers of a dispatch that is gone leave the outbox consumer groups once
/// idle for `loops.relay_forget_idle_ms`; the live dispatch's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_consumers_of_a_gone_dispatch_are_removed() {
    let s = Stack::start_with(|c| {
        c.loops.relay_claim_idle_ms = 1_000;
        c.loops.relay_forget_idle_ms = 1_500;
    })
    .await;
    let store = s.store().await;
    let p = dispatch::store::Partition(0);
    let other = dispatch::start(s.config.clone()).await.unwrap();
    eventually("both dispatches' relays in the group", T, || async {
        (relay_consumers(store.client(), p).await == 2).then_some(())
    })
    .await;
    other.shutdown().await;
    eventually("the gone relay's consumer to be removed", T, || async {
        (relay_consumers(store.client(), p).await == 1).then_some(())
    })
    .await;
    // The live one keeps working.
    let mut s = s;
    s.spawn_builtin_worker(&[("after", 2)]);
    let job = s.create(json!({"queue":"after","type":"noop"})).await.job.unwrap();
    s.wait_state(&job.id, JobState::Succeeded, T).await;
    s.stop().await;
}

/// Pass: after Redis forgets every script (`SCRIPT FLUSH`, as after a restart or a failover
/// to a replica that never loaded them), creating, claiming and completing still work: each
/// call that meets NOSCRIPT loads its script and runs again, with the same arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_redis_forgetting_the_scripts() {
    let mut s = Stack::start().await;
    redis_cli(s.redis_port, &["SCRIPT", "FLUSH"]);
    let created = s
        .create(json!({"queue": "noscript", "type": "noop", "payload": {"n": 1}, "options": {"idempotencyKey": "k1"}}))
        .await
        .job
        .unwrap();
    assert_eq!(created.state(), JobState::Queued);
    // The same key again: the reloaded script saw the first call's key.
    let again = s
        .create(json!({"queue": "noscript", "type": "noop", "options": {"idempotencyKey": "k1"}}))
        .await
        .job
        .unwrap();
    assert_eq!(again.id, created.id);
    redis_cli(s.redis_port, &["SCRIPT", "FLUSH"]);
    s.spawn_builtin_worker(&[("noscript", 2)]);
    let done = s.wait_state(&created.id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 1);
    s.stop().await;
}
