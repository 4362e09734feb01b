//! Layered configuration: defaults → TOML file → `DISPATCH_*` environment → flags.
//!
//! Environment variables map onto fields with `__` between sections, e.g.
//! `DISPATCH_GRPC_ADDR`, `DISPATCH_REDIS_URL`, `DISPATCH_JOBS__DEFAULT_TIMEOUT_MS`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything dispatch can be told. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC API (JobService, WorkerService, reflection, health) listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP side listens: the REST gateway (`/api/...`), `/api/openapi.json` and
    /// the `/api/docs` reference.
    pub http_addr: SocketAddr,
    /// Redis holding every job record: one node `redis://127.0.0.1:6379`, a cluster
    /// `redis-cluster://127.0.0.1:7000` (one seed node is enough), or Sentinel
    /// `redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster`.
    pub redis_url: String,
    /// How records are spread in Redis.
    pub redis: Redis,
    /// How long finished jobs are kept.
    pub retention: Retention,
    /// NATS server with JetStream enabled, e.g. `nats://127.0.0.1:4222` (several,
    /// comma-separated; `nats://user:password@host:4222` and `tls://host:4222` work too).
    pub nats_url: String,
    /// NATS credentials and TLS (each secret also from a file).
    pub nats: dispatch_client::nats::NatsAuth,
    /// Defaults and limits for jobs.
    pub jobs: JobDefaults,
    /// Background loops: scheduler, lease reaper, sweeper, outbox relay.
    pub loops: Loops,
    /// JetStream streams created at start-up when missing.
    pub streams: Streams,
    /// The HTTP side: REST gateway limits.
    pub http: Http,
    /// Who may call what.
    pub auth: Auth,
    /// Caps per caller and in total.
    pub limits: RequestLimits,
    /// TLS on both listeners (gRPC and HTTP).
    pub tls: Tls,
}

/// TLS on the gRPC and HTTP listeners (docs/security.md). Off while `cert_file` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// The server's certificate chain, PEM (leaf first).
    pub cert_file: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// CA certificates (PEM) of client certificates: when set, every connection must present
    /// a certificate it signed (mutual TLS), on both listeners.
    pub client_ca_file: String,
    /// A connection that has not finished its TLS handshake this long after it was accepted
    /// is closed.
    pub handshake_timeout_ms: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Caps on what callers may hold or ask for (docs/security.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// WatchJob streams (gRPC and SSE) open at once, over all callers.
    pub watch_streams: usize,
    /// WatchJob streams one API key may hold open at once (authentication on).
    pub watch_streams_per_key: usize,
    /// Largest ListJobs reply, in bytes of protobuf: a page that would pass it ends early,
    /// with a next-page token (a page always holds at least one job).
    pub list_reply_bytes: usize,
    /// Jobs one API key may create per second, on average (0: no limit). Beyond it
    /// RESOURCE_EXHAUSTED (HTTP 429) saying when to retry.
    pub create_per_key_per_s: u64,
    /// Jobs one API key may create at once, above the average.
    pub create_burst_per_key: u64,
    /// HTTP/2 streams (calls in flight) per gRPC connection.
    pub grpc_max_concurrent_streams: u32,
    /// Connections open at once on the gRPC listener; beyond it new ones wait to be accepted.
    pub grpc_connections: usize,
    /// Connections open at once on the HTTP listener; beyond it new ones wait to be accepted.
    pub http_connections: usize,
    /// Calls to the worker RPCs (ClaimJobs, Heartbeat, CompleteJobs, FailJob, ...) handled at
    /// once; a call beyond it waits up to `worker_admission_wait_ms` for a turn, then gets
    /// RESOURCE_EXHAUSTED (HTTP 429) saying when to retry.
    pub worker_calls: usize,
    /// How long a worker call waits for a turn before it is refused.
    pub worker_admission_wait_ms: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            watch_streams: 10_000,
            watch_streams_per_key: 100,
            list_reply_bytes: 2 << 20,
            create_per_key_per_s: 50_000,
            create_burst_per_key: 100_000,
            grpc_max_concurrent_streams: 1024,
            grpc_connections: 10_000,
            http_connections: 10_000,
            worker_calls: 4_096,
            worker_admission_wait_ms: 1_000,
        }
    }
}

