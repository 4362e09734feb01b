//! Limits against a real stack: job creation rate per key (gRPC RetryInfo, HTTP 429 with
//! Retry-After), watch streams per key, and the ListJobs byte budget.

use std::collections::HashSet;
use std::time::Duration;

use dispatch::auth::Role;
use dispatch_client::pb;
use dispatch_testkit::{Stack, authed, eventually};
use tonic::Code;
use tonic_types::StatusExt;

const T: Duration = Duration::from_secs(30);

fn job(queue: &str, payload: serde_json::Value) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        queue: queue.into(),
        r#type: "noop".into(),
        payload: Some(dispatch_client::json::to_proto(&payload)),
        ..Default::default()
    }
}

/// Pass: a key that spent its burst is refused with RESOURCE_EXHAUSTED and a RetryInfo delay
/// (HTTP 429 with Retry-After); another key is not affected; after the delay the key creates
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_creation_is_rate_limited_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let a = dispatch::auth::create_key(&file, "a", Role::Producer).unwrap();
    let b = dispatch::auth::create_key(&file, "b", Role::Producer).unwrap();
    let path = file.display().to_string();
    let s = Stack::start_with(|c| {
        c.auth.keys_file = path;
        c.limits.create_per_key_per_s = 10;
        c.limits.create_burst_per_key = 10;
    })
    .await;
    let mut jobs = s.jobs().await;
    let batch = pb::CreateJobsRequest {
        jobs: (0..10).map(|_| job("rate", serde_json::json!({}))).collect(),
    };
    jobs.create_jobs(authed(&a, batch)).await.unwrap();
    let err = jobs
        .create_job(authed(&a, job("rate", serde_json::json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let wait = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    let http = reqwest::Client::new()
        .post(format!("http://{}/api/job", s.http))
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .body(r#"{"queue":"rate","type":"noop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    assert_eq!(http.headers()["retry-after"], "1");
    jobs.create_job(authed(&b, job("rate", serde_json::json!({}))))
        .await
        .expect("another key has its own bucket");
    eventually("key a to be allowed again", T, || {
        let mut jobs = jobs.clone();
        let req = authed(&a, job("rate", serde_json::json!({})));
        async move { jobs.create_job(req).await.ok() }
    })
    .await;
    s.stop().await;
}

/// Pass: a key may hold `limits.watch_streams_per_key` watch streams; one more is
/// RESOURCE_EXHAUSTED, and closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let viewer = dispatch::auth::create_key(&file, "v", Role::Viewer).unwrap();
    let producer = dispatch::auth::create_key(&file, "p", Role::Producer).unwrap();
    let path = file.display().to_string();
    let s = Stack::start_with(|c| {
        c.auth.keys_file = path;
        c.limits.watch_streams_per_key = 2;
    })
    .await;
    let mut jobs = s.jobs().await;
    // No worker serves this queue: the job stays QUEUED and its watch stays open.
    let id = jobs
        .create_job(authed(&producer, job("watched", serde_json::json!({}))))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let watch = || {
        let mut jobs = jobs.clone();
        let req = authed(&viewer, pb::WatchJobRequest { id: id.clone() });
        async move { jobs.watch_job(req).await }
    };
    let first = watch().await.unwrap();
    let _second = watch().await.unwrap();
    assert_eq!(watch().await.unwrap_err().code(), Code::ResourceExhausted);
    drop(first);
    eventually("a place to be freed", T, || {
        let w = watch();
        async move { w.await.ok() }
    })
    .await;
    s.stop().await;
}

/// Pass: with a 64 KiB reply budget, pages of jobs with 4 KiB payloads end early with a
/// token, each page within the budget, and paging through returns every job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replies_stay_within_their_byte_budget() {
    let s = Stack::start_with(|c| c.limits.list_reply_bytes = 64 * 1024).await;
    let mut jobs = s.jobs().await;
    let big = "x".repeat(4096);
    let mut created = HashSet::new();
    for _ in 0..40 {
        let j = jobs
            .create_job(job("budget", serde_json::json!({ "blob": big })))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        created.insert(j.id);
    }
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = jobs
            .list_jobs(pb::ListJobsRequest {
                queue: "budget".into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(
            prost::Message::encoded_len(&page) <= 64 * 1024 + 1024,
            "page {pages} over budget"
        );
        for j in page.jobs {
            assert!(seen.insert(j.id), "a job repeated");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 3, "40 jobs of 4 KiB need 3 pages of 64 KiB, got {pages}");
    assert_eq!(seen, created);
    s.stop().await;
}
