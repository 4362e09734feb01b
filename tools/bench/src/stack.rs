//! The stack under test: either started here the way `make run` starts it (redis-server,
//! nats-server with JetStream file storage, the `dispatch` binary, one `worker` process with the
//! built-in handlers), or one already running that the flags point at.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dispatch_testkit::{Proc, Servers, Topology, bin, free_port, start_servers_on};

/// Where the stack is, and the processes this run started (stopped on drop).
pub struct Stack {
    pub grpc_url: String,
    pub nats_url: String,
    /// Redis, for the memory figures; `None` skips them.
    pub redis_url: Option<String>,
    /// Pids of dispatch and the worker when started here, for their RSS.
    pub dispatch_pid: Option<u32>,
    pub worker_pid: Option<u32>,
    /// Every process started here by name, for their CPU time.
    pub pids: Vec<(&'static str, u32)>,
    procs: Vec<Proc>,
    _dir: Option<tempfile::TempDir>,
}

/// How to start a stack.
pub struct Options {
    /// Turn on Redis's append-only file (off by default: the peers were measured without
    /// persistence).
    pub redis_aof: bool,
    /// Concurrency of each worker process on the benchmark queues.
    pub worker_concurrency: usize,
    /// Worker processes (the RSS and CPU figures are the first one's).
    pub workers: usize,
    /// Queues the worker serves.
    pub queues: Vec<String>,
}

impl Stack {
    /// A stack already running somewhere.
    pub fn existing(grpc_url: String, nats_url: String, redis_url: Option<String>) -> Stack {
        Stack {
            grpc_url,
            nats_url,
            redis_url,
            dispatch_pid: None,
            worker_pid: None,
            pids: Vec::new(),
            procs: Vec::new(),
            _dir: None,
        }
    }

    /// Starts Redis, NATS, dispatch and one worker process on free loopback ports.
    pub async fn start(opts: &Options) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let Servers {
            redis,
            redis_url,
            nats,
            nats_port,
            ..
        } = start_servers_on(dir.path(), opts.redis_aof, Topology::Single);
        let (grpc_port, http_port) = (free_port(), free_port());
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let grpc_url = format!("http://127.0.0.1:{grpc_port}");
        let dispatch = spawn_logged(
            Command::new(bin("dispatch"))
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--redis-url", &redis_url, "--nats-url", &nats_url]),
            &dir.path().join("dispatch.log"),
        )?;
        let dispatch_pid = dispatch.0.id();
        let queues: Vec<String> = opts
            .queues
            .iter()
            .map(|q| format!("{q}={}", opts.worker_concurrency))
            .collect();
        let mut workers = Vec::new();
        for i in 0..opts.workers.max(1) {
            workers.push(spawn_logged(
                Command::new(bin("worker"))
                    .args(["--worker-id", &format!("bench-worker-{i}"), "--dispatch-url", &grpc_url])
                    .args(["--nats-url", &nats_url, "--queues", &queues.join(",")]),
                &dir.path().join(format!("worker-{i}.log")),
            )?);
        }
        let worker_pid = workers[0].0.id();
        let stack = Stack {
            grpc_url,
            nats_url,
            redis_url: Some(redis_url),
            dispatch_pid: Some(dispatch_pid),
            worker_pid: Some(worker_pid),
            pids: vec![
                ("redis", redis.0.id()),
                ("nats", nats.0.id()),
                ("dispatch", dispatch_pid),
                ("worker", worker_pid),
                ("bench", std::process::id()),
            ],
            procs: workers.into_iter().chain([dispatch, nats, redis]).collect(),
            _dir: Some(dir),
        };
        stack.wait_serving().await?;
        Ok(stack)
    }

    /// Waits until dispatch answers on gRPC.
    async fn wait_serving(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) =
                dispatch_client::pb::job_service_client::JobServiceClient::connect(self.grpc_url.clone()).await
                && c.list_queues(dispatch_client::pb::ListQueuesRequest {}).await.is_ok()
            {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "dispatch did not answer on {} within 30 s",
                self.grpc_url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the processes started here: worker and dispatch first, then NATS and Redis.
    pub fn stop(&mut self) {
        for p in self.procs.drain(..) {
            drop(p);
        }
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    Ok(Proc(
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?,
    ))
}

/// Resident set size now and at its peak, in MiB, from `/proc/<pid>/status`.
pub fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

/// CPU time (user + system) a process has used so far, in seconds, from `/proc/<pid>/stat`.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