/// Authentication (docs/security.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// The API keys file (`dispatch keys create` writes it); empty turns authentication off.
    /// Re-read when it changes, so deleting a line revokes that key without a restart.
    pub keys_file: String,
    /// Allow listening on a non-loopback address with authentication off. Anyone who can
    /// reach the ports can then read and change every job: a warning is logged at start and
    /// every hour.
    pub insecure: bool,
}

/// Store layout, and the Redis connection's credentials and TLS.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// Partitions the records are spread over (1 to 1024), each in one Redis Cluster slot.
    /// Fixed for the life of the data: dispatch refuses to start on a Redis that holds another
    /// count.
    pub partitions: u16,
    /// ACL user (instead of the URL's).
    pub username: String,
    /// Password (instead of the URL's). Prefer `password_file`, or the environment
    /// (`DISPATCH_REDIS__PASSWORD`).
    pub password: String,
    /// File whose first line is the password.
    pub password_file: String,
    /// CA certificates (PEM) to trust for a `rediss://` URL; empty: the system's roots.
    pub tls_ca_file: String,
    /// Client certificate (PEM), for a Redis with `tls-auth-clients yes`; with `tls_key_file`.
    pub tls_cert_file: String,
    /// Private key (PEM) of `tls_cert_file`.
    pub tls_key_file: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("partitions", &self.partitions)
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl Default for Redis {
    fn default() -> Self {
        Self {
            partitions: 16,
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// How long a finished job (record, payload, result, history) is kept before it is deleted.
/// A job's own `options.retention` comes first, then its queue's setting, then these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// SUCCEEDED jobs.
    pub succeeded_ms: u64,
    /// FAILED jobs (the dead letters, kept longer so someone can look and retry).
    pub failed_ms: u64,
    /// CANCELLED jobs.
    pub cancelled_ms: u64,
    /// Per-queue settings, e.g. `[retention.queues.emails] succeeded_ms = 3600000`; a field
    /// left out takes the global value.
    pub queues: BTreeMap<String, QueueRetention>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            succeeded_ms: 24 * 3600 * 1000,
            failed_ms: 7 * 24 * 3600 * 1000,
            cancelled_ms: 24 * 3600 * 1000,
            queues: BTreeMap::new(),
        }
    }
}

/// Retention of one queue; unset fields take the global value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueRetention {
    pub succeeded_ms: Option<u64>,
    pub failed_ms: Option<u64>,
    pub cancelled_ms: Option<u64>,
}

/// REST gateway settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Largest request body accepted, in bytes; beyond it HTTP 413. Matches the gRPC side's
    /// 4 MiB message limit by default.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments on `/api/job/{id}/events`, so proxies keep idle
    /// streams open.
    pub sse_keep_alive_ms: u64,
    /// A request whose headers have not all arrived this long after its first byte (or after
    /// the connection opened) gets its connection closed.
    pub header_timeout_ms: u64,
    /// A request body that has not all arrived this long after its headers: HTTP 408.
    pub body_timeout_ms: u64,
    /// A connection with no request in flight and no traffic this long is closed.
    pub idle_timeout_ms: u64,
    /// Origins whose pages may call the REST API from a browser (CORS), e.g.
    /// `["https://ops.example.com"]`; `"*"` allows any. Empty: none (the default).
    pub cors_origins: Vec<String>,
    /// Where to serve `/metrics` on a listener of its own (plain HTTP, no authentication, for
    /// the Prometheus scraper); empty serves it on `http_addr`.
    pub metrics_addr: String,
    /// Serve the dashboard at `/` (with keys on, it asks for one; its actions need their role).
    pub dashboard: bool,
    /// Jaeger's UI (e.g. `http://127.0.0.1:16686`): the dashboard links a job's trace id to
    /// it. Empty: no link.
    pub jaeger_url: String,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            sse_keep_alive_ms: 15_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            cors_origins: Vec::new(),
            metrics_addr: String::new(),
            dashboard: true,
            jaeger_url: String::new(),
        }
    }
}

