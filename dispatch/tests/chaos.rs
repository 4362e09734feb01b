//! Faults with real processes: workers killed, stopped and resumed, NATS killed and restarted,
//! dispatch dying between its Redis write and its publish. Each test states its pass criterion.

use dispatch_testkit as common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Stack, eventually};
use dispatch_client::pb::{self, JobState};
use futures::StreamExt;
use prost::Message;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn signal(proc: &common::Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &proc.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn create_many(s: &Stack, n: usize, job: serde_json::Value) -> Vec<String> {
    s.create_batch((0..n).map(|_| job.clone()).collect()).await
}

async fn count_in_state(s: &Stack, queue: &str, state: JobState) -> usize {
    let r = s
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            queue: queue.into(),
            state: state as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner().jobs.len()
}

/// Collects `job_complete` events per job id until `n` distinct jobs completed, then anything
/// already delivered beyond that.
async fn completions(sub: &mut async_nats::Subscriber, n: usize) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(T, async {
        while seen.len() < n {
            let m = sub.next().await.unwrap();
            *seen.entry(pb::JobEvent::decode(m.payload).unwrap().job_id).or_default() += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} completions published", seen.len()));
    while let Some(Some(m)) = futures::FutureExt::now_or_never(sub.next()) {
        *seen.entry(pb::JobEvent::decode(m.payload).unwrap().job_id).or_default() += 1;
    }
    seen
}

/// Pass: every job ends SUCCEEDED, each completion is published once, and the jobs the dead
/// worker held run again within lease + backoff + one sweep (plus scheduling slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_with_jobs_in_flight_loses_nothing() {
    let s = Stack::start_with(|c| c.loops.sweep_after_ms = 1_000).await;
    let nats = s.nats_client().await;
    let mut complete = nats.subscribe("job_complete.>").await.unwrap();
    nats.flush().await.unwrap();
    let lease_s = 3;
    let a = s.spawn_worker_process("victim", "default", 40, lease_s);
    let ids = create_many(
        &s,
        40,
        json!({"queue":"default","type":"sleep","payload":{"durationMs": 4000},"options":{"maxAttempts":5,"backoff":{"initial":"0.1s"}}}),
    )
    .await;
    eventually("the victim to hold 20 jobs", T, || async {
        (count_in_state(&s, "default", JobState::Running).await >= 20).then_some(())
    })
    .await;
    drop(a); // SIGKILL
    let killed_at = Instant::now();
    let _b = s.spawn_worker_process("rescuer", "default", 40, lease_s);
    // Recovery: all 40 are running again (attempt 2 for the victim's) or done.
    let bound = Duration::from_secs(lease_s)
        + Duration::from_millis(200)
        + Duration::from_millis(1_000 + 200)
        + Duration::from_secs(3);
    eventually("every job to be re-run", bound, || async {
        let mut ok = 0;
        for id in &ids {
            let j = s.get(id).await;
            if j.state == JobState::Succeeded as i32
                || (j.state == JobState::Running as i32 && j.lease.as_ref().is_some_and(|l| l.worker_id == "rescuer"))
            {
                ok += 1;
            }
        }
        (ok == ids.len()).then_some(())
    })
    .await;
    let recovery = killed_at.elapsed();
    for id in &ids {
        let j = s.wait_state(id, JobState::Succeeded, T).await;
        assert!(j.attempt <= 2, "job {id} ran {} times", j.attempt);
    }
    let seen = completions(&mut complete, ids.len()).await;
    assert!(
        seen.values().all(|&n| n == 1),
        "a completion was published twice: {seen:?}"
    );
    eprintln!("recovery after kill -9: {recovery:?} (bound {bound:?})");
    s.stop().await;
}

/// Pass: a worker frozen past its lease comes back to find its report refused; the record
/// shows exactly one completion, by the worker that took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_worker_late_report_is_refused() {
    let s = Stack::start().await;
    let nats = s.nats_client().await;
    let mut complete = nats.subscribe("job_complete.>").await.unwrap();
    nats.flush().await.unwrap();
    let a = s.spawn_worker_process("frozen", "default", 4, 3);
    let id = create_many(&s, 1, json!({"queue":"default","type":"sleep","payload":{"durationMs": 2000},"options":{"backoff":{"initial":"0.1s"}}})).await.remove(0);
    s.wait_state(&id, JobState::Running, T).await;
    signal(&a, "-STOP");
    // The lease (3 s) expires; the reaper re-queues attempt 2.
    eventually("lease reaped", T, || async {
        let j = s.get(&id).await;
        (j.attempt == 2).then_some(())
    })
    .await;
    let mut b = s.spawn_worker_process("rescuer", "default", 4, 3);
    let done = s.wait_state(&id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 2);
    // Wake the frozen worker and let it finish and report, then stop it.
    signal(&a, "-CONT");
    signal(&a, "-TERM");
    let mut a = a;
    let exited = eventually("frozen worker to drain and exit", T, || {
        let r = a.0.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(exited.success());
    assert_eq!(s.get(&id).await, done, "the late report changed nothing");
    let seen = completions(&mut complete, 1).await;
    assert_eq!(seen.get(&id), Some(&1));
    signal(&b, "-TERM");
    let _ = b.0.wait();
    s.stop().await;
}

/// Pass: a job running five times longer than its lease, heartbeating, runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_job_with_heartbeats_is_never_rerun() {
    let mut s = Stack::start().await;
    let mut cfg = s.worker_config(&[("default", 2)]);
    cfg.lease = Duration::from_secs(1);
    s.spawn_worker(dispatch_worker::Worker::new(cfg).with_builtin_handlers());
    let id = create_many(
        &s,
        1,
        json!({"queue":"default","type":"sleep","payload":{"durationMs": 5000}}),
    )
    .await
    .remove(0);
    let done = s.wait_state(&id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 1);
    assert!(done.error.is_none(), "no failed attempt: {:?}", done.error);
    s.stop().await;
}

/// Pass: a poison job is tried exactly maxAttempts times, then FAILED with job_failed; the
/// other jobs are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_job_is_dead_lettered_after_max_attempts() {
    let mut s = Stack::start().await;
    let nats = s.nats_client().await;
    let mut failed = nats.subscribe("job_failed.>").await.unwrap();
    nats.flush().await.unwrap();
    s.spawn_builtin_worker(&[("default", 8)]);
    let poison = create_many(&s, 1, json!({"queue":"default","type":"fail","payload":{"probability":1},"options":{"maxAttempts":4,"backoff":{"initial":"0.05s"}}})).await.remove(0);
    let good = create_many(&s, 30, json!({"queue":"default","type":"noop"})).await;
    let dead = s.wait_state(&poison, JobState::Failed, T).await;
    assert_eq!(dead.attempt, 4);
    for id in &good {
        assert_eq!(s.wait_state(id, JobState::Succeeded, T).await.attempt, 1);
    }
    let mut events = Vec::new();
    tokio::time::timeout(T, async {
        while events.last().map(|e: &pb::JobEvent| e.state) != Some(JobState::Failed as i32) {
            let e = pb::JobEvent::decode(failed.next().await.unwrap().payload).unwrap();
            assert_eq!(e.job_id, poison, "only the poison job fails");
            events.push(e);
        }
    })
    .await
    .expect("job_failed with state FAILED");
    assert_eq!(events.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    s.stop().await;
}

/// Pass: jobs written while no relay ran (dispatch "died" between its Redis write and its
/// publish) are published by the next dispatch and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_dying_before_publish_loses_nothing() {
    let mut s = Stack::start_with(|c| c.loops.relay_enabled = false).await;
    let ids = create_many(&s, 25, json!({"queue":"default","type":"noop"})).await;
    let store = s.store().await;
    // One entry per script run (the messages of a batch go together).
    assert!(
        store.outbox_len().await.unwrap() >= 1,
        "written to the outbox, not published"
    );
    s.dispatch.take().unwrap().shutdown().await;
    let mut config = s.config.clone();
    config.loops.relay_enabled = true;
    let restarted = dispatch::start(config).await.unwrap();
    s.grpc = restarted.grpc_addr;
    s.http = restarted.http_addr;
    s.dispatch = Some(restarted);
    s.spawn_builtin_worker(&[("default", 8)]);
    all_succeed_and_the_outbox_drains(&s, &store, &ids).await;
    s.stop().await;
}

