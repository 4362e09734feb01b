//! The stack under test: either started here the way `make run` starts it (redis-server,
//! nats-server with JetStream file storage, the `dispatch` binary, one `worker` process with the
//! built-in handlers), or one already running that the flags point at.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dispatch_client::nats::NatsAuth;
use dispatch_testkit::{Proc, Servers, Topology, bin, free_port, start_secure_servers, start_servers_on};

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
    /// How the bench logs in when keys and TLS are on.
    pub access: Option<Access>,
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
    /// Keys and TLS everywhere (see [`Access`]).
    pub secure: bool,
}

/// A secured stack's credentials for the bench: Redis and NATS with TLS and passwords
/// (testkit's secured servers), dispatch with API keys and TLS on its listeners; the bench
/// calls with an admin key, the worker with a worker key, each over TLS.
#[derive(Clone)]
pub struct Access {
    pub token: String,
    pub ca: std::path::PathBuf,
    pub nats: NatsAuth,
}

impl Access {
    /// A gRPC client of dispatch over TLS with the bench's key.
    pub fn client(&self, grpc_url: &str) -> anyhow::Result<dispatch_client::Client> {
        let tls = dispatch_client::Tls::new().ca_file(&self.ca)?;
        dispatch_client::Client::connect_lazy_tls(grpc_url.to_string(), &tls)?
            .with_token(&self.token)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    }
}

/// Adds a key of `role` to the keys file `file`; its token.
fn new_key(file: &Path, role: &str) -> anyhow::Result<String> {
    let out = Command::new(bin("dispatch"))
        .args([
            "keys",
            "create",
            "--role",
            role,
            "--name",
            &format!("bench-{role}"),
            "--file",
        ])
        .arg(file)
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "dispatch keys create failed");
    String::from_utf8(out.stdout)?
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("dsp_"))
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("dispatch keys create printed no token"))
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
            access: None,
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
            links,
            ..
        } = if opts.secure {
            start_secure_servers(dir.path(), opts.redis_aof)
        } else {
            start_servers_on(dir.path(), opts.redis_aof, Topology::Single)
        };
        let (grpc_port, http_port) = (free_port(), free_port());
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let scheme = if opts.secure { "https" } else { "http" };
        let grpc_url = format!("{scheme}://127.0.0.1:{grpc_port}");
        let mut dispatch_cmd = Command::new(bin("dispatch"));
        dispatch_cmd
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--redis-url", &redis_url, "--nats-url", &nats_url]);
        let mut access = None;
        let mut worker_flags: Vec<std::ffi::OsString> = Vec::new();
        let mut worker_env = Vec::new();
        if let Some(l) = &links {
            let keys = dir.path().join("keys.txt");
            let (admin, worker) = (new_key(&keys, "admin")?, new_key(&keys, "worker")?);
            let set = |k: &str, v: &str| ["--set".to_string(), format!("{k}={v}")];
            dispatch_cmd
                .arg("--auth-keys")
                .arg(&keys)
                .arg("--tls-cert")
                .arg(&l.pki.cert)
                .arg("--tls-key")
                .arg(&l.pki.key)
                .args(set("redis.username", &l.redis.username))
                .args(set("redis.password_file", &l.redis.password_file))
                .args(set("redis.tls_ca_file", &l.redis.tls_ca_file))
                .args(set("nats.user", &l.nats.user))
                .args(set("nats.password_file", &l.nats.password_file))
                .args(set("nats.tls_ca_file", &l.nats.tls_ca_file));
            for (flag, v) in [
                ("--ca-cert", l.pki.ca.as_os_str()),
                ("--nats-user", l.nats.user.as_ref()),
                ("--nats-password-file", l.nats.password_file.as_ref()),
                ("--nats-ca-cert", l.nats.tls_ca_file.as_ref()),
            ] {
                worker_flags.extend([flag.into(), v.to_os_string()]);
            }
            // The token from the environment, as the worker's help advises.
            worker_env.push(("DISPATCH_TOKEN", worker));
            access = Some(Access {
                token: admin,
                ca: l.pki.ca.clone(),
                nats: l.nats.clone(),
            });
        }
        let dispatch = spawn_logged(&mut dispatch_cmd, &dir.path().join("dispatch.log"))?;
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
                    .args(["--nats-url", &nats_url, "--queues", &queues.join(",")])
                    .args(&worker_flags)
                    .envs(worker_env.iter().map(|(k, v)| (k, v))),
                &dir.path().join(format!("worker-{i}.log")),
            )?);
        }
        let worker_pid = workers[0].0.id();
        let stack = Stack {
            grpc_url,
            nats_url,
            // Secured, the memory phase is skipped: security does not change a record's size.
            redis_url: (!opts.secure).then_some(redis_url),
            dispatch_pid: Some(dispatch_pid),
            worker_pid: Some(worker_pid),
            pids: vec![
                ("redis", redis.0.id()),
                ("nats", nats.0.id()),
                ("dispatch", dispatch_pid),
                ("worker", worker_pid),
                ("bench", std::process::id()),
            ],
            access,
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
            if let Ok(c) = self.client().await
                && c.jobs()
                    .list_queues(dispatch_client::pb::ListQueuesRequest {})
                    .await
                    .is_ok()
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

    /// A gRPC client of dispatch (over TLS with the bench's key when secured).
    pub async fn client(&self) -> anyhow::Result<dispatch_client::Client> {
        match &self.access {
            Some(a) => a.client(&self.grpc_url),
            None => Ok(dispatch_client::Client::connect(self.grpc_url.clone()).await?),
        }
    }

    /// A NATS client (with the credentials and TLS when secured).
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        let auth = self.access.as_ref().map(|a| a.nats.clone()).unwrap_or_default();
        let (opts, servers) = dispatch_client::nats::connect_options(&self.nats_url, &auth)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(opts.connect(servers.as_str()).await?)
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
