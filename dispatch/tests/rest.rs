//! The REST gateway over real HTTP, against real Redis, NATS, dispatch and workers: every
//! route, the proto3 JSON mapping, SSE, and every row of the error table in docs/api.md.

use dispatch_testkit as common;

use std::time::Duration;

use common::{Stack, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

struct Http {
    base: String,
    client: reqwest::Client,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Http {
    fn new(s: &Stack) -> Http {
        Http {
            base: format!("http://{}", s.http),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some((content_type, bytes)) = body {
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            req = req.body(bytes);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
        Reply { status, headers, json }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(("application/json", body.to_string().into_bytes())))
            .await
    }

    /// Follows `/api/job/{id}/events` until the server ends the stream; the `data:` JSON of
    /// each event, and the `event:` names seen.
    async fn events(&self, id: &str) -> (Vec<Value>, Vec<String>) {
        let mut resp = self
            .client
            .get(format!("{}/api/job/{id}/events", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        tokio::time::timeout(T, async {
            while let Some(chunk) = resp.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("the SSE stream ends after the terminal event");
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let names = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: ").or_else(|| l.strip_prefix("event:")))
            .map(str::to_string)
            .collect();
        (data, names)
    }

    async fn wait_state(&self, id: &str, state: &str) -> Value {
        eventually(&format!("job {id} {state}"), T, || async {
            let r = self.get(&format!("/api/job/{id}")).await;
            (r.json["job"]["state"] == state).then_some(r.json["job"].clone())
        })
        .await
    }
}

/// Asserts the Google JSON error shape with this HTTP and gRPC status.
fn assert_error(r: &Reply, http: u16, status: &str) {
    assert_eq!(r.status.as_u16(), http, "{}", r.json);
    assert_eq!(r.headers["content-type"], "application/json", "{}", r.json);
    assert_eq!(r.json["error"]["code"], http, "{}", r.json);
    assert_eq!(r.json["error"]["status"], status, "{}", r.json);
    assert!(
        r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.json
    );
}

fn violations(r: &Reply) -> Vec<String> {
    r.json["error"]["details"][0]["fieldViolations"]
        .as_array()
        .map(|v| v.iter().map(|f| f["field"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_by_curl_alone_create_read_follow_and_same_data_as_grpc() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let http = Http::new(&s);

    let r = http
        .post(
            "/api/job",
            json!({"queue": "default", "type": "noop", "payload": {"objectId": "x", "n": 3},
                   "options": {"timeout": "1.5s", "labels": {"team": "a"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["created"], true);
    let job = &r.json["job"];
    let id = job["id"].as_str().unwrap().to_string();
    // Proto3 JSON: camelCase, enums by name, durations as "1.5s", payload as plain JSON.
    assert_eq!(job["state"], "JOB_STATE_QUEUED");
    assert_eq!(job["timeout"], "1.500s");
    assert_eq!(job["payload"], json!({"objectId": "x", "n": 3}));
    assert_eq!(job["labels"], json!({"team": "a"}));
    assert!(job["createdAt"].as_str().unwrap().starts_with("20"), "RFC 3339: {job}");
    assert_eq!(job["maxAttempts"], 3);

    // Follow it over SSE to the end: one event per transition, the stream then closes.
    let (events, names) = http.events(&id).await;
    assert!(names.iter().all(|n| n != "error"), "{names:?}");
    let states: Vec<&str> = events.iter().map(|e| e["event"]["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"],
        "{events:?}"
    );
    for e in &events {
        assert_eq!(e["event"]["jobId"], id);
        // uint64 is a JSON string in the proto3 mapping.
        assert!(e["event"]["sequence"].is_string(), "{e}");
    }

    // REST and gRPC return the same data for the same job.
    let rest = http.get(&format!("/api/job/{id}")).await;
    assert_eq!(rest.status, StatusCode::OK);
    let grpc = s.get(&id).await;
    let mut grpc_json = serde_json::to_value(&grpc).unwrap();
    dispatch_client::json::normalize_numbers(&mut grpc_json);
    assert_eq!(rest.json["job"], grpc_json);
    assert_eq!(rest.json["job"]["state"], "JOB_STATE_SUCCEEDED");

    // Queues and listing.
    let queues = http.get("/api/queues").await;
    assert_eq!(queues.status, StatusCode::OK);
    let default = queues.json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .cloned()
        .unwrap();
    assert_eq!(default["succeeded"], "1", "uint64 counts are strings: {default}");
    let list = http
        .get("/api/jobs?queue=default&state=JOB_STATE_SUCCEEDED&pageSize=10")
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.json);
    assert_eq!(list.json["jobs"][0]["id"], id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_retry_batch_and_pagination_over_rest() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let http = Http::new(&s);

    // Cancel a delayed job; the reason is recorded.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "default", "type": "noop", "options": {"delay": "60s"}}),
        )
        .await;
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.json["job"]["state"], "JOB_STATE_SCHEDULED");
    let c = http
        .post(&format!("/api/job/{id}:cancel"), json!({"reason": "not needed"}))
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.json);
    assert_eq!(c.json["job"]["state"], "JOB_STATE_CANCELLED");
    // Cancelling again is a no-op; cancelling a finished job is refused with 412.
    let again = http.post(&format!("/api/job/{id}:cancel"), json!({})).await;
    assert_eq!(again.status, StatusCode::OK);
    let r = http.post("/api/job", json!({"queue": "default", "type": "noop"})).await;
    let done_id = r.json["job"]["id"].as_str().unwrap().to_string();
    http.wait_state(&done_id, "JOB_STATE_SUCCEEDED").await;
    let late = http.post(&format!("/api/job/{done_id}:cancel"), json!({})).await;
    assert_error(&late, 412, "FAILED_PRECONDITION");

    // Retry a failed job: it runs again with a fresh budget.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "default", "type": "fail", "payload": {"probability": 1},
                   "options": {"maxAttempts": 1}}),
        )
        .await;
    let failed_id = r.json["job"]["id"].as_str().unwrap().to_string();
    let failed = http.wait_state(&failed_id, "JOB_STATE_FAILED").await;
    assert_eq!(failed["attempt"], 1);
    // No body at all (curl -X POST) is the same as {}.
    let retried = http.send("POST", &format!("/api/job/{failed_id}:retry"), None).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.json);
    assert_eq!(retried.json["job"]["attempt"], 2);
    let failed_again = http.wait_state(&failed_id, "JOB_STATE_FAILED").await;
    assert_eq!(failed_again["attempt"], 2);

    // A batch, then page through the queue two at a time.
    let jobs: Vec<Value> = (0..5)
        .map(|i| json!({"queue": "pages", "type": "noop", "payload": {"i": i}}))
        .collect();
    let b = http.post("/api/jobs:batch", json!({ "jobs": jobs })).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.json);
    assert_eq!(b.json["results"].as_array().unwrap().len(), 5);
    // idsOnly: each result's job is its id alone.
    let brief = http
        .post(
            "/api/jobs:batch",
            json!({"jobs": [{"queue": "brief", "type": "noop"}], "idsOnly": true}),
        )
        .await;
    assert_eq!(brief.status, StatusCode::OK, "{}", brief.json);
    let id = brief.json["results"][0]["job"]["id"].as_str().unwrap();
    assert_eq!(brief.json["results"][0], json!({"job": {"id": id}, "created": true}));
    assert_eq!(http.get(&format!("/api/job/{id}")).await.json["job"]["queue"], "brief");
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = http
            .get(&format!("/api/jobs?queue=pages&page_size=2&pageToken={token}"))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.json);
        for j in page.json["jobs"].as_array().unwrap() {
            seen.push(j["payload"]["i"].as_i64().unwrap());
        }
        match page.json["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_can_be_a_plain_http_loop() {
    let s = Stack::start().await;
    let http = Http::new(&s);
    // No worker serves queue "http": this test is the worker.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "http", "type": "resize", "payload": {"w": 10}}),
        )
        .await;
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    let attempt = r.json["job"]["attempt"].clone();

    let claim = http
        .post(
            &format!("/api/job/{id}:claim"),
            json!({"attempt": attempt, "workerId": "curl-1", "leaseDuration": "10s"}),
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.json);
    let job = &claim.json["job"];
    assert_eq!(job["state"], "JOB_STATE_RUNNING");
    assert_eq!(job["payload"], json!({"w": 10}));
    let lease = job["lease"]["leaseId"].as_str().unwrap().to_string();

    let beat = http
        .post(
            &format!("/api/job/{id}:heartbeat"),
            json!({"leaseId": lease, "progress": {"pct": 50}}),
        )
        .await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.json);
    assert!(beat.json["leaseDeadline"].is_string());
    assert_eq!(
        http.get(&format!("/api/job/{id}")).await.json["job"]["progress"],
        json!({"pct": 50})
    );

    // A second claim of the same attempt, and a report with a made-up lease: 412.
    let twice = http
        .post(
            &format!("/api/job/{id}:claim"),
            json!({"attempt": attempt, "workerId": "curl-2"}),
        )
        .await;
    assert_error(&twice, 412, "FAILED_PRECONDITION");
    let stale = http
        .post(
            &format!("/api/job/{id}:complete"),
            json!({"leaseId": "00000000-0000-0000-0000-000000000000"}),
        )
        .await;
    assert_error(&stale, 412, "FAILED_PRECONDITION");

    let done = http
        .post(
            &format!("/api/job/{id}:complete"),
            json!({"leaseId": lease, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    assert_eq!(done.json["job"]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(done.json["job"]["result"], json!({"ok": true}));
    // The lease is gone now: failing it is a stale report.
    let late = http
        .post(
            &format!("/api/job/{id}:fail"),
            json!({"leaseId": lease, "error": "late"}),
        )
        .await;
    assert_error(&late, 412, "FAILED_PRECONDITION");

    // FailJob through REST, retryable with a delay: back to SCHEDULED on attempt 2.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "http", "type": "resize", "options": {"maxAttempts": 2}}),
        )
        .await;
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    let claim = http
        .post(
            &format!("/api/job/{id}:claim"),
            json!({"attempt": 1, "workerId": "curl-1"}),
        )
        .await;
    let lease = claim.json["job"]["lease"]["leaseId"].as_str().unwrap().to_string();
    let f = http
        .post(
            &format!("/api/job/{id}:fail"),
            json!({"leaseId": lease, "error": "disk full", "retryable": true, "retryDelay": "30s"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::OK, "{}", f.json);
    assert_eq!(f.json["job"]["state"], "JOB_STATE_SCHEDULED");
    assert_eq!(f.json["job"]["error"]["message"], "disk full");

    // The batch routes: claim two jobs (and one stale claim) in one call, complete them in one.
    let mut created = Vec::new();
    for i in 0..2 {
        let body = json!({"queue": "http", "type": "resize", "payload": {"i": i}});
        created.push(
            http.post("/api/job", body).await.json["job"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let claims = http
        .post(
            "/api/jobs:claim",
            json!({"claims": [
                {"jobId": created[0], "attempt": 1, "workerId": "curl-b"},
                {"jobId": created[1], "attempt": 1, "workerId": "curl-b"},
                {"jobId": created[1], "attempt": 1, "workerId": "curl-b"}
            ]}),
        )
        .await;
    assert_eq!(claims.status, StatusCode::OK, "{}", claims.json);
    let results = claims.json["results"].as_array().unwrap();
    assert_eq!(results[0]["job"]["payload"], json!({"i": 0}));
    assert_eq!(results[1]["job"]["state"], "JOB_STATE_RUNNING");
    assert_eq!(results[2]["error"]["code"], 9, "{}", claims.json);
    assert!(results[2].get("job").is_none());
    let done = http
        .post(
            "/api/jobs:complete",
            json!({"completions": [
                {"jobId": created[0], "leaseId": results[0]["job"]["lease"]["leaseId"], "result": {"n": 0}},
                {"jobId": created[1], "leaseId": "00000000-0000-0000-0000-000000000000"}
            ]}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    assert_eq!(done.json["results"][0]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(done.json["results"][1]["error"]["code"], 9);
    assert_eq!(
        http.get(&format!("/api/job/{}", created[0])).await.json["job"]["result"],
        json!({"n": 0})
    );
    // A bad item: 400 naming it, nothing written.
    let bad = http
        .post(
            "/api/jobs:claim",
            json!({"claims": [{"jobId": created[1], "attempt": 0, "workerId": "x"}]}),
        )
        .await;
    assert_error(&bad, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&bad), vec!["claims[0].attempt".to_string()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_error_table_holds_and_bad_input_writes_nothing() {
    let s = Stack::start_with(|c| {
        c.http.max_body_bytes = 4096;
        c.jobs.max_inflight_creates = 3;
    })
    .await;
    let http = Http::new(&s);

    // 400: field violations, all reported, in the BadRequest detail.
    let r = http.post("/api/job", json!({"queue": "", "type": ""})).await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(
        r.json["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    let fields = violations(&r);
    assert!(
        fields.contains(&"queue".to_string()) && fields.contains(&"type".to_string()),
        "{fields:?}"
    );

    // 400: a value of the wrong JSON type names its path.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "q", "type": "t", "options": {"timeout": 5}}),
        )
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["options.timeout"], "{}", r.json);

    // 400: malformed JSON, and JSON that is not an object.
    let r = http
        .send("POST", "/api/job", Some(("application/json", b"{\"queue\": ".to_vec())))
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert!(r.json["error"]["message"].as_str().unwrap().contains("malformed JSON"));
    let r = http
        .send("POST", "/api/job", Some(("application/json", b"[1,2]".to_vec())))
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");

    // 400: unknown query parameter, bad enum, bad number in the query string.
    assert_error(&http.get("/api/jobs?colour=red").await, 400, "INVALID_ARGUMENT");
    let r = http.get("/api/jobs?state=SOMETIMES").await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["state"]);
    assert_error(&http.get("/api/jobs?pageSize=lots").await, 400, "INVALID_ARGUMENT");
    // 400: a malformed job id in the path.
    assert_error(&http.get("/api/job/not%20an%20id").await, 400, "INVALID_ARGUMENT");

    // 404: unknown job, for reads, actions and SSE.
    let missing = "0190a000-0000-7000-8000-000000000000";
    assert_error(&http.get(&format!("/api/job/{missing}")).await, 404, "NOT_FOUND");
    assert_error(
        &http.post(&format!("/api/job/{missing}:cancel"), json!({})).await,
        404,
        "NOT_FOUND",
    );
    assert_error(&http.get(&format!("/api/job/{missing}/events")).await, 404, "NOT_FOUND");

    // 404: unknown path, inside and outside /api.
    assert_error(&http.get("/api/nothing").await, 404, "NOT_FOUND");
    assert_error(&http.get("/ui/nothing").await, 404, "NOT_FOUND");
    assert_error(
        &http.post(&format!("/api/job/{missing}:explode"), json!({})).await,
        405,
        "UNIMPLEMENTED",
    );

    // 405: a known path with the wrong method, with Allow.
    let r = http.send("DELETE", &format!("/api/job/{missing}"), None).await;
    assert_error(&r, 405, "UNIMPLEMENTED");
    assert_eq!(r.headers["allow"], "GET");
    let r = http.send("PUT", "/api/job", None).await;
    assert_error(&r, 405, "UNIMPLEMENTED");
    assert_eq!(r.headers["allow"], "POST");
    let r = http.send("POST", "/api/openapi.json", None).await;
    assert_error(&r, 405, "UNIMPLEMENTED");

    // 415: a body that is not JSON, or JSON without saying so.
    let r = http
        .send(
            "POST",
            "/api/job",
            Some(("text/plain", b"{\"queue\":\"q\",\"type\":\"t\"}".to_vec())),
        )
        .await;
    assert_error(&r, 415, "INVALID_ARGUMENT");
    let r = http
        .send(
            "POST",
            "/api/job",
            Some(("", b"{\"queue\":\"q\",\"type\":\"t\"}".to_vec())),
        )
        .await;
    assert_error(&r, 415, "INVALID_ARGUMENT");

    // 413: a body over http.max_body_bytes (declared length and streamed).
    let big = json!({"queue": "q", "type": "t", "payload": {"blob": "x".repeat(8000)}});
    assert_error(&http.post("/api/job", big.clone()).await, 413, "INVALID_ARGUMENT");
    let chunks = futures::stream::iter(
        big.to_string()
            .into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/job", http.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 429: more jobs at once than admission allows, with Retry-After.
    let jobs: Vec<Value> = (0..5).map(|_| json!({"queue": "q", "type": "t"})).collect();
    let r = http.post("/api/jobs:batch", json!({ "jobs": jobs })).await;
    assert_error(&r, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(r.headers["retry-after"], "1");

    // None of the refused requests wrote anything.
    let all = http.get("/api/jobs").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json, json!({}), "no job was written: {}", all.json);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_is_served_matches_docs_and_covers_every_route() {
    let s = Stack::start().await;
    let http = Http::new(&s);
    let served = http.get("/api/openapi.json").await;
    assert_eq!(served.status, StatusCode::OK);
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served.json == checked_in,
        "docs/openapi.json is stale: regenerate with `cargo run -p dispatch -- --print-openapi > docs/openapi.json`"
    );
    // Every generated route is documented, with its method.
    for r in dispatch::gateway::ROUTES {
        let op = &served.json["paths"][r.template][r.http_method.to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from the OpenAPI document",
            r.http_method,
            r.template
        );
    }
    let html = reqwest::get(format!("{}/api/docs", http.base)).await.unwrap();
    assert_eq!(html.status(), StatusCode::OK);
    let page = html.text().await.unwrap();
    assert!(page.contains("/api/job/{id}:cancel") && page.contains("JobState"));

    // Trace context and identity headers reach the gRPC code (the record keeps traceparent).
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = http
        .client
        .post(format!("{}/api/job", http.base))
        .header("content-type", "application/json; charset=utf-8")
        .header("traceparent", tp)
        .body(json!({"queue": "default", "type": "noop"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.json_value().await["job"]["id"].as_str().unwrap().to_string();
    let store = s.store().await;
    let rec = store.get(&id).await.unwrap();
    assert_eq!(rec.traceparent, tp);
    s.stop().await;
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_event_stream_does_not_hold_up_shutdown() {
    let s = Stack::start().await;
    let http = Http::new(&s);
    // No worker on this queue: the job stays QUEUED and the stream stays open.
    let r = http.post("/api/job", json!({"queue": "idle", "type": "noop"})).await;
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    let mut resp = http
        .client
        .get(format!("{}/api/job/{id}/events", http.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let first = tokio::time::timeout(T, resp.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("JOB_STATE_QUEUED"));
    // Shutdown ends the stream, and finishes although a client is still connected.
    tokio::time::timeout(Duration::from_secs(10), s.stop())
        .await
        .expect("shutdown finished with an SSE client connected");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ended at shutdown");
}

/// The description of the first field violation.
fn first_description(r: &Reply) -> String {
    r.json["error"]["details"][0]["fieldViolations"][0]["description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Pass: the rough edges a newcomer hit are gone. A value of the wrong kind says what the
/// field takes (no parser internals); violations name fields as the caller wrote them; a page
/// token dispatch did not hand out is refused; ListJobs filters by type and labels; ListQueues
/// shows zero counts; pause and resume work over REST and a queue's pause shows in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_speak_the_callers_language_and_listings_filter() {
    let s = Stack::start().await;
    let http = Http::new(&s);

    let r = http
        .post(
            "/api/job",
            json!({"queue": "q", "type": "t", "options": {"maxAttempts": -1}}),
        )
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["options.maxAttempts"]);
    assert_eq!(first_description(&r), "must be a whole number from 0 to 4294967295");
    let r = http.get("/api/jobs?pageSize=-1").await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["pageSize"]);
    assert!(!first_description(&r).contains("invalid digit"), "{}", r.json);
    // Service-side checks: named in the caller's spelling, camelCase or snake_case.
    let r = http
        .post(
            "/api/job",
            json!({"queue": "q", "type": "t", "options": {"maxAttempts": 5000}}),
        )
        .await;
    assert_eq!(violations(&r), vec!["options.maxAttempts"], "{}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("options.maxAttempts")
    );
    let r = http
        .post(
            "/api/job",
            json!({"queue": "q", "type": "t", "options": {"max_attempts": 5000}}),
        )
        .await;
    assert_eq!(violations(&r), vec!["options.max_attempts"], "{}", r.json);
    let r = http.get("/api/jobs?pageToken=garbage").await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["pageToken"]);
    let r = http.get("/api/jobs?labels=nokey").await;
    assert_eq!(violations(&r), vec!["labels[0]"], "{}", r.json);

    // Filters: type, labels (every one must match), both; pages through a filter.
    let mut ids = std::collections::HashMap::new();
    for (name, ty, env, team) in [
        ("a", "report", "prod", "x"),
        ("b", "report", "dev", "x"),
        ("c", "email", "prod", "y"),
        ("d", "report", "prod", "y"),
    ] {
        let r = http
            .post(
                "/api/job",
                json!({"queue": "lq", "type": ty, "options": {"labels": {"env": env, "team": team}, "delay": "3600s"}}),
            )
            .await;
        ids.insert(r.json["job"]["id"].as_str().unwrap().to_string(), name);
    }
    let names = |r: &Reply| -> Vec<&str> {
        let mut v: Vec<&str> = r.json["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| ids[j["id"].as_str().unwrap()])
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&http.get("/api/jobs?queue=lq&type=report").await),
        ["a", "b", "d"]
    );
    assert_eq!(
        names(&http.get("/api/jobs?queue=lq&labels=env=prod").await),
        ["a", "c", "d"]
    );
    assert_eq!(
        names(&http.get("/api/jobs?queue=lq&labels=env=prod&labels=team=y").await),
        ["c", "d"]
    );
    assert_eq!(
        names(&http.get("/api/jobs?queue=lq&type=report&labels=team=y").await),
        ["d"]
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = http
            .get(&format!("/api/jobs?queue=lq&type=report&pageSize=1&pageToken={token}"))
            .await;
        seen.extend(names(&r).into_iter().map(str::to_string));
        token = r.json["nextPageToken"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "d"]);

    // ListQueues: every count, zeros included; pause and resume over REST.
    let r = http.get("/api/queues").await;
    let lq = r.json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "lq")
        .unwrap()
        .clone();
    assert_eq!(lq["scheduled"], "4", "{lq}");
    for field in ["depth", "running", "succeeded", "failed", "cancelled"] {
        assert_eq!(lq[field], "0", "{field} in {lq}");
    }
    assert_eq!(lq["paused"], false);
    let r = http.post("/api/queue/lq:pause", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["queue"]["paused"], true);
    assert!(r.json["queue"]["pausedAt"].is_string());
    let r = http.post("/api/queue/bad%20name:pause", json!({})).await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(violations(&r), vec!["name"]);
    let r = http.post("/api/queue/lq:resume", json!({})).await;
    assert_eq!(r.json["queue"]["paused"], false, "{}", r.json);
    let r = http.get("/api/stats?queue=lq&minutes=3").await;
    assert_eq!(r.json["minutes"].as_array().unwrap().len(), 3, "{}", r.json);
    assert_eq!(r.json["minutes"][0]["succeeded"], "0");
    let r = http.get("/api/stats?minutes=5000").await;
    assert_eq!(violations(&r), vec!["minutes"]);
    s.stop().await;
}