/// Defaults applied to a job whose options leave a field unset, and request limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobDefaults {
    /// Attempts in all when `options.maxAttempts` is unset.
    pub max_attempts: u32,
    /// Per-attempt timeout when `options.timeout` is unset.
    pub default_timeout_ms: u64,
    /// First backoff delay.
    pub backoff_initial_ms: u64,
    /// Largest backoff delay.
    pub backoff_max_ms: u64,
    /// Backoff growth per attempt.
    pub backoff_multiplier: f64,
    /// Fraction of each delay randomised.
    pub backoff_jitter: f64,
    /// Lease granted by ClaimJob and Heartbeat when the worker does not ask for one.
    pub lease_ms: u64,
    /// How long an idempotency key maps to its job.
    pub idempotency_window_ms: u64,
    /// Largest payload accepted, in bytes of JSON.
    pub max_payload_bytes: usize,
    /// Jobs that may be in the middle of being created at once (across all callers); beyond
    /// it CreateJob/CreateJobs get RESOURCE_EXHAUSTED, so memory stays bounded under overload.
    pub max_inflight_creates: usize,
}

/// Timing of the background loops.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Loops {
    /// How often due timers are handled: SCHEDULED jobs promoted, expired leases reaped,
    /// finished jobs past their retention deleted.
    pub scheduler_interval_ms: u64,
    /// How often the sweeper compares each queue's QUEUED jobs with the run stream's messages.
    pub sweeper_interval_ms: u64,
    /// A QUEUED job whose run message is missing from the run stream this long after it was
    /// queued gets it written again.
    pub sweep_after_ms: u64,
    /// Longest the relay waits before looking at the outbox again when nothing woke it.
    pub relay_poll_ms: u64,
    /// Outbox entries a relay reads from each partition per batch; an entry holds the
    /// messages of one script run, up to 64.
    pub relay_batch: usize,
    /// `true`: every message the relay publishes waits for its own JetStream ack before its
    /// outbox entry is deleted. `false` (default): in each batch only the last message of
    /// each stream asks for an ack; JetStream stores one connection's messages to a stream in
    /// order, so that ack vouches for the ones before it. Cheaper (one ack round trip per
    /// batch and stream instead of per message); what it gives up is in
    /// docs/reliability.md.
    pub relay_ack_each: bool,
    /// Run messages per NATS message at most: the runs of one queue that one script run made
    /// (a `CreateJobs` batch, say) go out as one `job_run.<queue>` message of kind `runs`
    /// (`JobRuns`, up to this many jobs) instead of one message each, which halves NATS's
    /// work per job (docs/performance.md). 1 publishes one message per job (kind `run`), the
    /// format before; set it for workers written against that. At most 64 (an outbox entry's
    /// messages).
    pub relay_runs_per_message: usize,
    /// `true`: the call that commits a transition hands the outbox entry it wrote to this
    /// dispatch's publisher at once (prompt publishing); the relay only publishes what that
    /// misses (a failed publish, a dispatch that died between commit and publish, entries
    /// written by others). Less CPU per job and a lower median latency at low rates, but a
    /// lower `CreateJobs` rate and no gain in batched throughput (docs/performance.md), and a
    /// longer delay for the messages of a dispatch killed mid-publish (docs/reliability.md).
    /// `false` (default): the relay reads and publishes every entry, woken after each
    /// transition.
    pub relay_prompt: bool,
    /// An outbox entry taken by a relay that went quiet this long is taken over by another.
    pub relay_claim_idle_ms: u64,
    /// A relay consumer idle this long and holding no entry belongs to a dispatch that is
    /// gone: it is removed from the outbox consumer group.
    pub relay_forget_idle_ms: u64,
    /// Fault injection for tests: `false` runs no relay, as if this dispatch always died
    /// between its Redis write and its publish. Never turn it off in production.
    pub relay_enabled: bool,
    /// How often workers announce themselves (told in every Announce reply); ListWorkers
    /// shows a worker heard from within three intervals. A resumed queue is picked up again by
    /// the workers within one interval.
    pub announce_interval_ms: u64,
}

