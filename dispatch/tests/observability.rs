//! Traces, metrics and logs, end to end: dispatch and worker run as processes exporting to a
//! real OTLP/gRPC receiver started here; `/metrics` is parsed with a Prometheus text parser.

use dispatch_testkit as common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Proc, Stack, eventually, free_port};
use dispatch_client::pb::{self, JobState};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    let attrs = sp
                        .attributes
                        .iter()
                        .map(|a| {
                            let v = match a.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(AnyValue::StringValue(s)) => s,
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                Some(AnyValue::BoolValue(b)) => b.to_string(),
                                other => format!("{other:?}"),
                            };
                            (a.key.clone(), v)
                        })
                        .collect();
                    got.push(Got {
                        service: service.clone(),
                        name: sp.name.clone(),
                        trace_id: hex(&sp.trace_id),
                        span_id: hex(&sp.span_id),
                        parent: hex(&sp.parent_span_id),
                        attrs,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_receiver() -> (Receiver, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recv = Receiver::default();
    let svc = TraceServiceServer::new(recv.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (recv, port)
}

/// `dispatch` and `worker` as processes exporting to the receiver, JSON logs to files.
fn spawn_exporting(s: &Stack, otlp_port: u16) -> (Proc, Proc, String) {
    let grpc = format!("127.0.0.1:{}", free_port());
    let otel = |c: &mut Command| {
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env("RUST_LOG", "info")
            .stderr(Stdio::null());
    };
    let log = |name: &str| std::fs::File::create(s.dir.path().join(name)).unwrap();
    let mut d = Command::new(common::bin("dispatch"));
    d.args(["--grpc-addr", &grpc, "--http-addr", "127.0.0.1:0", "--log-json"])
        .args(["--redis-url", &s.config.redis_url, "--nats-url", &s.config.nats_url])
        .args(["--set", "loops.relay_poll_ms=20"])
        .stdout(log("dispatch.jsonl"));
    otel(&mut d);
    let dispatch = Proc(d.spawn().expect("dispatch binary"));
    let mut w = Command::new(common::bin("worker"));
    w.args([
        "--worker-id",
        "traced-worker",
        "--dispatch-url",
        &format!("http://{grpc}"),
    ])
    .args([
        "--nats-url",
        &s.config.nats_url,
        "--queues",
        "traced=4",
        "--lease-s",
        "3",
        "--log-json",
    ])
    .stdout(log("worker.jsonl"));
    otel(&mut w);
    let worker = Proc(w.spawn().expect("worker binary"));
    (dispatch, worker, format!("http://{grpc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_job_one_trace_across_dispatch_and_worker() {
    let (recv, otlp_port) = start_receiver().await;
    let mut s = Stack::start().await;
    // Only the exporting dispatch process below serves this test.
    s.dispatch.take().unwrap().shutdown().await;
    let (_dispatch, _worker, url) = spawn_exporting(&s, otlp_port);
    let client = eventually("dispatch process up", T, || {
        let url = url.clone();
        async move { dispatch_client::Client::connect(url).await.ok() }
    })
    .await;

    // The caller's own span: the job's trace continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(pb::CreateJobRequest {
        queue: "traced".into(),
        r#type: "noop".into(),
        payload: Some(dispatch_client::json::to_proto(&json!({"objectId": "x"}))),
        options: None,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01").parse().unwrap(),
    );
    let job = client.jobs().create_job(req).await.unwrap().into_inner().job.unwrap();
    assert_eq!(client.wait(&job.id, T).await.unwrap().state(), JobState::Succeeded);

    // A job that fails once then is retried: both attempts in its one trace.
    let flaky = client
        .create_with(
            "traced",
            "fail",
            json!({"probability": 1}),
            pb::JobOptions {
                max_attempts: 2,
                backoff: Some(pb::Backoff {
                    initial: Some(pbjson_types::Duration {
                        seconds: 0,
                        nanos: 50_000_000,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!(client.wait(&flaky.id, T).await.unwrap().state(), JobState::Failed);

    let name_of = |g: &Got| (g.service.clone(), g.name.clone());
    let spans = eventually("the noop job's spans", T, || {
        let got = recv.0.lock().unwrap().clone();
        async move {
            let mine: Vec<Got> = got.into_iter().filter(|g| g.trace_id == caller_trace).collect();
            let has = |svc: &str, name: &str| mine.iter().any(|g| g.service == svc && g.name == name);
            (has("dispatch", "dispatch.v1.JobService/CreateJob")
                && has("dispatch", "publish job_run.traced")
                && has("worker", "run noop")
                && has("worker", "handle noop")
                && has("dispatch", "dispatch.v1.WorkerService/ClaimJobs")
                && has("dispatch", "dispatch.v1.WorkerService/CompleteJobs"))
            .then_some(mine)
        }
    })
    .await;
    let find = |svc: &str, name: &str| {
        spans
            .iter()
            .find(|g| g.service == svc && g.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {svc} span {name}: {:?}",
                    spans.iter().map(name_of).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let create = find("dispatch", "dispatch.v1.JobService/CreateJob");
    let publish = find("dispatch", "publish job_run.traced");
    let run = find("worker", "run noop");
    let handle = find("worker", "handle noop");
    let claim = find("dispatch", "dispatch.v1.WorkerService/ClaimJobs");
    let complete = find("dispatch", "dispatch.v1.WorkerService/CompleteJobs");
    // caller -> CreateJob -> publish -> run -> {ClaimJobs, handle, CompleteJobs}: the worker's
    // batch calls put each job's part in that job's own trace.
    assert_eq!(create.parent, caller_span);
    assert_eq!(publish.parent, create.span_id);
    assert_eq!(run.parent, publish.span_id);
    assert_eq!(claim.parent, run.span_id);
    assert_eq!(handle.parent, run.span_id);
    assert_eq!(complete.parent, run.span_id);
    for sp in [&create, &publish, &run, &claim, &complete] {
        assert_eq!(sp.attrs.get("job_id"), Some(&job.id), "{sp:?}");
        assert_eq!(sp.attrs.get("queue").map(String::as_str), Some("traced"), "{sp:?}");
        assert_eq!(sp.attrs.get("job_type").map(String::as_str), Some("noop"), "{sp:?}");
        assert_eq!(sp.attrs.get("attempt").map(String::as_str), Some("1"), "{sp:?}");
    }
    // Nothing of this job's life went to another trace (reads by other callers have their own).
    let stray: Vec<_> = recv
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.attrs.get("job_id") == Some(&job.id) && g.trace_id != caller_trace)
        .filter(|g| !g.name.ends_with("/GetJob") && !g.name.ends_with("/WatchJob"))
        .map(name_of)
        .collect();
    assert!(stray.is_empty(), "spans of the job outside its trace: {stray:?}");

    // The retried job: two attempts under one CreateJob, in one trace.
    let runs = eventually("both attempts of the retried job", T, || {
        let got = recv.0.lock().unwrap().clone();
        let id = flaky.id.clone();
        async move {
            let runs: Vec<Got> = got
                .into_iter()
                .filter(|g| g.name == "run fail" && g.attrs.get("job_id") == Some(&id))
                .collect();
            (runs.len() == 2).then_some(runs)
        }
    })
    .await;
    assert_eq!(runs[0].trace_id, runs[1].trace_id, "retries stay in the job's trace");
    let mut attempts: Vec<&str> = runs.iter().map(|r| r.attrs["attempt"].as_str()).collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);

    // Logs: JSON lines about the job carry job_id, queue, attempt and trace_id.
    for file in ["dispatch.jsonl", "worker.jsonl"] {
        let text = std::fs::read_to_string(s.dir.path().join(file)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &serde_json::Value| l["job_id"] == json!(job.id))
            .collect();
        assert!(!lines.is_empty(), "{file} has no line about the job:\n{text}");
        for l in &lines {
            assert_eq!(l["queue"], "traced", "{file}: {l}");
            assert_eq!(l["trace_id"], caller_trace, "{file}: {l}");
            assert!(l.get("attempt").is_some(), "{file}: {l}");
        }
    }
    s.stop().await;
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

/// The value of `name` with these labels (0 when absent).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_and_move_as_jobs_run() {
    let mut s = Stack::start().await;
    let worker_port = free_port();
    let mut cfg = s.worker_config(&[("default", 4)]);
    cfg.metrics_addr = Some(format!("127.0.0.1:{worker_port}").parse().unwrap());
    let worker = dispatch_worker::Worker::new(cfg).with_builtin_handlers();
    s.spawn_worker(worker);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
            scrape(&r.text().await.unwrap())
        }
    };
    let dispatch_url = format!("http://{}/metrics", s.http);
    let before = get(dispatch_url.clone()).await;
    assert_eq!(
        value(&before, "dispatch_jobs_created_total", &[("queue", "default")]),
        0.0
    );

    for _ in 0..3 {
        let j = s.create(json!({"queue": "default", "type": "noop"})).await.job.unwrap();
        s.wait_state(&j.id, JobState::Succeeded, T).await;
    }
    let failed = s
        .create(
            json!({"queue": "default", "type": "fail", "options": {"maxAttempts": 2, "backoff": {"initial": "0.05s"}}}),
        )
        .await
        .job
        .unwrap();
    s.wait_state(&failed.id, JobState::Failed, T).await;
    let delayed = s
        .create(json!({"queue": "later", "type": "noop", "options": {"delay": "60s"}}))
        .await
        .job
        .unwrap();
    assert_eq!(delayed.state, JobState::Scheduled as i32);

    let after = get(dispatch_url).await;
    let noop = [("queue", "default"), ("type", "noop")];
    let fail = [("queue", "default"), ("type", "fail")];
    assert_eq!(value(&after, "dispatch_jobs_created_total", &noop), 3.0);
    assert_eq!(value(&after, "dispatch_jobs_started_total", &noop), 3.0);
    assert_eq!(value(&after, "dispatch_jobs_succeeded_total", &noop), 3.0);
    assert_eq!(value(&after, "dispatch_jobs_started_total", &fail), 2.0);
    assert_eq!(value(&after, "dispatch_job_retries_total", &fail), 1.0);
    assert_eq!(value(&after, "dispatch_jobs_failed_total", &fail), 1.0);
    assert_eq!(
        value(
            &after,
            "dispatch_queue_jobs",
            &[("queue", "default"), ("state", "SUCCEEDED")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "dispatch_queue_jobs",
            &[("queue", "later"), ("state", "SCHEDULED")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "dispatch_job_enqueue_to_start_seconds_count",
            &[("queue", "default")]
        ),
        5.0
    );
    assert_eq!(value(&after, "dispatch_job_run_seconds_count", &noop), 3.0);
    assert!(after.samples.iter().any(|x| x.metric == "dispatch_outbox_depth"));
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "dispatch_outbox_oldest_age_seconds")
    );
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "dispatch_lease_expiries_total")
    );

    let w = get(format!("http://127.0.0.1:{worker_port}/metrics")).await;
    assert_eq!(value(&w, "worker_jobs_succeeded_total", &noop), 3.0);
    assert_eq!(
        value(&w, "worker_jobs_failed_total", &[("type", "fail"), ("reason", "error")]),
        2.0
    );
    assert_eq!(value(&w, "worker_job_run_seconds_count", &noop), 3.0);
    assert_eq!(value(&w, "worker_jobs_in_flight", &[("queue", "default")]), 0.0);
    s.stop().await;
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dashboard = std::fs::read_to_string(format!("{root}/docs/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(!parsed["panels"].as_array().unwrap().is_empty());
    let defined = std::fs::read_to_string(format!("{root}/dispatch/src/metrics.rs")).unwrap()
        + &std::fs::read_to_string(format!("{root}/worker/src/metrics.rs")).unwrap();
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("dispatch_") || w.starts_with("worker_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for n in names {
        let base = n
            .strip_suffix("_bucket")
            .or_else(|| n.strip_suffix("_count"))
            .unwrap_or(n);
        assert!(
            defined.contains(&format!("\"{base}\"")),
            "dashboard metric {n} is not defined"
        );
    }
}
