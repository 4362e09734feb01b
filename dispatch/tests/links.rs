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