/// JetStream stream settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Streams {
    /// Stream holding `job_run.>` (work-queue retention).
    pub run_stream: String,
    /// Stream holding `job_processing.>`, `job_complete.>`, `job_failed.>`, `job_cancelled.>`.
    pub events_stream: String,
    /// How long events are kept.
    pub events_max_age_s: u64,
    /// Replicas for both streams (1 on a single server).
    pub replicas: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            http_addr: ([127, 0, 0, 1], 8080).into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis: Redis::default(),
            retention: Retention::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            jobs: JobDefaults::default(),
            loops: Loops::default(),
            streams: Streams::default(),
            http: Http::default(),
            auth: Auth::default(),
            limits: RequestLimits::default(),
            tls: Tls::default(),
        }
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            default_timeout_ms: 60_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            backoff_multiplier: 2.0,
            backoff_jitter: 0.2,
            lease_ms: 30_000,
            idempotency_window_ms: 24 * 3600 * 1000,
            max_payload_bytes: 1 << 20,
            max_inflight_creates: 10_000,
        }
    }
}

impl Default for Loops {
    fn default() -> Self {
        Self {
            scheduler_interval_ms: 100,
            sweeper_interval_ms: 5_000,
            sweep_after_ms: 60_000,
            relay_poll_ms: 200,
            relay_batch: 16,
            relay_ack_each: false,
            relay_runs_per_message: 64,
            relay_prompt: false,
            relay_claim_idle_ms: 10_000,
            relay_forget_idle_ms: 600_000,
            relay_enabled: true,
            announce_interval_ms: 2_000,
        }
    }
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            run_stream: "DISPATCH_RUN".into(),
            events_stream: "DISPATCH_EVENTS".into(),
            events_max_age_s: 7 * 24 * 3600,
            replicas: 1,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file, an environment variable or a flag held something invalid.
    #[error("invalid configuration ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads defaults, then `file` if given, then `DISPATCH_*` variables from `env`, then the
    /// `overrides` (already-parsed flags, as `key=value` TOML snippets), and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Self, Error> {
        let mut doc = toml::Table::try_from(Config::default()).map_err(|e| Error::Invalid {
            origin: "defaults".into(),
            message: e.to_string(),
        })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file_doc: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut doc, file_doc);
        }
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix("DISPATCH_") {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                set(&mut doc, &path, &value, &format!("environment {key}"))?;
            }
        }
        for (key, value) in overrides {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            set(&mut doc, &path, value, &format!("flag {key}"))?;
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Invalid {
                origin: "merged configuration".into(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges and relations.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |message: &str| {
            Err(Error::Invalid {
                origin: "validation".into(),
                message: message.into(),
            })
        };
        let j = &self.jobs;
        if j.max_attempts == 0 || j.max_attempts > 1000 {
            return bad("jobs.max_attempts must be 1 to 1000");
        }
        if j.default_timeout_ms == 0 {
            return bad("jobs.default_timeout_ms must be positive");
        }
        if j.lease_ms < 1000 {
            return bad("jobs.lease_ms must be at least 1000");
        }
        if j.backoff_multiplier < 1.0 || !(0.0..=1.0).contains(&j.backoff_jitter) {
            return bad("jobs.backoff_multiplier must be >= 1 and jobs.backoff_jitter within 0..=1");
        }
        if j.backoff_initial_ms > j.backoff_max_ms {
            return bad("jobs.backoff_initial_ms must not exceed jobs.backoff_max_ms");
        }
        if j.max_inflight_creates == 0 {
            return bad("jobs.max_inflight_creates must be positive");
        }
        let h = &self.http;
        if h.max_body_bytes < 1024 || h.sse_keep_alive_ms == 0 {
            return bad("http.max_body_bytes must be at least 1024 and http.sse_keep_alive_ms positive");
        }
        if h.header_timeout_ms == 0 || h.body_timeout_ms == 0 || h.idle_timeout_ms == 0 {
            return bad("http.header_timeout_ms, http.body_timeout_ms and http.idle_timeout_ms must be positive");
        }
        for o in &h.cors_origins {
            let ok = o == "*"
                || o.split_once("://").is_some_and(|(scheme, host)| {
                    matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains(['/', '?', '#'])
                });
            if !ok {
                return bad(&format!(
                    "http.cors_origins: {o:?} is not an origin like https://ops.example.com (no path), or \"*\""
                ));
            }
        }
        if !h.metrics_addr.is_empty() && h.metrics_addr.parse::<SocketAddr>().is_err() {
            return bad("http.metrics_addr must be an address like 127.0.0.1:9090, or empty");
        }
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return bad("tls.cert_file and tls.key_file go together: give both or neither");
        }
        if !t.client_ca_file.is_empty() && t.cert_file.is_empty() {
            return bad("tls.client_ca_file needs tls.cert_file and tls.key_file");
        }
        if t.handshake_timeout_ms == 0 {
            return bad("tls.handshake_timeout_ms must be positive");
        }
        if !(1..=64).contains(&self.loops.relay_runs_per_message) {
            return bad("loops.relay_runs_per_message must be 1 to 64");
        }
        if self.loops.relay_batch == 0 {
            return bad("loops.relay_batch must be positive");
        }
        if !(100..=60_000).contains(&self.loops.announce_interval_ms) {
            return bad("loops.announce_interval_ms must be 100 to 60000");
        }
        if ![
            "redis://",
            "redis-cluster://",
            "redis-sentinel://",
            "rediss://",
            "rediss-cluster://",
            "rediss-sentinel://",
        ]
        .iter()
        .any(|s| self.redis_url.starts_with(s))
        {
            return bad(
                "redis_url must start with redis:// (one node), redis-cluster:// or redis-sentinel://, \
                 or rediss:// (and rediss-cluster://, rediss-sentinel://) for TLS",
            );
        }
        let r = &self.redis;
        let redis_tls = self.redis_url.starts_with("rediss");
        let redis_tls_files = !r.tls_ca_file.is_empty() || !r.tls_cert_file.is_empty();
        if !redis_tls && redis_tls_files {
            return bad("redis.tls_ca_file and redis.tls_cert_file need a rediss:// redis_url");
        }
        if r.tls_cert_file.is_empty() != r.tls_key_file.is_empty() {
            return bad("redis.tls_cert_file and redis.tls_key_file go together");
        }
        if !r.password.is_empty() && !r.password_file.is_empty() {
            return bad("give redis.password or redis.password_file, not both");
        }
        if let Err(e) = self.nats.validate() {
            return bad(&e);
        }
        if self.redis.partitions == 0 || self.redis.partitions > 1024 {
            return bad("redis.partitions must be 1 to 1024");
        }
        let l = &self.limits;
        if l.watch_streams == 0
            || l.watch_streams_per_key == 0
            || l.grpc_max_concurrent_streams == 0
            || l.grpc_connections == 0
            || l.http_connections == 0
            || l.worker_calls == 0
        {
            return bad(
                "limits.watch_streams, watch_streams_per_key, grpc_max_concurrent_streams, grpc_connections, \
                 http_connections and worker_calls must be positive",
            );
        }
        if l.list_reply_bytes < 64 * 1024 {
            return bad("limits.list_reply_bytes must be at least 65536");
        }
        if self.auth.keys_file.is_empty() && !self.auth.insecure {
            for (name, addr) in [("grpc_addr", self.grpc_addr), ("http_addr", self.http_addr)] {
                if !addr.ip().is_loopback() {
                    return bad(&format!(
                        "{name} {addr} is not a loopback address and authentication is off: anyone who \
                         can reach it could read and change every job. Turn keys on (--auth-keys FILE, \
                         see docs/security.md), or pass --insecure to accept that"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `--print-config`, with the secrets in URLs
    /// (passwords, tokens) replaced by `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis_url = redact_url(&self.redis_url);
        shown.nats_url = redact_url(&self.nats_url);
        if !shown.redis.password.is_empty() {
            shown.redis.password = "***".into();
        }
        shown.nats = self.nats.redacted();
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// `url` with its secrets replaced by `***`: the password of `user:password@` (or all of a
/// lone `token@`), and query parameters whose name mentions a pass(word) or token. For logs,
/// errors and printed configuration.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        // A server list (NATS): each URL on its own.
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| {
                    let name = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
                    if name.contains("pass") || name.contains("token") {
                        format!("{}=***", kv.split('=').next().unwrap_or(""))
                    } else {
                        kv.to_string()
                    }
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets a dotted path from a string, typed like the default value already there.
fn set(doc: &mut toml::Table, path: &[String], raw: &str, origin: &str) -> Result<(), Error> {
    let invalid = |message: String| Error::Invalid {
        origin: origin.into(),
        message,
    };
    let (last, parents) = path.split_last().ok_or_else(|| invalid("empty key".into()))?;
    let mut table = doc;
    for p in parents {
        table = match table.get_mut(p) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(invalid(format!("unknown section {p}"))),
        };
    }
    let value = match table.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.into()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.parse()
                .map_err(|_| invalid(format!("{last} must be an integer, got {raw:?}")))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.parse()
                .map_err(|_| invalid(format!("{last} must be a number, got {raw:?}")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.parse()
                .map_err(|_| invalid(format!("{last} must be true or false, got {raw:?}")))?,
        ),
        // A list from the environment or a flag: comma-separated.
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => return Err(invalid(format!("unknown setting {last}"))),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(
            &file,
            "redis_url = \"redis://file:1\"\n[jobs]\ndefault_timeout_ms = 46000\nmax_attempts = 5\n",
        )
        .unwrap();
        let env = vec![
            ("DISPATCH_JOBS__MAX_ATTEMPTS".to_string(), "7".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let flags = vec![("redis_url".to_string(), "redis://flag:2".to_string())];
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.jobs.default_timeout_ms, 46000);
        assert_eq!(c.jobs.max_attempts, 7);
        assert_eq!(c.redis_url, "redis://flag:2");
        assert_eq!(c.nats_url, Config::default().nats_url);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let env = vec![("DISPATCH_JOBS__MAX_ATTEMPTS".to_string(), "many".to_string())];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("max_attempts must be an integer"), "{err}");
        let env = vec![("DISPATCH_NOPE".to_string(), "1".to_string())];
        assert!(
            Config::load(None, env, &[])
                .unwrap_err()
                .to_string()
                .contains("unknown setting")
        );
        let env = vec![("DISPATCH_JOBS__MAX_ATTEMPTS".to_string(), "0".to_string())];
        assert!(Config::load(None, env, &[]).is_err());
        for n in ["0", "65"] {
            let env = vec![("DISPATCH_LOOPS__RELAY_RUNS_PER_MESSAGE".to_string(), n.to_string())];
            let err = Config::load(None, env, &[]).unwrap_err().to_string();
            assert!(err.contains("relay_runs_per_message must be 1 to 64"), "{err}");
        }
    }

    #[test]
    fn secrets_in_urls_are_never_printed() {
        for (url, shown) in [
            (
                "redis://default:s3cret@10.0.0.1:6379/0",
                "redis://default:***@10.0.0.1:6379/0",
            ),
            ("nats://tok3n@nats:4222", "nats://***@nats:4222"),
            (
                "redis-sentinel://s:26379/0?sentinelServiceName=m&sentinelPassword=s3cret",
                "redis-sentinel://s:26379/0?sentinelServiceName=m&sentinelPassword=***",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "nats://a:s3cret@h1:4222,nats://b:s3cret@h2:4222",
                "nats://a:***@h1:4222,nats://b:***@h2:4222",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let flags = vec![
            ("redis_url".to_string(), "redis://u:s3cret@127.0.0.1:1".to_string()),
            ("nats_url".to_string(), "nats://me:s3cret@127.0.0.1:2".to_string()),
            ("redis.password".to_string(), "s3cret".to_string()),
            ("nats.user".to_string(), "me".to_string()),
            ("nats.password".to_string(), "s3cret".to_string()),
        ];
        let printed = Config::load(None, Vec::new(), &flags).unwrap().to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("redis://u:***@127.0.0.1:1"), "{printed}");
    }

    #[test]
    fn non_loopback_without_keys_is_refused_unless_insecure() {
        let open = vec![("grpc_addr".to_string(), "0.0.0.0:50051".to_string())];
        let err = Config::load(None, Vec::new(), &open).unwrap_err().to_string();
        assert!(err.contains("--insecure") && err.contains("--auth-keys"), "{err}");
        let mut insecure = open.clone();
        insecure.push(("auth.insecure".to_string(), "true".to_string()));
        assert!(Config::load(None, Vec::new(), &insecure).is_ok());
        let mut keyed = open;
        keyed.push(("auth.keys_file".to_string(), "/etc/dispatch/keys".to_string()));
        assert!(Config::load(None, Vec::new(), &keyed).is_ok());
        assert!(Config::load(None, Vec::new(), &[]).is_ok(), "loopback needs nothing");
    }

    #[test]
    fn tls_and_http_settings_are_checked() {
        let load = |kv: &[(&str, &str)]| {
            let o: Vec<(String, String)> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Config::load(None, Vec::new(), &o).map_err(|e| e.to_string())
        };
        let err = load(&[("tls.cert_file", "/c.pem")]).unwrap_err();
        assert!(err.contains("tls.key_file"), "{err}");
        let err = load(&[("tls.client_ca_file", "/ca.pem")]).unwrap_err();
        assert!(err.contains("tls.client_ca_file needs"), "{err}");
        assert!(load(&[("tls.cert_file", "/c.pem"), ("tls.key_file", "/k.pem")]).is_ok());
        let err = load(&[("http.metrics_addr", "nine-thousand")]).unwrap_err();
        assert!(err.contains("http.metrics_addr"), "{err}");
        let err = load(&[("http.cors_origins", "https://ops.example.com/path")]).unwrap_err();
        assert!(err.contains("cors_origins"), "{err}");
        let two = load(&[(
            "http.cors_origins",
            "https://ops.example.com:8443, http://127.0.0.1:3000",
        )])
        .unwrap();
        assert_eq!(
            two.http.cors_origins,
            vec!["https://ops.example.com:8443", "http://127.0.0.1:3000"]
        );
        let err = load(&[("http.idle_timeout_ms", "0")]).unwrap_err();
        assert!(err.contains("idle_timeout_ms"), "{err}");
        let err = load(&[("limits.worker_calls", "0")]).unwrap_err();
        assert!(err.contains("worker_calls"), "{err}");
    }

    #[test]
    fn sample_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dispatch.sample.toml");
        let c = Config::load(Some(&path), Vec::new(), &[]).unwrap();
        assert_eq!(c.jobs.default_timeout_ms, 46_000);
    }
}
