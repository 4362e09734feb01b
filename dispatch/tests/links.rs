//! dispatch's links to Redis and NATS with credentials and TLS, against real servers that
//! demand them (Redis: TLS only, an ACL user; NATS: TLS only, a user and password): the right
//! settings run a job end to end; a wrong password, a missing CA or a plain URL stop the start
//! with a message that names the problem and never the secret.
//! (The whole lifecycle suite also runs against these servers: `DISPATCH_TEST_SECURE=1`.)

use std::time::Duration;

use dispatch_client::pb;
use dispatch_testkit::{Servers, start_secure_servers, test_config};

const T: Duration = Duration::from_secs(30);

fn secured(dir: &std::path::Path) -> (Servers, dispatch::Config) {
    let servers = start_secure_servers(dir, false);
    let links = servers.links.clone().unwrap();
    let mut config = test_config(&servers.redis_url, servers.nats_port);
    config.redis = dispatch::config::Redis {
        partitions: config.redis.partitions,
        ..links.redis
    };
    config.nats = links.nats;
    (servers, config)
}

async fn start_error(config: dispatch::Config) -> String {
    match tokio::time::timeout(T, dispatch::start(config)).await {
        Ok(Ok(running)) => {
            running.shutdown().await;
            panic!("dispatch started with a bad link")
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("dispatch neither started nor failed within {T:?}"),
    }
}

/// Pass: with the user, password file and CA of both servers, a job created over gRPC runs
/// to SUCCEEDED on a worker that logs in to NATS the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_over_authenticated_tls_links() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, config) = secured(dir.path());
    let running = dispatch::start(config.clone()).await.expect("dispatch starts");
    let url = format!("http://{}", running.grpc_addr);
    let cfg = dispatch_worker::WorkerConfig {
        dispatch_url: url.clone(),
        nats_url: config.nats_url.clone(),
        nats: config.nats.clone(),
        queues: vec![("secure".into(), 2)],
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(
        dispatch_worker::Worker::new(cfg)
            .with_builtin_handlers()
            .run(stop.clone()),
    );
    let client = dispatch_client::Client::connect(url).await.unwrap();
    let job = client
        .create("secure", "noop", serde_json::json!({"x": 1}))
        .await
        .unwrap();
    let done = client.wait(&job.id, T).await.unwrap();
    assert_eq!(done.state(), pb::JobState::Succeeded);
    stop.cancel();
    let _ = worker.await;
    running.shutdown().await;
    drop(servers);
}

/// Pass: each bad Redis or NATS setting stops the start with a message naming what is wrong,
/// and no message holds the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_links_fail_clearly_and_keep_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, good) = secured(dir.path());
    let wrong_file = dir.path().join("wrong-password");
    std::fs::write(&wrong_file, "n0t-the-r1ght-one\n").unwrap();

    let mut redis_wrong = good.clone();
    redis_wrong.redis.password_file = wrong_file.display().to_string();
    let e = start_error(redis_wrong).await;
    assert!(e.contains("Redis"), "{e}");
    assert!(!e.contains("n0t-the-r1ght-one"), "{e}");

    let mut redis_plain = good.clone();
    redis_plain.redis_url = format!("redis://127.0.0.1:{}", servers.redis_port);
    redis_plain.redis.tls_ca_file.clear();
    let e = start_error(redis_plain).await;
    assert!(e.contains("Redis"), "{e}");

    let mut redis_untrusted = good.clone();
    redis_untrusted.redis.tls_ca_file = servers.links.as_ref().unwrap().pki.other_ca.display().to_string();
    let e = start_error(redis_untrusted).await;
    assert!(e.contains("Redis"), "{e}");

    let mut redis_inline = good.clone();
    redis_inline.redis.password_file.clear();
    redis_inline.redis.password = "s3cret-inline-value".into();
    let e = start_error(redis_inline).await;
    assert!(!e.contains("s3cret-inline-value"), "{e}");

    let mut nats_wrong = good.clone();
    nats_wrong.nats.password_file = wrong_file.display().to_string();
    let e = start_error(nats_wrong).await;
    assert!(e.contains("NATS"), "{e}");
    assert!(!e.contains("n0t-the-r1ght-one"), "{e}");

    let mut nats_url_creds = good.clone();
    nats_url_creds.nats.user.clear();
    nats_url_creds.nats.password_file.clear();
    nats_url_creds.nats_url = format!("nats://dispatch:w-r-o-n-g@127.0.0.1:{}", servers.nats_port);
    let e = start_error(nats_url_creds).await;
    assert!(!e.contains("w-r-o-n-g"), "{e}");

    let mut missing = good.clone();
    missing.redis.password_file = "/nonexistent/redis-password".into();
    let e = start_error(missing).await;
    assert!(e.contains("/nonexistent/redis-password"), "{e}");
    drop(servers);
}

/// Starts a plain nats-server (JetStream) with `auth` as its authorization block, on a free
/// port under `dir`; returns it and its port.
fn nats_with_auth(dir: &std::path::Path, auth: &str) -> (dispatch_testkit::Proc, u16) {
    let port = dispatch_testkit::free_port();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\nauthorization {{ {auth} }}\n",
            dir.join("js").display().to_string()
        ),
    )
    .unwrap();
    let mut proc = dispatch_testkit::Proc(
        std::process::Command::new(dispatch_testkit::nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(dir.join("nats.log"))
            .spawn()
            .expect("nats-server"),
    );
    dispatch_testkit::wait_ready(&mut proc, &dir.join("nats.log"), "Server is ready", "nats-server");
    (proc, port)
}

