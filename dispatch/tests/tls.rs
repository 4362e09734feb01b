//! TLS on both listeners against a real stack: the Rust client, REST over HTTPS, grpcurl
//! with `-cacert`, the worker binary and SDK with a CA; mutual TLS refusing a client without
//! a certificate; plain connections and untrusted CAs refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_client::{Client, Tls, pb};
use dispatch_testkit::{Pki, Stack, eventually, test_pki as pki};

const T: Duration = Duration::from_secs(30);

async fn tls_stack(pki: &Pki, mutual: bool) -> Stack {
    let (cert, key, ca) = (pki.cert.clone(), pki.key.clone(), pki.ca.clone());
    Stack::start_with(move |c| {
        c.tls.cert_file = cert.display().to_string();
        c.tls.key_file = key.display().to_string();
        if mutual {
            c.tls.client_ca_file = ca.display().to_string();
        }
    })
    .await
}

fn https(s: &Stack) -> String {
    format!("https://127.0.0.1:{}", s.grpc.port())
}

fn job(queue: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        queue: queue.into(),
        r#type: "noop".into(),
        ..Default::default()
    }
}

fn reqwest_with(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// Pass: with `tls.cert_file`/`tls.key_file`, the Rust client trusting the CA creates and
/// reads a job over gRPC, REST answers over HTTPS, and grpcurl with `-cacert` lists the
/// services; a plain-text client and a client trusting another CA get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_serve_tls_to_clients_that_trust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let s = tls_stack(&pki, false).await;

    let client = Client::connect_tls(https(&s), &Tls::new().ca_file(&pki.ca).unwrap())
        .await
        .expect("a client trusting the CA connects");
    let created = client
        .jobs()
        .create_job(job("tls"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(client.get(&created.id).await.unwrap().id, created.id);

    // Plain text to the TLS port: no answer (the handshake fails).
    let plain = Client::connect(format!("http://{}", s.grpc)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(c) => c.get(&created.id).await.is_err(),
    };
    assert!(refused, "a plain-text call to the TLS port must fail");
    // A client trusting another CA refuses the server's certificate.
    let other = Client::connect_tls(https(&s), &Tls::new().ca_file(&pki.other_ca).unwrap()).await;
    assert!(other.is_err(), "a client trusting another CA must not connect");

    // REST over HTTPS.
    let http = reqwest_with(&pki.ca, None);
    let r = http
        .get(format!("https://127.0.0.1:{}/api/job/{}", s.http.port(), created.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["job"]["id"], created.id.as_str(), "{body}");
    assert!(
        reqwest::get(format!("http://{}/api/queues", s.http)).await.is_err(),
        "plain HTTP to the TLS port must fail"
    );
    let untrusting = reqwest_with(&pki.other_ca, None);
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{}/api/queues", s.http.port()))
            .send()
            .await
            .is_err()
    );

    // grpcurl, as the README shows it.
    let grpcurl = grpcurl_bin();
    let out = std::process::Command::new(&grpcurl)
        .args(["-cacert", pki.ca.to_str().unwrap()])
        .arg(format!("127.0.0.1:{}", s.grpc.port()))
        .arg("list")
        .output()
        .expect("grpcurl runs");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("dispatch.v1.JobService"),
        "grpcurl -cacert list: {listed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

/// Pass: with `tls.client_ca_file`, a client presenting a certificate the CA signed is
/// served on both listeners; one without a certificate is refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let s = tls_stack(&pki, true).await;

    let with_cert = Tls::new()
        .ca_file(&pki.ca)
        .unwrap()
        .identity_files(&pki.client_cert, &pki.client_key)
        .unwrap();
    let client = Client::connect_tls(https(&s), &with_cert).await.unwrap();
    client
        .jobs()
        .create_job(job("mtls"))
        .await
        .expect("served with a client certificate");

    let without = Client::connect_tls(https(&s), &Tls::new().ca_file(&pki.ca).unwrap()).await;
    let refused = match without {
        Err(_) => true,
        Ok(c) => c.jobs().create_job(job("mtls")).await.is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    let url = format!("https://127.0.0.1:{}/api/queues", s.http.port());
    let ok = reqwest_with(&pki.ca, Some((&pki.client_cert, &pki.client_key)))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(reqwest_with(&pki.ca, None).get(&url).send().await.is_err());
    s.stop().await;
}

/// Pass: the worker binary (`--ca-cert`, and `--client-cert/--client-key` under mutual TLS)
/// and the worker SDK (`WorkerConfig.tls`) run jobs to SUCCEEDED over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_jobs_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = tls_stack(&pki, true).await;
    let tls = Tls::new()
        .ca_file(&pki.ca)
        .unwrap()
        .identity_files(&pki.client_cert, &pki.client_key)
        .unwrap();
    let client = Client::connect_tls(https(&s), &tls).await.unwrap();

    let mut worker = dispatch_testkit::Proc(
        std::process::Command::new(dispatch_testkit::worker_bin())
            .args(["--worker-id", "tls-bin", "--dispatch-url", &https(&s)])
            .args(["--nats-url", &format!("nats://127.0.0.1:{}", s.nats_port)])
            .args(["--queues", "tls-bin=2"])
            .args(["--ca-cert", pki.ca.to_str().unwrap()])
            .args(["--client-cert", pki.client_cert.to_str().unwrap()])
            .args(["--client-key", pki.client_key.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("worker binary"),
    );
    let by_binary = client.create("tls-bin", "noop", serde_json::json!({})).await.unwrap();
    let done = client.wait(&by_binary.id, T).await.unwrap();
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let _ = worker.0.kill();

    let mut cfg = s.worker_config(&[("tls-sdk", 2)]);
    cfg.dispatch_url = https(&s);
    cfg.tls = Some(tls.clone());
    s.spawn_worker(dispatch_worker::Worker::new(cfg).with_builtin_handlers());
    let by_sdk = client.create("tls-sdk", "noop", serde_json::json!({})).await.unwrap();
    let id = by_sdk.id.clone();
    eventually("the SDK worker finishes the job over TLS", T, || {
        let (client, id) = (client.clone(), id.clone());
        async move {
            let job = client.get(&id).await.ok()?;
            (job.state() == pb::JobState::Succeeded).then_some(())
        }
    })
    .await;
    s.stop().await;
}

/// Pass: a TLS client that connects and never sends a handshake is closed after
/// `tls.handshake_timeout_ms`, and does not stop others from being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_and_blocks_nobody() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let s = Stack::start_with(move |c| {
        c.tls.cert_file = cert.display().to_string();
        c.tls.key_file = key.display().to_string();
        c.tls.handshake_timeout_ms = 500;
    })
    .await;
    let mut stalled = tokio::net::TcpStream::connect(s.http).await.unwrap();
    // Meanwhile a real client is served.
    let r = reqwest_with(&pki.ca, None)
        .get(format!("https://127.0.0.1:{}/api/queues", s.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the stalled connection is closed well before 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    s.stop().await;
}

fn grpcurl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/grpcurl");
    assert!(
        p.exists(),
        "grpcurl not found at {}: run tools/install.sh (make test does)",
        p.display()
    );
    p
}