/// Waits for every job of `ids` to succeed, then for every outbox to be empty.
async fn all_succeed_and_the_outbox_drains(s: &Stack, store: &dispatch::store::Store, ids: &[String]) {
    for id in ids {
        s.wait_state(id, JobState::Succeeded, T).await;
    }
    eventually("outbox drained", T, || async {
        (store.outbox_len().await.ok()? == 0).then_some(())
    })
    .await;
}

/// A no-op job for the store API.
fn noop_job(queue: &str) -> dispatch::store::NewJob {
    dispatch::store::NewJob {
        queue: queue.into(),
        job_type: "noop".into(),
        payload: "null".into(),
        max_attempts: 3,
        backoff: dispatch::store::Backoff {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.0,
        },
        timeout_ms: 60_000,
        run_at_ms: None,
        delay_ms: 0,
        idempotency_key: String::new(),
        labels: Default::default(),
        traceparent: String::new(),
        retention_ms: None,
    }
}

/// Pending entries of the outbox consumer `consumer`, over every partition.
async fn pending_of(store: &dispatch::store::Store, consumer: &str) -> usize {
    use fred::prelude::*;
    let mut n = 0;
    for p in store.layout().all() {
        let v: fred::types::Value = store
            .client()
            .custom(
                fred::types::CustomCommand::new_static("XPENDING", fred::types::ClusterHash::FirstKey, false),
                vec![
                    p.outbox(),
                    dispatch::store::OUTBOX_GROUP.to_string(),
                    "-".into(),
                    "+".into(),
                    "1000".into(),
                    consumer.into(),
                ],
            )
            .await
            .unwrap();
        n += v.into_array().len();
    }
    n
}