/// dispatch against a NATS demanding `auth`, with `nats` settings: Ok when it starts.
async fn start_with_nats(auth: &str, nats: dispatch_client::nats::NatsAuth) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, port) = nats_with_auth(dir.path(), auth);
    let redis_port = dispatch_testkit::free_port();
    let mut redis = dispatch_testkit::spawn_redis_with(dir.path(), redis_port, false);
    dispatch_testkit::wait_ready(
        &mut redis,
        &dir.path().join("redis.log"),
        "Ready to accept",
        "redis-server",
    );
    let mut config = test_config(&format!("redis://127.0.0.1:{redis_port}"), port);
    config.nats = nats;
    match tokio::time::timeout(T, dispatch::start(config)).await {
        Ok(Ok(running)) => {
            running.shutdown().await;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("neither started nor failed".into()),
    }
}

/// Pass: a NATS token and an nkey seed, each read from a file, log dispatch in; a wrong token
/// and a seed of another key are refused at start, without the secret in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tokens_and_nkeys_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{content}\n")).unwrap();
        p.display().to_string()
    };
    let token_auth = "token: \"t0ken-f0r-nats\"";
    let good = dispatch_client::nats::NatsAuth {
        token_file: file("token", "t0ken-f0r-nats"),
        ..Default::default()
    };
    start_with_nats(token_auth, good)
        .await
        .expect("the right token logs in");
    let wrong = dispatch_client::nats::NatsAuth {
        token_file: file("wrong-token", "wr0ng-t0ken"),
        ..Default::default()
    };
    let e = start_with_nats(token_auth, wrong).await.unwrap_err();
    assert!(e.contains("authorization violation"), "{e}");
    assert!(!e.contains("wr0ng-t0ken"), "{e}");

    let user = nkeys::KeyPair::new_user();
    let nkey_auth = format!("users = [ {{ nkey: {} }} ]", user.public_key());
    let seed = dispatch_client::nats::NatsAuth {
        nkey_seed_file: file("seed", &user.seed().unwrap()),
        ..Default::default()
    };
    start_with_nats(&nkey_auth, seed).await.expect("the right nkey logs in");
    let other = nkeys::KeyPair::new_user();
    let other_seed = other.seed().unwrap();
    let e = start_with_nats(
        &nkey_auth,
        dispatch_client::nats::NatsAuth {
            nkey_seed_file: file("other-seed", &other_seed),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("authorization violation"), "{e}");
    assert!(!e.contains(&other_seed), "{e}");
}

/// Pass: a Redis with `tls-auth-clients yes` and a NATS with `--tlsverify` serve dispatch when
/// it presents the client certificate (`redis.tls_cert_file`, `nats.tls_cert_file`), and refuse
/// it without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_for_redis_and_nats() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dispatch_testkit::test_pki(dir.path());
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let redis_port = dispatch_testkit::free_port();
    let mut redis = dispatch_testkit::Proc(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &path(&pki.cert), "--tls-key-file", &path(&pki.key)])
            .args(["--tls-ca-cert-file", &path(&pki.ca), "--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .spawn()
            .expect("redis-server"),
    );
    dispatch_testkit::wait_ready(
        &mut redis,
        &dir.path().join("redis.log"),
        "Ready to accept",
        "redis-server",
    );
    let nats_port = dispatch_testkit::free_port();
    let mut nats = dispatch_testkit::Proc(
        std::process::Command::new(dispatch_testkit::nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .args([
                "--tlsverify",
                "--tlscert",
                &path(&pki.cert),
                "--tlskey",
                &path(&pki.key),
            ])
            .args(["--tlscacert", &path(&pki.ca)])
            .arg("-l")
            .arg(dir.path().join("nats.log"))
            .spawn()
            .expect("nats-server"),
    );
    dispatch_testkit::wait_ready(
        &mut nats,
        &dir.path().join("nats.log"),
        "Server is ready",
        "nats-server",
    );
    let mut config = test_config(&format!("rediss://127.0.0.1:{redis_port}"), nats_port);
    config.redis.tls_ca_file = path(&pki.ca);
    config.redis.tls_cert_file = path(&pki.client_cert);
    config.redis.tls_key_file = path(&pki.client_key);
    config.nats.tls_ca_file = path(&pki.ca);
    config.nats.tls_cert_file = path(&pki.client_cert);
    config.nats.tls_key_file = path(&pki.client_key);
    let running = dispatch::start(config.clone())
        .await
        .expect("dispatch starts with client certificates");
    let client = dispatch_client::Client::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    client
        .create("mtls-links", "noop", serde_json::json!({}))
        .await
        .unwrap();
    running.shutdown().await;

    let mut no_redis_cert = config.clone();
    no_redis_cert.redis.tls_cert_file.clear();
    no_redis_cert.redis.tls_key_file.clear();
    let e = start_error(no_redis_cert).await;
    assert!(e.contains("Redis"), "{e}");
    let mut no_nats_cert = config;
    no_nats_cert.nats.tls_cert_file.clear();
    no_nats_cert.nats.tls_key_file.clear();
    let e = start_error(no_nats_cert).await;
    assert!(e.contains("NATS"), "{e}");
}
