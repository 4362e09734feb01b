//! API keys and roles against a real stack: the role matrix over every RPC (gRPC, driven by
//! the proto's service descriptors) and every REST route, lease ids as capabilities, and
//! revocation by deleting a line of the keys file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use dispatch::auth::Role;
use dispatch_client::pb;
use dispatch_testkit::{Stack, authed, eventually};
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

/// The role table of docs/security.md, written out here on purpose: the server's rules are
/// checked against it, and an RPC missing from it fails the matrix.
fn expected_roles(rpc: &str) -> Option<Vec<Role>> {
    use Role::*;
    let (service, method) = rpc.split_once('/')?;
    Some(match (service, method) {
        ("dispatch.v1.JobService", "GetJob" | "ListJobs" | "WatchJob" | "ListQueues" | "GetStats" | "ListWorkers") => {
            vec![Viewer, Producer, Admin]
        }
        ("dispatch.v1.JobService", "CreateJob" | "CreateJobs" | "CancelJob" | "RetryJob") => vec![Producer, Admin],
        ("dispatch.v1.JobService", "PauseQueue" | "ResumeQueue") => vec![Admin],
        ("dispatch.v1.WorkerService", _) => vec![Worker, Admin],
        _ => return None,
    })
}

/// A stack with authentication on and one key per role; the keys file's path and the tokens.
async fn stack_with_keys() -> (Stack, tempfile::TempDir, PathBuf, HashMap<Role, String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let tokens: HashMap<Role, String> = Role::ALL
        .into_iter()
        .map(|r| {
            (
                r,
                dispatch::auth::create_key(&file, &format!("test-{}", r.as_str()), r).unwrap(),
            )
        })
        .collect();
    let path = file.display().to_string();
    let s = Stack::start_with(|c| c.auth.keys_file = path).await;
    (s, dir, file, tokens)
}

/// Raw protobuf bytes in and out, so any method can be called with an empty message.
#[derive(Clone, Default)]
struct Raw;
struct RawCodec;
impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}
impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

/// Calls `/rpc` with an empty message and `authorization` (if any); the status code it ends
/// with (Ok when it succeeded).
async fn call_raw(channel: &Channel, rpc: &str, streaming: bool, authorization: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_str(&format!("/{rpc}")).unwrap();
    let mut req = tonic::Request::new(Vec::new());
    if let Some(a) = authorization {
        req.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    if streaming {
        match grpc.server_streaming(req, path, Raw).await {
            Err(s) => s.code(),
            Ok(resp) => match resp.into_inner().message().await {
                Err(s) => s.code(),
                Ok(_) => Code::Ok,
            },
        }
    } else {
        match grpc.unary(req, path, Raw).await {
            Err(s) => s.code(),
            Ok(_) => Code::Ok,
        }
    }
}

/// Every RPC of the dispatch.v1 services, from the descriptors the server registers for
/// reflection: (full name, server streaming).
fn all_rpcs() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(dispatch_client::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "dispatch.v1") {
        for service in &file.service {
            for m in &service.method {
                rpcs.push((
                    format!("dispatch.v1.{}/{}", service.name(), m.name()),
                    m.server_streaming(),
                ));
            }
        }
    }
    rpcs
}

/// Pass: every RPC on gRPC answers UNAUTHENTICATED without a token or with an unknown one,
/// PERMISSION_DENIED to each role the table does not list, and gets past authorization for
/// each role it lists; every RPC has a rule; health and reflection stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_its_roles_on_grpc() {
    let (s, _dir, _file, tokens) = stack_with_keys().await;
    let channel = Channel::from_shared(s.url()).unwrap().connect().await.unwrap();
    let rpcs = all_rpcs();
    assert!(rpcs.len() >= 19, "descriptors list {} RPCs", rpcs.len());
    let mut rows = Vec::new();
    for (rpc, streaming) in &rpcs {
        let expected = expected_roles(rpc).unwrap_or_else(|| panic!("{rpc} is missing from the role table"));
        let rule = dispatch::auth::allowed(rpc).unwrap_or_else(|| panic!("{rpc} has no rule in dispatch::auth"));
        let mut rule = rule.to_vec();
        rule.sort_by_key(|r| r.as_str());
        let mut want = expected.clone();
        want.sort_by_key(|r| r.as_str());
        assert_eq!(rule, want, "{rpc}: the server's rule differs from the role table");
        assert_eq!(
            call_raw(&channel, rpc, *streaming, None).await,
            Code::Unauthenticated,
            "{rpc}, no token"
        );
        assert_eq!(
            call_raw(&channel, rpc, *streaming, Some("Bearer dsp_not-a-key")).await,
            Code::Unauthenticated,
            "{rpc}, unknown token"
        );
        assert_eq!(
            call_raw(&channel, rpc, *streaming, Some(&tokens[&Role::Admin])).await,
            Code::Unauthenticated,
            "{rpc}, token without Bearer"
        );
        for role in Role::ALL {
            let code = call_raw(&channel, rpc, *streaming, Some(&format!("Bearer {}", tokens[&role]))).await;
            if expected.contains(&role) {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{rpc} as {}: {code:?}",
                    role.as_str()
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{rpc} as {}", role.as_str());
            }
            rows.push(format!("{rpc} {} {code:?}", role.as_str()));
        }
    }
    println!("{}", rows.join("\n"));
    // Health and reflection need no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(h.into_inner().status, 1, "SERVING");
    s.stop().await;
}