/// Pass: with prompt publishing, the call that commits a transition gets the outbox entry it
/// wrote, read into its relay consumer (here: the job's `run` message, pending under that
/// consumer). Entries of a dispatch that died after such a commit and before its publish (its
/// publisher gone) are taken over by the live dispatch's relay after `relay_claim_idle_ms`:
/// every job succeeds and the outbox drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_dying_before_its_prompt_publish_loses_nothing() {
    let mut s = Stack::start_with(|c| c.loops.relay_claim_idle_ms = 1_000).await;
    let store = s.store().await;
    let window = s.config.jobs.idempotency_window_ms;

    // A live publisher's queue gets exactly the run message of the job just created.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let live = store.with_prompt(dispatch::store::Prompt::new(
        "relay-test-live".into(),
        tx,
        notify.clone(),
    ));
    let job = noop_job("prompt-live");
    let id = live.new_id(&job);
    live.create(&id, &job, window).await.unwrap();
    let (_, raw) = rx.try_recv().expect("the create handed its entry over");
    let entries = dispatch::store::parse_entries(raw).unwrap();
    assert_eq!(entries.len(), 1);
    let kinds: Vec<(&str, &str)> = entries[0]
        .msgs
        .iter()
        .map(|m| (m.kind.as_str(), m.id.as_str()))
        .collect();
    assert_eq!(kinds, vec![("run", id.as_str())]);
    assert_eq!(
        pending_of(&store, "relay-test-live").await,
        1,
        "pending under the caller's consumer"
    );

    // A "dead" dispatch: its entries are read for a publisher that is gone.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    drop(rx);
    let dead = store.with_prompt(dispatch::store::Prompt::new("relay-test-dead".into(), tx, notify));
    let mut ids = vec![id];
    for _ in 0..20 {
        let job = noop_job("prompt-live");
        let id = dead.new_id(&job);
        dead.create(&id, &job, window).await.unwrap();
        ids.push(id);
    }
    assert_eq!(pending_of(&store, "relay-test-dead").await, 20, "read, never published");

    s.spawn_builtin_worker(&[("prompt-live", 8)]);
    all_succeed_and_the_outbox_drains(&s, &store, &ids).await;
    s.stop().await;
}

