//! End-to-end job life cycle on real Redis, NATS, dispatch and workers.

use dispatch_testkit as common;

use std::time::Duration;

use common::{Stack, eventually};
use dispatch_client::pb::{self, JobState};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noop_job_succeeds_through_a_real_worker() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let r = s
        .create(json!({"queue": "default", "type": "noop", "payload": {"objectId": "x"}}))
        .await;
    assert!(r.created);
    let job = r.job.unwrap();
    assert_eq!(job.state, JobState::Queued as i32);
    let done = s.wait_state(&job.id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 1);
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    assert!(done.lease.is_none(), "no lease after the end");
    assert_eq!(
        dispatch_client::json::from_proto(done.payload.as_ref()),
        json!({"objectId": "x"})
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_job_retries_then_dead_letters_and_retry_job_reruns_it() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let job = s
        .create(json!({"queue":"default","type":"fail","payload":{"probability":1},"options":{"maxAttempts":3,"backoff":{"initial":"0.1s"}}}))
        .await
        .job
        .unwrap();
    let failed = s.wait_state(&job.id, JobState::Failed, T).await;
    assert_eq!(failed.attempt, 3);
    let err = failed.error.unwrap();
    assert!(err.message.contains("injected failure"), "{}", err.message);
    assert_eq!(err.attempt, 3);

    // RetryJob re-runs it with a fresh budget of 3 attempts: it ends FAILED on attempt 6.
    let rerun = s
        .jobs()
        .await
        .retry_job(pb::RetryJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(rerun.attempt, 4);
    assert_eq!(rerun.max_attempts, 6);
    assert_eq!(rerun.state, JobState::Queued as i32);
    let again = s.wait_state(&job.id, JobState::Failed, T).await;
    assert_eq!(again.attempt, 6);

    // A SUCCEEDED job cannot be retried.
    let ok = s.create(json!({"queue":"default","type":"noop"})).await.job.unwrap();
    s.wait_state(&ok.id, JobState::Succeeded, T).await;
    let e = s
        .jobs()
        .await
        .retry_job(pb::RetryJobRequest { id: ok.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_over_its_timeout_is_stopped_and_fails() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let job = s
        .create(json!({"queue":"default","type":"sleep","payload":{"durationMs": 30000},"options":{"maxAttempts":2,"timeout":"0.3s","backoff":{"initial":"0.05s"}}}))
        .await
        .job
        .unwrap();
    let failed = s.wait_state(&job.id, JobState::Failed, T).await;
    assert_eq!(failed.attempt, 2);
    assert!(failed.error.unwrap().message.contains("timed out"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_scheduled_queued_and_running_jobs() {
    let mut s = Stack::start().await;
    let mut api = s.jobs().await;
    // Scheduled: delayed an hour.
    let scheduled = s
        .create(json!({"queue":"default","type":"noop","options":{"delay":"3600s"}}))
        .await
        .job
        .unwrap();
    assert_eq!(scheduled.state, JobState::Scheduled as i32);
    // Queued: on a queue no worker serves.
    let queued = s.create(json!({"queue":"nobody","type":"noop"})).await.job.unwrap();
    assert_eq!(queued.state, JobState::Queued as i32);
    for id in [&scheduled.id, &queued.id] {
        let j = api
            .cancel_job(pb::CancelJobRequest {
                id: id.clone(),
                reason: "not needed".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(j.state, JobState::Cancelled as i32);
        assert_eq!(j.error.unwrap().message, "not needed");
    }
    // Cancelling again is a no-op; the scheduler must not revive it.
    let again = api
        .cancel_job(pb::CancelJobRequest {
            id: scheduled.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(again.into_inner().job.unwrap().state, JobState::Cancelled as i32);

    // Running: the worker learns it from its heartbeat (lease 3 s: a beat every second).
    s.spawn_builtin_worker(&[("default", 2)]);
    let running = s
        .create(json!({"queue":"default","type":"sleep","payload":{"durationMs": 60000}}))
        .await
        .job
        .unwrap();
    s.wait_state(&running.id, JobState::Running, T).await;
    let j = api
        .cancel_job(pb::CancelJobRequest {
            id: running.id.clone(),
            reason: "superseded".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(j.state, JobState::Running as i32);
    assert!(j.cancel_requested);
    let cancelled = s
        .wait_state(&running.id, JobState::Cancelled, Duration::from_secs(10))
        .await;
    assert_eq!(cancelled.attempt, 1);
    assert_eq!(
        cancelled.error.unwrap().message,
        "superseded",
        "the reason given to CancelJob is kept"
    );

    // A finished job cannot be cancelled.
    let ok = s.create(json!({"queue":"default","type":"noop"})).await.job.unwrap();
    s.wait_state(&ok.id, JobState::Succeeded, T).await;
    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: ok.id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_job_sees_every_transition_in_order() {
    let mut s = Stack::start().await;
    let job = s
        .create(json!({"queue":"default","type":"fail","payload":{"probability":1},"options":{"maxAttempts":2,"backoff":{"initial":"0.1s"}}}))
        .await
        .job
        .unwrap();
    let mut stream = s
        .jobs()
        .await
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // The watch counts itself in the partition's counter, so the scripts publish wake-ups.
    let store = s.store().await;
    let counter = store.layout().partition_of(&job.id).watchers();
    let watchers = || {
        let (c, k) = (store.client().clone(), counter.clone());
        async move {
            use fred::prelude::*;
            c.get::<Option<i64>, _>(k.as_str()).await.unwrap()
        }
    };
    assert_eq!(watchers().await, Some(1));
    s.spawn_builtin_worker(&[("default", 2)]);
    let mut seen = Vec::new();
    let collect = async {
        while let Some(msg) = stream.message().await.unwrap() {
            seen.push(msg.event.unwrap());
        }
    };
    tokio::time::timeout(T, collect)
        .await
        .expect("watch stream ends after the terminal event");
    use JobState::*;
    let states: Vec<(i32, u32)> = seen.iter().map(|e| (e.state, e.attempt)).collect();
    let want = vec![
        (Queued as i32, 1),
        (Running as i32, 1),
        (Scheduled as i32, 1),
        (Queued as i32, 2),
        (Running as i32, 2),
        (Failed as i32, 2),
    ];
    assert_eq!(states, want);
    let seqs: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert!(
        seen.iter()
            .all(|e| e.job_id == job.id && e.queue == "default" && e.r#type == "fail")
    );
    assert!(seen[2].error.contains("injected failure"));
    assert!(!seen[1].worker_id.is_empty());
    // The stream ended: its count goes, and with it the key (nobody watches: no publishes).
    eventually("the watch to leave the counter", T, || async {
        watchers().await.is_none().then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_returns_the_same_job() {
    let s = Stack::start().await;
    let req = json!({"queue":"nobody","type":"noop","options":{"idempotencyKey":"order-42"}});
    let first = s.create(req.clone()).await;
    let second = s.create(req).await;
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job.as_ref().unwrap().id, second.job.as_ref().unwrap().id);
    // Same key on another queue is another job.
    let other = s
        .create(json!({"queue":"other","type":"noop","options":{"idempotencyKey":"order-42"}}))
        .await;
    assert!(other.created);
    assert_ne!(other.job.unwrap().id, first.job.as_ref().unwrap().id);
    // 100 concurrent callers: exactly one job.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = s.jobs().await;
        tasks.push(tokio::spawn(async move {
            let mut c = client;
            let req: pb::CreateJobRequest =
                serde_json::from_value(json!({"queue":"nobody","type":"noop","options":{"idempotencyKey":"burst"}}))
                    .unwrap();
            c.create_job(req).await.unwrap().into_inner()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        created += r.created as usize;
        ids.insert(r.job.unwrap().id);
    }
    assert_eq!((ids.len(), created), (1, 1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_jobs_pages_and_list_queues_counts() {
    let s = Stack::start().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let q = if i % 2 == 0 { "alpha" } else { "beta" };
        ids.push(s.create(json!({"queue": q, "type":"noop"})).await.job.unwrap().id);
    }
    let mut api = s.jobs().await;
    api.cancel_job(pb::CancelJobRequest {
        id: ids[0].clone(),
        reason: String::new(),
    })
    .await
    .unwrap();
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let page = api
            .list_jobs(pb::ListJobsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 3);
        all.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all, ids, "every job once, oldest first");
    let alpha_queued = api
        .list_jobs(pb::ListJobsRequest {
            queue: "alpha".into(),
            state: JobState::Queued as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alpha_queued.jobs.len(), 3);
    let queues = api
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    let alpha = queues.iter().find(|q| q.name == "alpha").unwrap();
    assert_eq!((alpha.depth, alpha.cancelled), (3, 1));
    assert_eq!(queues.iter().find(|q| q.name == "beta").unwrap().depth, 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drained_worker_hands_running_jobs_back_at_once() {
    let mut s = Stack::start().await;
    let mut cfg = s.worker_config(&[("default", 2)]);
    cfg.drain_grace = Duration::from_millis(200);
    // A long lease, so only a hand-back (not a lease expiry) can re-queue the job in time.
    cfg.lease = Duration::from_secs(60);
    let token = s.spawn_worker(dispatch_worker::Worker::new(cfg).with_builtin_handlers());
    let job = s
        .create(json!({"queue":"default","type":"sleep","payload":{"durationMs": 60000}}))
        .await
        .job
        .unwrap();
    s.wait_state(&job.id, JobState::Running, T).await;
    token.cancel();
    // Handed back with no delay: QUEUED on attempt 2 long before the 60 s lease would expire.
    let j = eventually("job handed back", Duration::from_secs(10), || {
        let s = &s;
        let id = job.id.clone();
        async move {
            let j = s.get(&id).await;
            (j.attempt == 2 && j.state == JobState::Queued as i32).then_some(j)
        }
    })
    .await;
    assert!(j.error.unwrap().message.contains("shutting down"));
    // Another worker takes it.
    s.spawn_builtin_worker(&[("default", 2)]);
    s.wait_state(&job.id, JobState::Running, T).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_run_message_is_republished_by_the_sweeper() {
    let mut s = Stack::start_with(|c| c.loops.sweep_after_ms = 300).await;
    let job = s.create(json!({"queue":"default","type":"noop"})).await.job.unwrap();
    // Wait until the run message is in JetStream, then lose it.
    let js = async_nats::jetstream::new(s.nats_client().await);
    let mut stream = js.get_stream("DISPATCH_RUN").await.unwrap();
    eventually("run message published", T, || {
        let mut st = stream.clone();
        async move { (st.info().await.ok()?.state.messages >= 1).then_some(()) }
    })
    .await;
    stream.purge().await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    s.spawn_builtin_worker(&[("default", 2)]);
    let done = s.wait_state(&job.id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 1);
    s.stop().await;
}

/// Some of a queue's run messages lost, the rest still in the (work-queue) stream: the sweeper
/// reads which jobs have theirs and writes only the missing ones, so each job has exactly one.
/// Jobs created in one batch share one `runs` message: one kept, one lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partly_lost_queue_gets_only_its_missing_run_messages_again() {
    let s = Stack::start_with(|c| {
        c.loops.sweep_after_ms = 300;
        c.loops.sweeper_interval_ms = 200;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.create(json!({"queue":"partial","type":"noop"})).await.job.unwrap().id);
    }
    let job = json!({"queue":"partial","type":"noop"});
    let kept = s.create_batch(vec![job.clone(); 3]).await;
    let lost_batch = s.create_batch(vec![job; 2]).await;
    let js = async_nats::jetstream::new(s.nats_client().await);
    let stream = js.get_stream("DISPATCH_RUN").await.unwrap();
    // (sequence, the job ids it names) of each message on the queue's subject.
    let messages = || {
        let st = stream.clone();
        async move {
            let mut out = Vec::new();
            let mut seq = 1;
            while let Ok(m) = st.get_first_raw_message_by_subject("job_run.partial", seq).await {
                seq = m.sequence + 1;
                let ids: Vec<String> = if m.headers.get("Dispatch-Kind").unwrap().as_str() == "runs" {
                    let body = <pb::JobRuns as prost::Message>::decode(m.payload.clone()).unwrap();
                    body.runs.into_iter().map(|r| r.job_id).collect()
                } else {
                    let msg_id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
                    vec![msg_id.split(':').next().unwrap().to_string()]
                };
                out.push((m.sequence, ids));
            }
            out
        }
    };
    let held = || async {
        let mut ids: Vec<String> = messages().await.into_iter().flat_map(|(_, ids)| ids).collect();
        ids.sort();
        ids
    };
    eventually("nine jobs' run messages published, in six messages", T, || async {
        let m = messages().await;
        (m.iter().map(|(_, ids)| ids.len()).sum::<usize>() == 9).then_some(m)
    })
    .await;
    let m = messages().await;
    assert_eq!(m.len(), 6, "four single messages and two batches: {m:?}");
    assert!(m.iter().any(|(_, ids)| *ids == kept), "{m:?}");
    // Lose the messages of the first and the third job, and the second batch's.
    let mut lost = Vec::new();
    for (seq, names) in m {
        if names == [ids[0].clone()] || names == [ids[2].clone()] || names == lost_batch {
            stream.delete_message(seq).await.unwrap();
            lost.extend(names);
        }
    }
    assert_eq!(lost.len(), 4);
    let mut want: Vec<String> = ids.iter().chain(&kept).chain(&lost_batch).cloned().collect();
    want.sort();
    eventually("each job has its run message again, once", T, || async {
        (held().await == want).then_some(())
    })
    .await;
    s.stop().await;
}

/// Serves one canned HTTP response per connection on a free port; returns the base URL.
async fn canned_http(status_line: &'static str, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}/data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_fetch_handler_returns_status_and_body() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 2)]);
    let ok_url = canned_http("200 OK", r#"{"price": 42}"#).await;
    let job = s
        .create(json!({"queue":"default","type":"http.fetch","payload":{"url": ok_url}}))
        .await
        .job
        .unwrap();
    let done = s.wait_state(&job.id, JobState::Succeeded, T).await;
    assert_eq!(
        dispatch_client::json::from_proto(done.result.as_ref()),
        json!({"status": 200, "body": {"price": 42}})
    );
    // A 404 is not worth retrying: FAILED on the first attempt.
    let missing = canned_http("404 Not Found", "{}").await;
    let job = s
        .create(json!({"queue":"default","type":"http.fetch","payload":{"url": missing},"options":{"maxAttempts":3}}))
        .await
        .job
        .unwrap();
    let failed = s.wait_state(&job.id, JobState::Failed, T).await;
    assert_eq!(failed.attempt, 1);
    assert!(failed.error.unwrap().message.contains("HTTP 404"));
    // An unknown job type fails at once with a clear message.
    let job = s
        .create(json!({"queue":"default","type":"no.such.type"}))
        .await
        .job
        .unwrap();
    let failed = s.wait_state(&job.id, JobState::Failed, T).await;
    assert!(failed.error.unwrap().message.contains("no handler"));
    s.stop().await;
}

/// Messages on `job_run.<queue>` in the run stream.
async fn run_messages(s: &Stack, queue: &str) -> u64 {
    let js = async_nats::jetstream::new(s.nats_client().await);
    let stream = js.get_stream("DISPATCH_RUN").await.unwrap();
    let mut subjects = stream.info_with_subjects(format!("job_run.{queue}")).await.unwrap();
    let mut n = 0;
    while let Some(Ok((_, count))) = futures::StreamExt::next(&mut subjects).await {
        n += count as u64;
    }
    n
}

/// The worker's announcements as ListWorkers shows them: (worker id, last seen).
async fn last_seen(s: &Stack, worker_id: &str) -> Option<pbjson_types::Timestamp> {
    let workers = s
        .jobs()
        .await
        .list_workers(pb::ListWorkersRequest {})
        .await
        .ok()?
        .into_inner()
        .workers;
    workers.into_iter().find(|w| w.worker_id == worker_id)?.last_seen
}

/// Waits until the worker has announced itself `n` more times (time passes, evidenced by the
/// worker itself, with no sleep).
async fn announcements(s: &Stack, worker_id: &str, n: usize) {
    let mut seen = last_seen(s, worker_id).await;
    for _ in 0..n {
        let before = seen;
        seen = eventually("another announcement", T, || async {
            let now = last_seen(s, worker_id).await;
            (now.is_some() && now != before).then_some(now)
        })
        .await;
    }
}

async fn queue_info(s: &Stack, name: &str) -> Option<pb::QueueInfo> {
    let queues = s
        .jobs()
        .await
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    queues.into_iter().find(|q| q.name == name)
}

/// Pass: a queue paused before its jobs arrive keeps them QUEUED on attempt 1 while a worker
/// that listens on it keeps announcing (its run messages stay in the stream: nothing pulled,
/// nothing refused, nothing re-published); a claim is refused naming the pause; ListQueues and
/// ListWorkers show it (and the worker's other queue, which has no job); resumed, the jobs run
/// oldest first and the per-minute counts see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_queue_keeps_its_jobs_queued_and_resume_runs_them_in_order() {
    let mut s = Stack::start_with(|c| c.loops.announce_interval_ms = 200).await;
    let mut jobs = s.jobs().await;
    let paused = jobs
        .pause_queue(pb::PauseQueueRequest { name: "slow".into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert!(paused.paused && paused.paused_at.is_some(), "{paused:?}");
    assert_eq!(paused.depth, 0);
    let worker = s.worker_config(&[("slow", 1), ("idle", 1)]).worker_id;
    s.spawn_builtin_worker(&[("slow", 1), ("idle", 1)]);
    // One at a time, each published before the next is created: the run stream's order is
    // the creation order (across partitions the relay publishes in batches).
    let mut ids = Vec::new();
    for i in 0..5u64 {
        ids.push(
            s.create(json!({"queue":"slow","type":"noop","payload":{"i":i}}))
                .await
                .job
                .unwrap()
                .id,
        );
        eventually("the run message in the stream", T, || async {
            (run_messages(&s, "slow").await == i + 1).then_some(())
        })
        .await;
    }
    announcements(&s, &worker, 3).await;
    for id in &ids {
        let j = s.get(id).await;
        assert_eq!((j.state, j.attempt), (JobState::Queued as i32, 1), "{id}");
    }
    assert_eq!(
        run_messages(&s, "slow").await,
        5,
        "the worker pulled a paused queue's messages"
    );
    let refused = s
        .workers_api()
        .await
        .claim_job(pb::ClaimJobRequest {
            job_id: ids[0].clone(),
            attempt: 1,
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "queue slow is paused");
    let info = queue_info(&s, "slow").await.unwrap();
    assert!(info.paused);
    // A queue with no job is listed while a worker takes jobs from it.
    let idle = queue_info(&s, "idle")
        .await
        .expect("a queue a worker listens on is listed");
    assert!(!idle.paused && idle.depth == 0);
    assert_eq!(info.depth, 5);
    assert!(info.oldest_queued_created_at.is_some());
    let listed = s
        .jobs()
        .await
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    let w = listed.workers.iter().find(|w| w.worker_id == worker).unwrap();
    assert_eq!(w.queues.get("slow"), Some(&1));
    assert!(w.version.starts_with("dispatch-worker "), "{w:?}");

    let resumed = jobs
        .resume_queue(pb::ResumeQueueRequest { name: "slow".into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert!(!resumed.paused && resumed.paused_at.is_none());
    let mut started = Vec::new();
    for id in &ids {
        let j = s.wait_state(id, JobState::Succeeded, T).await;
        assert_eq!(j.attempt, 1, "a pause used an attempt of {id}");
        let t = j.started_at.unwrap();
        started.push((t.seconds, t.nanos));
    }
    assert!(
        started.windows(2).all(|w| w[0] <= w[1]),
        "not run oldest first: {started:?}"
    );
    assert!(!queue_info(&s, "slow").await.unwrap().paused);
    eventually("the per-minute counts to see five successes", T, || {
        let mut jobs = jobs.clone();
        async move {
            let stats = jobs
                .get_stats(pb::GetStatsRequest {
                    queue: "slow".into(),
                    minutes: 5,
                })
                .await
                .ok()?
                .into_inner();
            assert_eq!(stats.minutes.len(), 5);
            (stats.minutes.iter().map(|m| m.succeeded).sum::<u64>() == 5).then_some(())
        }
    })
    .await;
    s.stop().await;
}

/// Pass: a worker that knows nothing of pauses takes a paused queue's run message, has its
/// claim refused and drops it; the sweeper leaves the job alone while the queue is paused, and
/// resuming writes its run message again at once, so it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_message_dropped_while_paused_is_written_again_on_resume() {
    let mut s = Stack::start_with(|c| {
        c.loops.announce_interval_ms = 200;
        c.loops.sweep_after_ms = 100;
    })
    .await;
    let mut jobs = s.jobs().await;
    jobs.pause_queue(pb::PauseQueueRequest { name: "default".into() })
        .await
        .unwrap();
    let id = s.create(json!({"queue":"default","type":"noop"})).await.job.unwrap().id;
    // A foreign worker: pull, claim (refused), ack.
    let js = async_nats::jetstream::new(s.nats_client().await);
    let stream = js.get_stream("DISPATCH_RUN").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("foreign".into()),
            filter_subject: "job_run.default".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let msg = eventually("the run message", T, || {
        let c = consumer.clone();
        async move {
            let mut batch = c.fetch().max_messages(1).messages().await.ok()?;
            futures::StreamExt::next(&mut batch).await?.ok()
        }
    })
    .await;
    let e = s
        .workers_api()
        .await
        .claim_job(pb::ClaimJobRequest {
            job_id: id.clone(),
            attempt: 1,
            worker_id: "foreign".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    msg.ack().await.unwrap();
    eventually("the message gone", T, || async {
        (run_messages(&s, "default").await == 0).then_some(())
    })
    .await;
    // A work-queue stream takes one consumer per subject: the foreign worker leaves.
    stream.delete_consumer("foreign").await.unwrap();
    // A pause-aware worker on the queue; the sweeper (every 200 ms, after 100 ms) runs while
    // it announces three times and must not write the message again.
    let worker = s.worker_config(&[("default", 2)]).worker_id;
    s.spawn_builtin_worker(&[("default", 2)]);
    announcements(&s, &worker, 3).await;
    assert_eq!(run_messages(&s, "default").await, 0, "re-published while paused");
    assert_eq!(s.get(&id).await.state, JobState::Queued as i32);
    jobs.resume_queue(pb::ResumeQueueRequest { name: "default".into() })
        .await
        .unwrap();
    let done = s.wait_state(&id, JobState::Succeeded, T).await;
    assert_eq!(done.attempt, 1);
    s.stop().await;
}

/// Single CreateJob calls at once share writes (the group commit): every caller still gets its
/// own job with its own payload, and callers racing on one idempotency key all get the one job,
/// created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_creates_each_get_their_own_job() {
    let s = Stack::start().await;
    let client = s.jobs().await;
    let mut calls = Vec::new();
    for i in 0..300u64 {
        let mut c = client.clone();
        let mut body = json!({"queue": "grouped", "type": "noop", "payload": {"i": i}});
        if i % 10 == 0 {
            body["options"] = json!({"idempotencyKey": "same"});
        }
        let req: pb::CreateJobRequest = serde_json::from_value(body).unwrap();
        calls.push(tokio::spawn(async move {
            (i, c.create_job(req).await.unwrap().into_inner())
        }));
    }
    let (mut keyed, mut plain) = (Vec::new(), Vec::new());
    for call in calls {
        let (i, r) = call.await.unwrap();
        let job = r.job.unwrap();
        assert_eq!(job.state, JobState::Queued as i32);
        if i % 10 == 0 {
            keyed.push((job.id, r.created));
        } else {
            assert!(r.created);
            let payload = dispatch_client::json::from_proto(job.payload.as_ref());
            assert_eq!(
                payload,
                json!({"i": i}),
                "job {} answered with another's payload",
                job.id
            );
            plain.push((i, job.id));
        }
    }
    let first = keyed[0].0.clone();
    assert!(
        keyed.iter().all(|(id, _)| *id == first),
        "one idempotency key, several jobs"
    );
    assert_eq!(keyed.iter().filter(|(_, created)| *created).count(), 1);
    let ids: std::collections::HashSet<&String> = plain.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 270);
    assert!(!ids.contains(&first));
    // What was stored is what each caller was told.
    let mut c = client.clone();
    for (i, id) in plain.iter().step_by(9) {
        let job = c
            .get_job(pb::GetJobRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(dispatch_client::json::from_proto(job.payload.as_ref()), json!({"i": i}));
    }
    let queues = c
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    let grouped = queues.iter().find(|q| q.name == "grouped").unwrap();
    assert_eq!(grouped.depth, 271);
}
