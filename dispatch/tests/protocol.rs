//! The worker protocol's fencing, the lease reaper, NATS subjects and input validation, on
//! real Redis, NATS and dispatch.

use dispatch_testkit as common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Stack, eventually};
use dispatch_client::pb::{self, JobState};
use futures::StreamExt;
use prost::Message;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

const T: Duration = Duration::from_secs(20);

fn secs(s: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds: s, nanos: 0 })
}

async fn claim(s: &Stack, id: &str, attempt: u32, lease_s: i64) -> Result<pb::Job, tonic::Status> {
    s.workers_api()
        .await
        .claim_job(pb::ClaimJobRequest {
            job_id: id.into(),
            attempt,
            worker_id: "manual".into(),
            lease_duration: secs(lease_s),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_lease_reports_are_refused_and_change_nothing() {
    let s = Stack::start().await;
    let job = s.create(json!({"queue":"manual","type":"noop"})).await.job.unwrap();
    // A claim for another attempt is refused.
    assert_eq!(
        claim(&s, &job.id, 2, 5).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let claimed = claim(&s, &job.id, 1, 5).await.unwrap();
    assert_eq!(claimed.state, JobState::Running as i32);
    let lease = claimed.lease.clone().unwrap();
    assert_eq!(lease.worker_id, "manual");
    // A second claim of the same attempt is refused.
    assert_eq!(
        claim(&s, &job.id, 1, 5).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    let mut w = s.workers_api().await;
    let before = s.get(&job.id).await;
    let stale = "00000000-0000-0000-0000-000000000000".to_string();
    let e = w
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: stale.clone(),
            result: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = w
        .fail_job(pb::FailJobRequest {
            job_id: job.id.clone(),
            lease_id: stale.clone(),
            error: "x".into(),
            retryable: true,
            retry_delay: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = w
        .heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: stale,
            progress: None,
            lease_duration: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        s.get(&job.id).await,
        before,
        "refused reports leave the record unchanged"
    );

    // Heartbeat with the right lease records progress and extends the deadline.
    let beat = w
        .heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: lease.lease_id.clone(),
            progress: Some(dispatch_client::json::to_proto(&json!({"pct": 50}))),
            lease_duration: secs(5),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!beat.cancel_requested);
    let mid = s.get(&job.id).await;
    assert_eq!(
        dispatch_client::json::from_proto(mid.progress.as_ref()),
        json!({"pct": 50})
    );

    // Complete, then the same report again is idempotent; a fail with that lease is refused.
    let done = w
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: lease.lease_id.clone(),
            result: Some(dispatch_client::json::to_proto(&json!({"ok": true}))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded as i32);
    let again = w
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: lease.lease_id.clone(),
            result: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(again, done, "a repeated completion changes nothing");
    let e = w
        .fail_job(pb::FailJobRequest {
            job_id: job.id.clone(),
            lease_id: lease.lease_id,
            error: "late".into(),
            retryable: true,
            retry_delay: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(s.get(&job.id).await, done);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_lease_is_reaped_and_the_late_report_refused() {
    let s = Stack::start().await;
    let job = s
        .create(json!({"queue":"manual","type":"noop","options":{"maxAttempts":2,"backoff":{"initial":"0.05s"}}}))
        .await
        .job
        .unwrap();
    let claimed = claim(&s, &job.id, 1, 1).await.unwrap();
    // No heartbeat: after 1 s the reaper counts a failed attempt and re-queues attempt 2.
    let requeued = eventually("lease reaped", T, || async {
        let j = s.get(&job.id).await;
        (j.attempt == 2 && j.state == JobState::Queued as i32).then_some(j)
    })
    .await;
    assert!(requeued.error.unwrap().message.contains("lease expired"));
    let e = s
        .workers_api()
        .await
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: claimed.lease.unwrap().lease_id,
            result: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The second attempt expires too: attempts exhausted, FAILED.
    claim(&s, &job.id, 2, 1).await.unwrap();
    let failed = s.wait_state(&job.id, JobState::Failed, T).await;
    assert_eq!(failed.attempt, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_nats_subject_receives_its_events() {
    let mut s = Stack::start().await;
    let nats = s.nats_client().await;
    let mut subs = Vec::new();
    for subject in [
        "job_run.>",
        "job_processing.>",
        "job_complete.>",
        "job_failed.>",
        "job_cancelled.>",
    ] {
        subs.push(nats.subscribe(subject).await.unwrap());
    }
    nats.flush().await.unwrap();
    s.spawn_builtin_worker(&[("default", 4)]);
    let ok = s.create(json!({"queue":"default","type":"noop"})).await.job.unwrap();
    let bad = s
        .create(json!({"queue":"default","type":"fail","payload":{"probability":1},"options":{"maxAttempts":1}}))
        .await
        .job
        .unwrap();
    let gone = s.create(json!({"queue":"idle","type":"noop"})).await.job.unwrap();
    s.wait_state(&ok.id, JobState::Succeeded, T).await;
    s.wait_state(&bad.id, JobState::Failed, T).await;
    s.jobs()
        .await
        .cancel_job(pb::CancelJobRequest {
            id: gone.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();

    // (subject prefix, job id) -> (state, msg id)
    let mut got: HashMap<(String, String), (i32, String)> = HashMap::new();
    let mut streams = futures::stream::select_all(subs);
    let want = 3 + 2 + 1 + 1 + 1; // runs, processing, complete, failed, cancelled
    tokio::time::timeout(T, async {
        while got.len() < want {
            let msg = streams.next().await.unwrap();
            let prefix = msg.subject.split('.').next().unwrap().to_string();
            let headers = msg.headers.clone().unwrap();
            let msg_id = headers.get("Nats-Msg-Id").unwrap().to_string();
            let (id, state) = if prefix == "job_run" {
                let r = pb::JobRun::decode(msg.payload.clone()).unwrap();
                assert_eq!(msg.subject.as_str(), format!("job_run.{}", r.queue));
                (r.job_id, 0)
            } else {
                let e = pb::JobEvent::decode(msg.payload.clone()).unwrap();
                assert_eq!(e.version, 1);
                assert!(e.timestamp.is_some());
                (e.job_id, e.state)
            };
            got.insert((prefix, id), (state, msg_id));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing events; got {got:?}"));
    let key = |p: &str, id: &str| {
        got.get(&(p.to_string(), id.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no {p} for {id}: {got:?}"))
    };
    assert_eq!(key("job_run", &ok.id).1, format!("{}:1", ok.id));
    assert_eq!(key("job_processing", &ok.id).0, JobState::Running as i32);
    assert_eq!(
        key("job_complete", &ok.id),
        (JobState::Succeeded as i32, format!("{}:1:complete", ok.id))
    );
    assert_eq!(key("job_failed", &bad.id).0, JobState::Failed as i32);
    assert_eq!(key("job_cancelled", &gone.id).0, JobState::Cancelled as i32);
    key("job_run", &gone.id);
    s.stop().await;
}

/// The run messages of one batch go out together: one `runs` message per queue, up to
/// `relay_runs_per_message` jobs each, and a worker with fewer free slots than a message has
/// jobs runs each of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_goes_out_in_runs_messages_and_each_job_runs_once() {
    let mut s = Stack::start_with(|c| c.loops.relay_runs_per_message = 16).await;
    let nats = s.nats_client().await;
    let mut sub = nats.subscribe("job_run.>").await.unwrap();
    nats.flush().await.unwrap();
    let mut jobs = vec![json!({"queue":"batched","type":"noop"}); 40];
    jobs.extend(vec![json!({"queue":"other","type":"noop"}); 3]);
    jobs.push(json!({"queue":"alone","type":"noop"}));
    let ids = s.create_batch(jobs).await;
    // subject -> (Nats-Msg-Id, kind, job ids) of each message
    let mut got: HashMap<String, Vec<(String, String, Vec<String>)>> = HashMap::new();
    tokio::time::timeout(T, async {
        while got.values().flatten().map(|m| m.2.len()).sum::<usize>() < ids.len() {
            let msg = sub.next().await.unwrap();
            let headers = msg.headers.clone().unwrap();
            let kind = headers.get("Dispatch-Kind").unwrap().to_string();
            let names: Vec<String> = if kind == "runs" {
                pb::JobRuns::decode(msg.payload.clone())
                    .unwrap()
                    .runs
                    .into_iter()
                    .map(|r| r.job_id)
                    .collect()
            } else {
                vec![pb::JobRun::decode(msg.payload.clone()).unwrap().job_id]
            };
            let msg_id = headers.get("Nats-Msg-Id").unwrap().to_string();
            got.entry(msg.subject.to_string())
                .or_default()
                .push((msg_id, kind, names));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing run messages; got {got:?}"));
    let batched = &got["job_run.batched"];
    let sizes: Vec<usize> = batched.iter().map(|m| m.2.len()).collect();
    assert_eq!(sizes, [16, 16, 8], "{batched:?}");
    let in_order: Vec<String> = batched.iter().flat_map(|m| m.2.clone()).collect();
    assert_eq!(in_order, ids[..40]);
    for (msg_id, kind, names) in batched {
        assert_eq!(kind, "runs");
        assert_eq!(*msg_id, format!("{}:1+{}", names[0], names.len()));
    }
    let other = &got["job_run.other"];
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].2, ids[40..43]);
    // A queue's lone job keeps the one-job format.
    assert_eq!(
        got["job_run.alone"],
        [(format!("{}:1", ids[43]), "run".to_string(), vec![ids[43].clone()])]
    );

    // Four slots for sixteen jobs per message: the rest of a message waits for a slot.
    s.spawn_builtin_worker(&[("batched", 4), ("other", 2), ("alone", 1)]);
    for id in &ids {
        let done = s.wait_state(id, JobState::Succeeded, T).await;
        assert_eq!(done.attempt, 1, "job {id} ran more than once");
    }
    s.stop().await;
}

/// `relay_runs_per_message = 1`: one message per job (kind `run`), the format before, for
/// workers written against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_per_message_when_configured() {
    let s = Stack::start_with(|c| c.loops.relay_runs_per_message = 1).await;
    let nats = s.nats_client().await;
    let mut sub = nats.subscribe("job_run.single").await.unwrap();
    nats.flush().await.unwrap();
    let ids = s.create_batch(vec![json!({"queue":"single","type":"noop"}); 3]).await;
    let mut got = Vec::new();
    tokio::time::timeout(T, async {
        while got.len() < ids.len() {
            let msg = sub.next().await.unwrap();
            let headers = msg.headers.clone().unwrap();
            assert_eq!(headers.get("Dispatch-Kind").unwrap().as_str(), "run");
            let run = pb::JobRun::decode(msg.payload.clone()).unwrap();
            assert_eq!(
                headers.get("Nats-Msg-Id").unwrap().to_string(),
                format!("{}:1", run.job_id)
            );
            got.push(run.job_id);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing run messages; got {got:?}"));
    assert_eq!(got, ids);
    s.stop().await;
}

fn violations(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("field violations attached")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_field_violations_and_write_nothing() {
    let s = Stack::start().await;
    let mut api = s.jobs().await;
    let bad: pb::CreateJobRequest = serde_json::from_value(json!({
        "queue": "no spaces", "type": "",
        "options": {"maxAttempts": 5000, "timeout": "-1s", "backoff": {"multiplier": 0.5}, "delay": "1s", "runAt": "2030-01-01T00:00:00Z"}
    }))
    .unwrap();
    let e = api.create_job(bad).await.unwrap_err();
    let f = violations(&e);
    for want in [
        "queue",
        "type",
        "options.max_attempts",
        "options.timeout",
        "options.backoff.multiplier",
        "options.run_at",
    ] {
        assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
    }
    // Over the payload limit (1 MiB by default).
    let big: pb::CreateJobRequest =
        serde_json::from_value(json!({"queue":"q","type":"t","payload": "x".repeat(1_100_000)})).unwrap();
    assert_eq!(violations(&api.create_job(big).await.unwrap_err()), vec!["payload"]);
    // A batch with one bad job writes none of them.
    let batch: pb::CreateJobsRequest =
        serde_json::from_value(json!({"jobs": [{"queue":"q","type":"noop"}, {"queue":"q","type":"bad type"}]}))
            .unwrap();
    assert_eq!(
        violations(&api.create_jobs(batch).await.unwrap_err()),
        vec!["jobs[1].type"]
    );
    let empty = api
        .create_jobs(pb::CreateJobsRequest {
            jobs: vec![],
            ids_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&empty), vec!["jobs"]);
    let list = api
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.jobs.is_empty(), "nothing was written");

    assert_eq!(
        violations(&api.get_job(pb::GetJobRequest { id: String::new() }).await.unwrap_err()),
        vec!["id"]
    );
    assert_eq!(
        violations(
            &api.get_job(pb::GetJobRequest { id: "../etc".into() })
                .await
                .unwrap_err()
        ),
        vec!["id"]
    );
    let unknown = "01000000-0000-7000-8000-000000000000".to_string();
    assert_eq!(
        api.get_job(pb::GetJobRequest { id: unknown.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        api.cancel_job(pb::CancelJobRequest {
            id: unknown.clone(),
            reason: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        violations(
            &api.list_jobs(pb::ListJobsRequest {
                state: 99,
                page_size: 5000,
                ..Default::default()
            })
            .await
            .unwrap_err()
        ),
        vec!["state", "page_size"]
    );

    let mut w = s.workers_api().await;
    let e = w
        .claim_job(pb::ClaimJobRequest {
            job_id: unknown.clone(),
            attempt: 0,
            worker_id: String::new(),
            lease_duration: secs(3600),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["worker_id", "attempt", "lease_duration"]);
    let e = w
        .fail_job(pb::FailJobRequest {
            job_id: unknown.clone(),
            lease_id: unknown.clone(),
            error: String::new(),
            retryable: true,
            retry_delay: secs(-5),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["error", "retry_delay"]);
    let e = w
        .complete_job(pb::CompleteJobRequest {
            job_id: unknown.clone(),
            lease_id: unknown.clone(),
            result: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatch_replicas_run_every_job_exactly_once() {
    let mut s = Stack::start().await;
    let second = dispatch::start(s.config.clone()).await.unwrap();
    let nats = s.nats_client().await;
    let mut processing = nats.subscribe("job_processing.>").await.unwrap();
    let mut complete = nats.subscribe("job_complete.>").await.unwrap();
    nats.flush().await.unwrap();
    // Delayed jobs exercise both schedulers; creates go through both replicas.
    let mut a = s.jobs().await;
    let mut b =
        dispatch_client::pb::job_service_client::JobServiceClient::connect(format!("http://{}", second.grpc_addr))
            .await
            .unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let req: pb::CreateJobRequest =
            serde_json::from_value(json!({"queue":"default","type":"noop","options":{"delay":"0.2s"}})).unwrap();
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        ids.push(c.create_job(req).await.unwrap().into_inner().job.unwrap().id);
    }
    s.spawn_builtin_worker(&[("default", 8)]);
    for id in &ids {
        let j = s.wait_state(id, JobState::Succeeded, T).await;
        assert_eq!(j.attempt, 1, "promoted once, claimed once");
    }
    // Every transition's event is in the stream once: 40 processing + 40 complete.
    let js = async_nats::jetstream::new(nats.clone());
    let stored = eventually("80 events stored", T, || async {
        let mut st = js.get_stream("DISPATCH_EVENTS").await.ok()?;
        let n = st.info().await.ok()?.state.messages;
        (n >= 80).then_some(n)
    })
    .await;
    assert_eq!(stored, 80);
    let mut seen_p = std::collections::HashMap::new();
    let mut seen_c = std::collections::HashMap::new();
    tokio::time::timeout(T, async {
        while seen_c.len() < ids.len() {
            let m = complete.next().await.unwrap();
            let e = pb::JobEvent::decode(m.payload).unwrap();
            *seen_c.entry(e.job_id).or_insert(0) += 1;
        }
        while seen_p.len() < ids.len() {
            let m = processing.next().await.unwrap();
            let e = pb::JobEvent::decode(m.payload).unwrap();
            *seen_p.entry(e.job_id).or_insert(0) += 1;
        }
    })
    .await
    .expect("one processing and one complete event per job");
    // Nothing extra was delivered.
    while let Some(Some(m)) = futures::FutureExt::now_or_never(complete.next()) {
        let e = pb::JobEvent::decode(m.payload).unwrap();
        *seen_c.entry(e.job_id).or_insert(0) += 1;
    }
    assert!(
        seen_c.values().all(|&n| n == 1),
        "completion published twice: {seen_c:?}"
    );
    assert!(
        seen_p.values().all(|&n| n == 1),
        "processing published twice: {seen_p:?}"
    );
    second.shutdown().await;
    s.stop().await;
}

/// ClaimJobs and CompleteJobs: each item is granted, recorded or refused on its own, exactly as
/// the unary call would have done; a bad item rejects the call and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_claims_and_completions_decide_each_item_alone() {
    let s = Stack::start().await;
    let mut w = s.workers_api().await;
    let a = s.create(json!({"queue":"batch","type":"noop"})).await.job.unwrap();
    let b = s.create(json!({"queue":"batch","type":"noop"})).await.job.unwrap();
    let item = |id: &str, attempt: u32| pb::ClaimJobRequest {
        job_id: id.into(),
        attempt,
        worker_id: "batcher".into(),
        lease_duration: secs(5),
        ..Default::default()
    };
    let missing = "0190aaaa-0000-7000-8000-000000000000";

    // A bad item (attempt 0) rejects the whole call, naming the item; nothing is claimed.
    let e = w
        .claim_jobs(pb::ClaimJobsRequest {
            claims: vec![item(&a.id, 1), item(&b.id, 0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["claims[1].attempt".to_string()]);
    assert_eq!(s.get(&a.id).await.state, JobState::Queued as i32);
    let e = w.claim_jobs(pb::ClaimJobsRequest::default()).await.unwrap_err();
    assert_eq!(violations(&e), vec!["claims".to_string()]);

    // Granted, stale attempt, unknown job, and a repeat of a claim granted in the same call.
    let r = w
        .claim_jobs(pb::ClaimJobsRequest {
            claims: vec![
                item(&a.id, 1),
                item(&b.id, 2),
                item(missing, 1),
                item(&b.id, 1),
                item(&a.id, 1),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<Option<i32>> = r.iter().map(|x| x.error.as_ref().map(|e| e.code)).collect();
    let (fp, nf) = (Code::FailedPrecondition as i32, Code::NotFound as i32);
    assert_eq!(codes, vec![None, Some(fp), Some(nf), None, Some(fp)]);
    let ja = r[0].job.clone().unwrap();
    let jb = r[3].job.clone().unwrap();
    assert_eq!((ja.id.as_str(), ja.state), (a.id.as_str(), JobState::Running as i32));
    assert_eq!(ja.lease.as_ref().unwrap().worker_id, "batcher");
    assert_eq!(jb.payload, b.payload);
    assert!(r[1].job.is_none() && r[1].error.as_ref().unwrap().message.contains("attempt"));
    assert!(r.iter().all(|x| x.payload_json.is_empty()), "JSON text only when asked");

    // The payload as JSON text when asked: the same value, `job.payload` unset.
    let payload = json!({"n": 42, "s": "ü", "l": [1.5, null, true], "o": {}});
    let c = s
        .create(json!({"queue":"batch","type":"noop","payload": payload}))
        .await
        .job
        .unwrap();
    let r = w
        .claim_jobs(pb::ClaimJobsRequest {
            claims: vec![item(&c.id, 1), item(missing, 1)],
            payload_as_json: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let jc = r[0].job.clone().unwrap();
    assert_eq!((jc.id.as_str(), jc.state), (c.id.as_str(), JobState::Running as i32));
    assert!(jc.payload.is_none());
    let text: serde_json::Value = serde_json::from_str(&r[0].payload_json).unwrap();
    assert_eq!(text, payload);
    assert!(r[1].payload_json.is_empty() && r[1].error.is_some());

    // Completions: recorded, stale lease refused (record unchanged), repeat is a no-op.
    let lease = |j: &pb::Job| j.lease.as_ref().unwrap().lease_id.clone();
    let done = |id: &str, lease_id: String| pb::CompleteJobRequest {
        job_id: id.into(),
        lease_id,
        result: Some(dispatch_client::json::to_proto(&json!({"ok": id}))),
        ..Default::default()
    };
    let stale = "00000000-0000-0000-0000-000000000000".to_string();
    let r = w
        .complete_jobs(pb::CompleteJobsRequest {
            completions: vec![
                done(&a.id, lease(&ja)),
                done(&b.id, stale.clone()),
                done(missing, stale),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let states: Vec<(String, i32, Option<i32>)> = r
        .into_iter()
        .map(|x| (x.job_id, x.state, x.error.map(|e| e.code)))
        .collect();
    assert_eq!(
        states,
        vec![
            (a.id.clone(), JobState::Succeeded as i32, None),
            (b.id.clone(), JobState::Unspecified as i32, Some(fp)),
            (missing.to_string(), JobState::Unspecified as i32, Some(nf)),
        ]
    );
    let got_a = s.get(&a.id).await;
    assert_eq!(got_a.state, JobState::Succeeded as i32);
    assert_eq!(
        dispatch_client::json::from_proto(got_a.result.as_ref()),
        json!({"ok": a.id})
    );
    assert_eq!(s.get(&b.id).await.state, JobState::Running as i32);
    let again = w
        .complete_jobs(pb::CompleteJobsRequest {
            completions: vec![done(&a.id, lease(&ja)), done(&b.id, lease(&jb))],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        again
            .iter()
            .all(|x| x.error.is_none() && x.state == JobState::Succeeded as i32)
    );
    assert_eq!(s.get(&b.id).await.state, JobState::Succeeded as i32);
    // A bad item rejects the call: an oversized traceparent, named by its index.
    let mut bad = done(&b.id, lease(&jb));
    bad.traceparent = "x".repeat(200);
    let e = w
        .complete_jobs(pb::CompleteJobsRequest { completions: vec![bad] })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["completions[0].traceparent".to_string()]);
    s.stop().await;
}

/// CreateJobs writes a whole batch in one step; an idempotency key repeated inside the batch
/// yields one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_jobs_writes_the_batch_and_honours_idempotency_inside_it() {
    let s = Stack::start().await;
    let mut api = s.jobs().await;
    let req = |key: &str, delay: bool| -> pb::CreateJobRequest {
        let mut v = json!({"queue":"many","type":"noop","payload":{"k":key},"options":{"idempotencyKey":key}});
        if delay {
            v["options"]["delay"] = json!("60s");
        }
        serde_json::from_value(v).unwrap()
    };
    let r = api
        .create_jobs(pb::CreateJobsRequest {
            jobs: vec![req("k1", false), req("k2", true), req("k1", false)],
            ids_only: false,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(r.iter().map(|x| x.created).collect::<Vec<_>>(), vec![true, true, false]);
    let ids: Vec<String> = r.iter().map(|x| x.job.clone().unwrap().id).collect();
    assert_eq!(ids[0], ids[2]);
    assert_eq!(s.get(&ids[0]).await.state, JobState::Queued as i32);
    assert_eq!(s.get(&ids[1]).await.state, JobState::Scheduled as i32);
    // What CreateJobs answers is exactly what was stored (and, for the repeat, the first job).
    for (i, id) in ids.iter().enumerate() {
        let stored = s.get(id).await;
        assert_eq!(r[i].job.as_ref(), Some(&stored), "job {i}");
    }
    // ids_only: the same answers with nothing but the ids; the repeated key names the job
    // it already made.
    let brief = api
        .create_jobs(pb::CreateJobsRequest {
            jobs: vec![req("k1", false), req("k3", false)],
            ids_only: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(brief.iter().map(|x| x.created).collect::<Vec<_>>(), vec![false, true]);
    let brief: Vec<pb::Job> = brief.into_iter().map(|x| x.job.unwrap()).collect();
    assert_eq!(
        brief[0],
        pb::Job {
            id: ids[0].clone(),
            ..Default::default()
        }
    );
    assert_eq!(
        brief[1],
        pb::Job {
            id: brief[1].id.clone(),
            ..Default::default()
        }
    );
    let new = s.get(&brief[1].id).await;
    assert_eq!((new.queue.as_str(), new.state), ("many", JobState::Queued as i32));
    let q = api
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues
        .into_iter()
        .find(|q| q.name == "many")
        .unwrap();
    assert_eq!((q.depth, q.scheduled), (2, 1), "k1 and k3 queued, k2 delayed");
    s.stop().await;
}
