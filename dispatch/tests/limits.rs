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

/// The delay a RESOURCE_EXHAUSTED refusal's RetryInfo asks for.
fn retry_delay(refusal: &tonic::Status) -> Duration {
    refusal
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo")
}

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
        ids_only: false,
    };
    jobs.create_jobs(authed(&a, batch)).await.unwrap();
    let err = jobs
        .create_job(authed(&a, job("rate", serde_json::json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let wait = retry_delay(&err);
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

/// Reads from `conn` until the server closes it (Ok(bytes read)), or gives up after `within`.
async fn read_until_closed(conn: &mut tokio::net::TcpStream, within: Duration) -> Result<Vec<u8>, &'static str> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return Err("still open"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Pass: a request whose headers never finish is cut off after `http.header_timeout_ms`; a
/// body that never finishes gets 408 after `http.body_timeout_ms`; a keep-alive connection
/// with nothing in flight is closed after `http.idle_timeout_ms`, while an SSE watch that
/// stays quiet longer than that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_header_body_and_idle_timeouts() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start_with(|c| {
        c.http.header_timeout_ms = 300;
        c.http.body_timeout_ms = 300;
        c.http.idle_timeout_ms = 600;
        c.http.sse_keep_alive_ms = 60_000;
    })
    .await;

    let mut slow_headers = tokio::net::TcpStream::connect(s.http).await.unwrap();
    slow_headers
        .write_all(b"GET /api/queues HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut slow_headers, Duration::from_secs(10))
        .await
        .expect("unfinished headers: connection closed");

    let mut slow_body = tokio::net::TcpStream::connect(s.http).await.unwrap();
    slow_body
        .write_all(b"POST /api/job HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"queue\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            match slow_body.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let mut idle = tokio::net::TcpStream::connect(s.http).await.unwrap();
    idle.write_all(b"GET /api/queues HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("idle keep-alive connection closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "served before closing"
    );

    // A watch quiet for longer than the idle timeout stays open: a request is in flight.
    let job = s
        .create(serde_json::json!({"queue": "idle", "type": "noop"}))
        .await
        .job
        .unwrap();
    let mut watch = tokio::net::TcpStream::connect(s.http).await.unwrap();
    watch
        .write_all(format!("GET /api/job/{}/events HTTP/1.1\r\nHost: x\r\n\r\n", job.id).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_until_closed(&mut watch, Duration::from_millis(2000)).await,
        Err("still open"),
        "a quiet watch stream must outlive the idle timeout"
    );
    s.stop().await;
}

/// Pass: with `limits.http_connections` = 2 and two connections open, a third is not served
/// until one of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped() {
    let s = Stack::start_with(|c| c.limits.http_connections = 2).await;
    let url = format!("http://{}/api/queues", s.http);
    let held: Vec<reqwest::Client> = (0..2)
        .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap())
        .collect();
    for c in &held {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    }
    let third = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    assert!(third.get(&url).send().await.is_err(), "a third connection must wait");
    drop(held);
    eventually("a slot frees when a connection closes", T, || {
        let url = url.clone();
        async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .ok()?;
            (c.get(&url).send().await.ok()?.status() == 200).then_some(())
        }
    })
    .await;
    s.stop().await;
}