/// Pass: NATS killed with SIGKILL and restarted while jobs flow: every accepted job succeeds,
/// dispatch and the worker reconnect, and the outbox drains; with one ack per relay batch
/// and stream (the default) and with an ack per message, with the relay alone (the default)
/// and with prompt publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_under_load_loses_nothing() {
    nats_killed_and_restarted(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_under_load_loses_nothing_with_an_ack_per_message() {
    nats_killed_and_restarted(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_under_load_loses_nothing_with_prompt_publishing() {
    nats_killed_and_restarted(false, true).await;
}

async fn nats_killed_and_restarted(ack_each: bool, prompt: bool) {
    let mut s = Stack::start_with(|c| {
        c.loops.sweep_after_ms = 2_000;
        c.loops.relay_ack_each = ack_each;
        c.loops.relay_prompt = prompt;
    })
    .await;
    s.spawn_builtin_worker(&[("default", 16)]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.extend(create_many(&s, 40, json!({"queue":"default","type":"noop"})).await);
    }
    s.restart_nats();
    // Keep submitting: dispatch only needs Redis to accept jobs.
    for _ in 0..5 {
        ids.extend(create_many(&s, 40, json!({"queue":"default","type":"noop"})).await);
    }
    let store = s.store().await;
    all_succeed_and_the_outbox_drains(&s, &store, &ids).await;
    s.stop().await;
}

/// Pass: while Redis is down callers get UNAVAILABLE within a bounded time (no panic, no
/// hang); after it restarts from its AOF every job accepted before or after succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_under_load_loses_nothing_and_callers_see_unavailable() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 16)]);
    let mut ids = create_many(&s, 100, json!({"queue":"default","type":"noop"})).await;
    ids.extend(
        create_many(
            &s,
            20,
            json!({"queue":"default","type":"sleep","payload":{"durationMs": 1500}}),
        )
        .await,
    );
    s.kill_redis();
    let req: pb::CreateJobRequest = serde_json::from_value(json!({"queue":"default","type":"noop"})).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(15), s.jobs().await.create_job(req))
        .await
        .expect("a create while Redis is down answers, it does not hang");
    let status = outcome.expect_err("Redis is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    s.start_redis();
    ids.extend(
        eventually("creates to work again", T, || async {
            let req: pb::CreateJobsRequest = serde_json::from_value(
                json!({"jobs": (0..50).map(|_| json!({"queue":"default","type":"noop"})).collect::<Vec<_>>()}),
            )
            .unwrap();
            let r = s.jobs().await.create_jobs(req).await.ok()?;
            Some(
                r.into_inner()
                    .results
                    .into_iter()
                    .map(|r| r.job.unwrap().id)
                    .collect::<Vec<_>>(),
            )
        })
        .await,
    );
    for id in &ids {
        s.wait_state(id, JobState::Succeeded, T).await;
    }
    s.stop().await;
}

/// Pass: past its admission limit dispatch answers RESOURCE_EXHAUSTED and writes nothing,
/// and it accepts work again once below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_capacity_creates_get_resource_exhausted() {
    let s = Stack::start_with(|c| c.jobs.max_inflight_creates = 10).await;
    let req: pb::CreateJobsRequest = serde_json::from_value(
        json!({"jobs": (0..11).map(|_| json!({"queue":"q","type":"noop"})).collect::<Vec<_>>()}),
    )
    .unwrap();
    let e = s.jobs().await.create_jobs(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(count_in_state(&s, "q", JobState::Queued).await, 0, "nothing written");
    assert_eq!(create_many(&s, 10, json!({"queue":"q","type":"noop"})).await.len(), 10);
    s.stop().await;
}

/// Pass: SIGTERM to a busy worker process: jobs that finish within the grace period succeed
/// on their first attempt, the others are handed back at once (attempt 2 well before the
/// 30 s lease could expire), and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_a_busy_worker_drains_and_hands_back() {
    let s = Stack::start().await;
    let mut w = s.spawn_worker_process_with("busy", "default", 20, 30, 3);
    let short = create_many(
        &s,
        5,
        json!({"queue":"default","type":"sleep","payload":{"durationMs": 1500}}),
    )
    .await;
    let long = create_many(
        &s,
        5,
        json!({"queue":"default","type":"sleep","payload":{"durationMs": 60000}}),
    )
    .await;
    eventually("all ten running", T, || async {
        (count_in_state(&s, "default", JobState::Running).await == 10).then_some(())
    })
    .await;
    signal(&w, "-TERM");
    let signalled = Instant::now();
    let status = eventually("worker to exit", Duration::from_secs(15), || {
        let r = w.0.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(status.success(), "{status}");
    for id in &short {
        assert_eq!(s.wait_state(id, JobState::Succeeded, T).await.attempt, 1);
    }
    for id in &long {
        let j = s.get(id).await;
        assert_eq!(
            (j.state, j.attempt),
            (JobState::Queued as i32, 2),
            "handed back at once"
        );
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        signalled.elapsed()
    );
    s.stop().await;
}

/// Pass: with two dispatch replicas reaping at once, every expired lease is reaped once:
/// attempt 2 and one `job_failed` event per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_reap_each_expired_lease_once() {
    let s = Stack::start().await;
    let second = dispatch::start(s.config.clone()).await.unwrap();
    let nats = s.nats_client().await;
    let mut failed = nats.subscribe("job_failed.>").await.unwrap();
    nats.flush().await.unwrap();
    let ids = create_many(
        &s,
        30,
        json!({"queue":"manual","type":"noop","options":{"backoff":{"initial":"60s"}}}),
    )
    .await;
    let mut w = s.workers_api().await;
    for id in &ids {
        w.claim_job(pb::ClaimJobRequest {
            job_id: id.clone(),
            attempt: 1,
            worker_id: "gone".into(),
            lease_duration: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for id in &ids {
        let j = s.wait_state(id, JobState::Scheduled, T).await;
        assert_eq!(j.attempt, 2);
    }
    let mut per_job: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(T, async {
        while per_job.len() < ids.len() {
            let e = pb::JobEvent::decode(failed.next().await.unwrap().payload).unwrap();
            *per_job.entry(e.job_id).or_default() += 1;
        }
    })
    .await
    .expect("a job_failed per reaped job");
    while let Some(Some(m)) = futures::FutureExt::now_or_never(failed.next()) {
        *per_job
            .entry(pb::JobEvent::decode(m.payload).unwrap().job_id)
            .or_default() += 1;
    }
    assert!(per_job.values().all(|&n| n == 1), "reaped twice: {per_job:?}");
    second.shutdown().await;
    s.stop().await;
}

/// Pass: on a 3-node NATS cluster with both streams at 3 replicas, the node dispatch is
/// connected to is killed with SIGKILL (and restarted), then the worker's node, while jobs are
/// created and run: every job succeeds (lost 0, stuck 0) and the event stream holds one
/// completion per job (completed twice 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_nodes_killed_under_load_lose_nothing() {
    let nats_dir = tempfile::tempdir().unwrap();
    let mut cluster = common::NatsCluster::start(nats_dir.path(), 3);
    let (dispatch_node, worker_node) = (0, 1);
    let s = Stack::start_with(|c| {
        c.nats_url = cluster.url(dispatch_node);
        c.streams.replicas = 3;
        c.loops.sweep_after_ms = 2_000;
    })
    .await;
    let _worker = s.spawn_worker_process_at(&cluster.url(worker_node), "nc-worker", "nc", 32, 3, 5);
    let mut client = s.jobs().await;
    let submitter = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..40 {
            let jobs: Vec<serde_json::Value> = (0..50)
                .map(|_| json!({"queue":"nc","type":"sleep","payload":{"durationMs": 10}}))
                .collect();
            let req: pb::CreateJobsRequest = serde_json::from_value(json!({ "jobs": jobs })).unwrap();
            let resp = client.create_jobs(req).await.unwrap().into_inner();
            ids.extend(resp.results.into_iter().map(|r| r.job.unwrap().id));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in [dispatch_node, worker_node] {
        tokio::task::block_in_place(|| cluster.kill(node));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        tokio::task::block_in_place(|| cluster.restart(node));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids = submitter.await.unwrap();
    assert_eq!(ids.len(), 2_000);
    let mut stuck = Vec::new();
    let deadline = Instant::now() + T;
    for id in &ids {
        loop {
            let j = s.get(id).await;
            if j.state == JobState::Succeeded as i32 {
                break;
            }
            if Instant::now() > deadline {
                stuck.push((id.clone(), j.state));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Completions as the event stream (3 replicas) holds them.
    let js = async_nats::jetstream::new(async_nats::connect(cluster.url(2)).await.unwrap());
    let stream = js.get_stream("DISPATCH_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "job_complete.nc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
        *seen
            .entry(pb::JobEvent::decode(m.payload.clone()).unwrap().job_id)
            .or_default() += 1;
        if m.info().map(|i| i.pending == 0).unwrap_or(false) {
            break;
        }
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    println!(
        "nats cluster: {} jobs, lost 0, completed twice {twice}, stuck {}; completion events missing {missing}",
        ids.len(),
        stuck.len()
    );
    assert!(stuck.is_empty(), "stuck: {:?}", &stuck[..stuck.len().min(5)]);
    assert_eq!(twice, 0);
    s.stop().await;
}