/// Pass: every REST route answers 401 (with `WWW-Authenticate: Bearer`) without a token or
/// with an unknown one, 403 to each role its RPC's rule does not list, and neither to each
/// role it lists; the OpenAPI document and the docs page stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_checks_its_roles() {
    let (s, _dir, _file, tokens) = stack_with_keys().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", s.http);
    let some_id = "0190a000-0000-7000-8000-000000000000";
    for route in dispatch::gateway::ROUTES {
        let expected =
            expected_roles(route.rpc).unwrap_or_else(|| panic!("{} is missing from the role table", route.rpc));
        let mut path = String::new();
        for seg in route.segments {
            path.push('/');
            match seg {
                dispatch::gateway::transcode::Seg::Lit(l) => path.push_str(l),
                dispatch::gateway::transcode::Seg::Field(_) => path.push_str(some_id),
            }
        }
        if let Some(v) = route.verb {
            path.push(':');
            path.push_str(v);
        }
        let send = |auth: Option<String>| {
            let mut req = http.request(route.http_method.parse().unwrap(), format!("{base}{path}"));
            if route.body {
                req = req.header("content-type", "application/json").body("{}");
            }
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            async move { req.timeout(Duration::from_secs(10)).send().await.unwrap() }
        };
        let what = format!("{} {path} ({})", route.http_method, route.rpc);
        let none = send(None).await;
        assert_eq!(none.status(), 401, "{what}, no token");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = serde_json::from_str(&none.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED", "{what}: {body}");
        assert_eq!(
            send(Some("Bearer dsp_nope".into())).await.status(),
            401,
            "{what}, unknown token"
        );
        for role in Role::ALL {
            let status = send(Some(format!("Bearer {}", tokens[&role]))).await.status();
            if expected.contains(&role) {
                assert!(status != 401 && status != 403, "{what} as {}: {status}", role.as_str());
            } else {
                assert_eq!(status, 403, "{what} as {}", role.as_str());
            }
        }
    }
    for open in ["/api/openapi.json", "/api/docs"] {
        assert_eq!(
            http.get(format!("{base}{open}")).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
    s.stop().await;
}

/// Pass: the acceptance flow as a new user meets it: a producer creates a job but may not
/// complete it; a viewer reads but may not create; a worker claims and completes; nobody
/// reading through JobService sees the lease id; a second worker key reporting with the first
/// one's lease is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_id_is_a_capability_of_the_key_that_claimed() {
    let (s, _dir, file, tokens) = stack_with_keys().await;
    let other_worker = dispatch::auth::create_key(&file, "test-worker-2", Role::Worker).unwrap();
    let mut jobs = s.jobs().await;
    // Known (a worker may not list queues) once dispatch has re-read the file.
    eventually("the second worker key to be loaded", T, || {
        let mut jobs = jobs.clone();
        let req = authed(&other_worker, pb::ListQueuesRequest::default());
        async move { (jobs.list_queues(req).await.unwrap_err().code() == Code::PermissionDenied).then_some(()) }
    })
    .await;
    let mut workers = s.workers_api().await;
    let producer = &tokens[&Role::Producer];
    let viewer = &tokens[&Role::Viewer];
    let worker = &tokens[&Role::Worker];
    let new = || pb::CreateJobRequest {
        queue: "auth".into(),
        r#type: "noop".into(),
        payload: Some(dispatch_client::json::to_proto(&serde_json::json!({}))),
        ..Default::default()
    };
    let created = jobs.create_job(authed(producer, new())).await.unwrap().into_inner();
    let id = created.job.unwrap().id;
    let err = jobs.create_job(authed(viewer, new())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("producer or admin"), "{}", err.message());
    let claim = || pb::ClaimJobRequest {
        job_id: id.clone(),
        attempt: 1,
        worker_id: "w-1".into(),
        ..Default::default()
    };
    assert_eq!(
        workers.claim_job(authed(producer, claim())).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // The other worker key may not be shown the lease either: it claims nothing here.
    let claimed = eventually("the claim", T, || {
        let mut workers = workers.clone();
        let req = authed(worker, claim());
        async move { workers.claim_job(req).await.ok() }
    })
    .await
    .into_inner()
    .job
    .unwrap();
    let lease = claimed.lease.unwrap().lease_id;
    assert!(!lease.is_empty());
    for token in [viewer, producer, &tokens[&Role::Admin]] {
        let seen = jobs
            .get_job(authed(token, pb::GetJobRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(seen.state, pb::JobState::Running as i32);
        assert_eq!(seen.lease.unwrap().lease_id, "", "GetJob shows no lease id");
        let listed = jobs
            .list_jobs(authed(
                token,
                pb::ListJobsRequest {
                    queue: "auth".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed
                .jobs
                .iter()
                .all(|j| j.lease.as_ref().is_none_or(|l| l.lease_id.is_empty()))
        );
    }
    let complete = |lease: &str| pb::CompleteJobRequest {
        job_id: id.clone(),
        lease_id: lease.to_string(),
        result: Some(dispatch_client::json::to_proto(&serde_json::json!({"forged": true}))),
        ..Default::default()
    };
    let err = workers
        .complete_job(authed(producer, complete(&lease)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = workers
        .complete_job(authed(&other_worker, complete(&lease)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = workers
        .fail_job(authed(
            &other_worker,
            pb::FailJobRequest {
                job_id: id.clone(),
                lease_id: lease.clone(),
                error: "forged".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = workers
        .heartbeat(authed(
            &other_worker,
            pb::HeartbeatRequest {
                job_id: id.clone(),
                lease_id: lease.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let batch = workers
        .complete_jobs(authed(
            &other_worker,
            pb::CompleteJobsRequest {
                completions: vec![complete(&lease)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch.results[0].error.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    let unchanged = jobs
        .get_job(authed(viewer, pb::GetJobRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        unchanged.state,
        pb::JobState::Running as i32,
        "refused reports change nothing"
    );
    assert!(unchanged.result.is_none());
    // The worker that claimed completes it.
    let done = workers
        .complete_job(authed(
            worker,
            pb::CompleteJobRequest {
                job_id: id.clone(),
                lease_id: lease.clone(),
                result: Some(dispatch_client::json::to_proto(&serde_json::json!({"ok": 1}))),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    s.stop().await;
}

/// Pass: deleting a key's line revokes it within seconds, and a key added while dispatch
/// runs is honoured, both without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_revoked_and_added_without_a_restart() {
    let (s, _dir, file, tokens) = stack_with_keys().await;
    let mut jobs = s.jobs().await;
    let viewer = tokens[&Role::Viewer].clone();
    let list = |token: String| {
        let mut jobs = jobs.clone();
        async move {
            jobs.list_queues(authed(&token, pb::ListQueuesRequest::default()))
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    assert_eq!(list(viewer.clone()).await, Ok(()));
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("test-viewer "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    eventually("the viewer key to be revoked", T, || {
        let f = list(viewer.clone());
        async move { (f.await == Err(Code::Unauthenticated)).then_some(()) }
    })
    .await;
    let added = dispatch::auth::create_key(&file, "late-viewer", Role::Viewer).unwrap();
    eventually("the added key to be honoured", T, || {
        let f = list(added.clone());
        async move { f.await.ok() }
    })
    .await;
    // The other keys were never affected.
    assert_eq!(list(tokens[&Role::Producer].clone()).await, Ok(()));
    let _ = jobs.list_queues(pb::ListQueuesRequest::default()).await.unwrap_err();
    s.stop().await;
}

/// Pass: the `worker` binary with a worker key in `DISPATCH_TOKEN` runs jobs a producer key
/// created; the in-process SDK with `WorkerConfig::token` does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_a_worker_key_run_jobs() {
    let (mut s, _dir, _file, tokens) = stack_with_keys().await;
    let producer = dispatch_client::Client::connect(s.url())
        .await
        .unwrap()
        .with_token(&tokens[&Role::Producer])
        .unwrap();
    let _proc = dispatch_testkit::Proc(
        std::process::Command::new(dispatch_testkit::worker_bin())
            .args(["--worker-id", "auth-bin", "--dispatch-url", &s.url()])
            .args(["--nats-url", &format!("nats://127.0.0.1:{}", s.nats_port)])
            .args(["--queues", "auth-bin=4"])
            .env("DISPATCH_TOKEN", &tokens[&Role::Worker])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("worker binary"),
    );
    let mut cfg = s.worker_config(&[("auth-sdk", 4)]);
    cfg.token = Some(tokens[&Role::Worker].clone());
    s.spawn_worker(dispatch_worker::Worker::new(cfg).with_builtin_handlers());
    for queue in ["auth-bin", "auth-sdk"] {
        let job = producer.create(queue, "noop", serde_json::json!({})).await.unwrap();
        let done = producer.wait(&job.id, T).await.unwrap();
        assert_eq!(done.state(), pb::JobState::Succeeded, "{queue}");
    }
    s.stop().await;
}

/// Pass: with keys on, the dashboard's files are served to anyone (they hold no data) under a
/// strict Content-Security-Policy, and the data the page reads still needs a key: a viewer
/// reads the queues and workers, and may not pause a queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_open_and_its_data_is_not() {
    let (s, _dir, _file, tokens) = stack_with_keys().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", s.http);
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/config.json", "application/json"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
    }
    let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/ui/app.js"));
    let r = http.get(format!("{base}/api/queues")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let viewer = format!("Bearer {}", tokens[&Role::Viewer]);
    for path in ["/api/queues", "/api/workers", "/api/stats"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("authorization", &viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http
        .post(format!("{base}/api/queue/default:pause"))
        .header("authorization", &viewer)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let admin = format!("Bearer {}", tokens[&Role::Admin]);
    let r = http
        .post(format!("{base}/api/queue/default:pause"))
        .header("authorization", &admin)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