/// Pass: with `limits.worker_calls` = 1 and Redis paused for writes, of two worker calls made
/// at once one takes the only turn (and waits on Redis) and the other, after
/// `limits.worker_admission_wait_ms`, gets RESOURCE_EXHAUSTED with a RetryInfo; once Redis
/// resumes the first is served, and the refused one is served when made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_calls_are_admitted_up_to_the_limit() {
    let s = Stack::start_with(|c| {
        c.limits.worker_calls = 1;
        c.limits.worker_admission_wait_ms = 200;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = s.create(serde_json::json!({"queue": "adm", "type": "noop"})).await.job;
        ids.push(job.unwrap().id);
    }
    let claim = |id: &str| pb::ClaimJobRequest {
        job_id: id.to_string(),
        attempt: 1,
        worker_id: "w".into(),
        ..Default::default()
    };
    // Writes (and so claims) wait until CLIENT UNPAUSE below, 10 s at most.
    dispatch_testkit::redis_cli(s.redis_port, &["CLIENT", "PAUSE", "10000", "WRITE"]);
    let mut calls = Vec::new();
    for id in &ids {
        let (mut w, req) = (s.workers_api().await, claim(id));
        calls.push(tokio::spawn(async move { w.claim_job(req).await }));
    }
    let (second, _, rest) = futures::future::select_all(calls).await;
    let refused = second
        .unwrap()
        .expect_err("the call that found the turn taken is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let wait = retry_delay(&refused);
    assert!(wait > Duration::ZERO, "{wait:?}");
    assert!(
        refused.message().contains("limits.worker_calls"),
        "{}",
        refused.message()
    );
    dispatch_testkit::redis_cli(s.redis_port, &["CLIENT", "UNPAUSE"]);
    let first = rest.into_iter().next().unwrap();
    let served = first
        .await
        .unwrap()
        .expect("the call holding the turn is served once Redis resumes");
    let served_id = served.into_inner().job.unwrap().id;
    let other = ids.iter().find(|id| **id != served_id).unwrap();
    s.workers_api()
        .await
        .claim_job(claim(other))
        .await
        .expect("the refused call is served when made again");
    s.stop().await;
}

/// Pass: with `http.metrics_addr`, `/metrics` answers there and no longer on the API port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = dispatch_testkit::free_port();
    let s = Stack::start_with(move |c| c.http.metrics_addr = format!("127.0.0.1:{port}")).await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("dispatch_"), "{}", &text[..text.len().min(200)]);
    let api = reqwest::get(format!("http://{}/metrics", s.http)).await.unwrap();
    assert_eq!(api.status(), 404);
    s.stop().await;
}

/// Pass: with `limits.grpc_connections` = 1 and one gRPC connection open, a second client is
/// not served until the first connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_capped() {
    let s = Stack::start_with(|c| c.limits.grpc_connections = 1).await;
    let mut first = s.jobs().await;
    first.list_queues(pb::ListQueuesRequest {}).await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(700), async {
        let mut c = pb::job_service_client::JobServiceClient::connect(s.url()).await.ok()?;
        c.list_queues(pb::ListQueuesRequest {}).await.ok()
    })
    .await;
    assert!(
        !matches!(second, Ok(Some(_))),
        "a second connection must wait while the first is open"
    );
    drop(first);
    let url = s.url();
    eventually("a slot frees when the first connection closes", T, || {
        let url = url.clone();
        async move {
            let mut c = pb::job_service_client::JobServiceClient::connect(url).await.ok()?;
            c.list_queues(pb::ListQueuesRequest {}).await.ok()
        }
    })
    .await;
    s.stop().await;
}

/// Pass: with `http.cors_origins`, a preflight from a listed origin gets 204 with the allowed
/// methods and headers, and its requests carry `Access-Control-Allow-Origin`; another origin
/// gets no CORS header (the browser then refuses the response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    let s = Stack::start_with(|c| c.http.cors_origins = vec!["http://ops.example:3000".into()]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/job", s.http);
    let pre = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://ops.example:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "http://ops.example:3000");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let created = http
        .post(&url)
        .header("origin", "http://ops.example:3000")
        .header("content-type", "application/json")
        .body(r#"{"queue":"cors","type":"noop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    assert_eq!(
        created.headers()["access-control-allow-origin"],
        "http://ops.example:3000"
    );
    let other = http
        .get(format!("http://{}/api/queues", s.http))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let other_pre = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other_pre.headers().get("access-control-allow-origin").is_none());
    s.stop().await;
}

/// Pass: with `limits.grpc_max_concurrent_streams` = 2, two open WatchJob streams fill a
/// connection: a third call on it waits, while a call on another connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_per_connection_are_capped() {
    let s = Stack::start_with(|c| c.limits.grpc_max_concurrent_streams = 2).await;
    let mut jobs = s.jobs().await;
    // No worker serves this queue: the job stays QUEUED and its watches stay open.
    let id = jobs
        .create_job(job("streams", serde_json::json!({})))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut j = jobs.clone();
        open.push(
            j.watch_job(pb::WatchJobRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let third = tokio::time::timeout(
        Duration::from_millis(700),
        jobs.get_job(pb::GetJobRequest { id: id.clone() }),
    )
    .await;
    assert!(third.is_err(), "a third stream on a full connection must wait");
    let mut other = s.jobs().await;
    other
        .get_job(pb::GetJobRequest { id: id.clone() })
        .await
        .expect("another connection is served");
    drop(open);
    eventually("a stream slot frees when a watch closes", T, || {
        let (mut j, id) = (jobs.clone(), id.clone());
        async move { j.get_job(pb::GetJobRequest { id }).await.ok() }
    })
    .await;
    s.stop().await;
}
