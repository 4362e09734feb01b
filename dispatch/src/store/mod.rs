//! The job store: every job record lives in Redis, and every transition is one Lua script
//! (see `store/lua/`) that checks the expected state and lease, writes the record, and appends
//! the outbound NATS message to its partition's outbox in the same atomic step.
//!
//! Layout of this module, one concern a file:
//! - `keys`: partitions, key names, job ids (which partition a call goes to);
//! - `transitions`: create, claim, heartbeat, complete, fail, cancel, retry;
//! - `queries`: reads across partitions (get, history, list, queue counts);
//! - `timers`: the background steps (schedules, leases, retention) and the sweeper's writes;
//! - `outbox`: what the relay reads and deletes;
//! - `queues`: paused queues, jobs finished per minute, announced workers;
//! - `record`: the domain types parsed from a record.

mod group;
mod keys;
mod outbox;
mod queries;
mod queues;
mod record;
mod timers;
mod transitions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{CustomCommand, FromValue, Value};

pub use group::Committer;
pub use keys::{LEGACY_KEYS, Layout, META, PREFIX, Partition};
pub use outbox::{Delivered, OUTBOX_GROUP, OutboxEntry, OutboxMsg, Prompt, parse_entries};
pub use queues::{MinuteStats, Outcome, STATS_MINUTES};
pub use record::{Backoff, HistoryEvent, JobError, JobRecord, NewJob, QueueCounts, State};
pub use timers::{SweepCandidate, Tick};
pub use transitions::{Beat, Claim, Completed, Created};

use crate::config::Retention;

/// Errors of store operations.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such job. Fatal for the request.
    #[error("job {0} not found")]
    NotFound(String),
    /// The job is not in a state that allows the operation (stale lease, terminal job...).
    /// Fatal for the request; the record is unchanged.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis could not be reached or answered with an error. Retryable.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A record or reply did not have the expected shape. A bug or foreign data.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// This Redis holds data this version cannot use (another layout or partition count).
    /// Fatal at start-up; the message says what to do.
    #[error("{0}")]
    Incompatible(String),
}

struct Scripts {
    create: Script,
    claim: Script,
    complete_many: Script,
    heartbeat: Script,
    complete: Script,
    fail: Script,
    cancel: Script,
    retry: Script,
    tick: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Self {
        let lib = include_str!("lua/lib.lua");
        // The script's body runs as a function so that whatever it returns, its buffered
        // sorted-set and payload writes are applied after it and the messages it queued for
        // NATS go to the outbox as one entry. The reply is { entries to publish now (see
        // delivered() in lib.lua), the body's reply } (in that order: a body's nil reply
        // must not cut the array short).
        let s = |body: &str| {
            Script::from_lua(format!(
                "{lib}\nlocal function main()\n{body}\nend\nlocal reply = main()\nflush_writes()\nflush_outbox()\nreturn {{ delivered(), reply }}\n"
            ))
        };
        Scripts {
            create: s(include_str!("lua/create.lua")),
            claim: s(include_str!("lua/claim.lua")),
            complete_many: s(include_str!("lua/complete_many.lua")),
            heartbeat: s(include_str!("lua/heartbeat.lua")),
            complete: s(include_str!("lua/complete.lua")),
            fail: s(include_str!("lua/fail.lua")),
            cancel: s(include_str!("lua/cancel.lua")),
            retry: s(include_str!("lua/retry.lua")),
            tick: s(include_str!("lua/tick.lua")),
            sweep: s(include_str!("lua/sweep.lua")),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.create,
            &self.claim,
            &self.complete_many,
            &self.heartbeat,
            &self.complete,
            &self.fail,
            &self.cancel,
            &self.retry,
            &self.tick,
            &self.sweep,
        ]
    }
}

/// How the store is laid out, how long finished jobs are kept, and how to log in to Redis.
#[derive(Debug, Clone)]
pub struct Options {
    /// Partitions (1 to 1024); fixed for the life of the data in a Redis.
    pub partitions: u16,
    pub retention: Retention,
    /// Credentials and TLS of the connection (`partitions` there is not read).
    pub link: crate::config::Redis,
}

impl From<&crate::Config> for Options {
    fn from(c: &crate::Config) -> Self {
        Options {
            partitions: c.redis.partitions,
            retention: c.retention.clone(),
            link: c.redis.clone(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partitions: 16,
            retention: Retention::default(),
            link: crate::config::Redis::default(),
        }
    }
}

/// Handle on the Redis store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    scripts: Arc<Scripts>,
    layout: Layout,
    /// The default retention as the scripts take it, "succeeded|failed|cancelled" in ms.
    retention: Str,
    /// Each partition's header keys (`Partition::header`), made once: every script gets them.
    headers: Arc<[Vec<Str>]>,
    /// Per-queue retention overrides, in the same form.
    queue_retention: Arc<BTreeMap<String, String>>,
    /// Prompt publishing: where each script run's outbox entries go (see [`Store::with_prompt`]).
    prompt: Option<Prompt>,
}

/// Milliseconds since the Unix epoch by this machine's clock (for request validation and
/// metrics only: every stored time is Redis's).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The creation time (ms since the epoch) written in a UUIDv7 job id; `None` for other ids.
pub fn id_time_ms(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

/// Builds a fred client that reconnects forever and fails commands fast while Redis is away.
/// `url`: `redis://` (one node), `redis-cluster://HOST:PORT` (one seed is enough),
/// `redis-sentinel://HOST:PORT/DB?sentinelServiceName=NAME`.
pub fn redis_client(url: &str, link: &crate::config::Redis) -> Result<Client, fred::error::Error> {
    Builder::from_config(redis_config(url, link)?)
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.max_command_attempts = 3;
            c.max_redirections = 10;
            c.tcp.nodelay = Some(true);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
}

/// The connection settings of `url` with the credentials and TLS of `link`: its user and
/// password (or password file) replace the URL's; with a `rediss` URL, its CA replaces the
/// system's roots and its certificate is presented. Errors name files, never a secret.
pub fn redis_config(url: &str, link: &crate::config::Redis) -> Result<fred::types::config::Config, fred::error::Error> {
    use fred::error::{Error as RedisError, ErrorKind};
    let bad = |m: String| RedisError::new(ErrorKind::Config, m);
    let mut config = fred::types::config::Config::from_url(url)?;
    if !link.username.is_empty() {
        config.username = Some(link.username.clone());
    }
    if !link.password.is_empty() {
        config.password = Some(link.password.clone());
    } else if !link.password_file.is_empty() {
        let text = std::fs::read_to_string(&link.password_file)
            .map_err(|e| bad(format!("reading the Redis password file {}: {e}", link.password_file)))?;
        let password = text.lines().next().unwrap_or("").trim().to_string();
        if password.is_empty() {
            return Err(bad(format!("the Redis password file {} is empty", link.password_file)));
        }
        config.password = Some(password);
    }
    if config.tls.is_some() && !(link.tls_ca_file.is_empty() && link.tls_cert_file.is_empty()) {
        let tls = crate::listen::client_tls(&link.tls_ca_file, &link.tls_cert_file, &link.tls_key_file)
            .map_err(|e| bad(format!("Redis TLS: {e:#}")))?;
        config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    Ok(config)
}

impl Store {
    /// Connects to Redis, checks (or records) the layout, loads the scripts and creates the
    /// outbox consumer groups.
    pub async fn connect(url: &str, options: Options) -> Result<Store, Error> {
        let client = redis_client(url, &options.link)?;
        client.init().await?;
        let scripts = Scripts::new();
        for s in scripts.all() {
            // Loads on every primary of a cluster.
            s.load(&client).await?;
        }
        let r = &options.retention;
        let layout = Layout {
            partitions: options.partitions.max(1),
        };
        let store = Store {
            client,
            scripts: Arc::new(scripts),
            layout,
            retention: format!("{}|{}|{}", r.succeeded_ms, r.failed_ms, r.cancelled_ms).into(),
            headers: layout
                .all()
                .map(|p| p.header().into_iter().map(Str::from).collect())
                .collect(),
            queue_retention: Arc::new(
                r.queues
                    .iter()
                    .map(|(q, o)| {
                        let pick = |v: Option<u64>, d: u64| v.unwrap_or(d);
                        let packed = format!(
                            "{}|{}|{}",
                            pick(o.succeeded_ms, r.succeeded_ms),
                            pick(o.failed_ms, r.failed_ms),
                            pick(o.cancelled_ms, r.cancelled_ms)
                        );
                        (q.clone(), packed)
                    })
                    .collect(),
            ),
            prompt: None,
        };
        store.check_layout().await?;
        store.ensure_outbox_groups().await?;
        Ok(store)
    }

    /// The underlying client (tests and the watch subscriber use it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Partitions and ids.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Refuses a Redis that holds the layout before partitions, or another partition count;
    /// records the layout in a fresh one.
    async fn check_layout(&self) -> Result<(), Error> {
        for key in LEGACY_KEYS {
            let n: u64 = self.client.exists(key).await?;
            if n > 0 {
                return Err(Error::Incompatible(format!(
                    "this Redis holds jobs in the layout of Dispatch before partitions (key {key} exists). \
                     Let the previous version finish its jobs, then remove its keys \
                     (redis-cli --scan --pattern 'dispatch:*' | grep -v '{{' | xargs redis-cli del), \
                     or point dispatch at another Redis; see docs/operations.md, \"Upgrade\""
                )));
            }
        }
        let p = self.layout.partitions.to_string();
        let _: () = self
            .client
            .custom(cmd("HSETNX"), vec![META, "partitions", p.as_str()])
            .await?;
        let _: () = self
            .client
            .custom(cmd("HSETNX"), vec![META, "layout", keys::LAYOUT_VERSION])
            .await?;
        let (layout, partitions): (Option<String>, Option<String>) =
            self.client.hmget(META, vec!["layout", "partitions"]).await?;
        if layout.as_deref() != Some(keys::LAYOUT_VERSION) {
            return Err(Error::Incompatible(format!(
                "this Redis holds Dispatch data of layout {layout:?}; this version reads layout {}",
                keys::LAYOUT_VERSION
            )));
        }
        if partitions.as_deref() != Some(p.as_str()) {
            return Err(Error::Incompatible(format!(
                "this Redis holds jobs in {} partitions but redis.partitions is {p}: set redis.partitions = {} \
                 (the partition count is fixed for the life of the data)",
                partitions.as_deref().unwrap_or("?"),
                partitions.as_deref().unwrap_or("?"),
            )));
        }
        Ok(())
    }

    /// Runs `script` in partition `p`: the partition's keys then `keys`; the retention then
    /// `args`.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        p: Partition,
        build: impl Fn() -> (Vec<String>, Vec<String>),
    ) -> Result<R, Error> {
        // EVALSHA as a custom command, routed to the partition's slot: unlike fred's own
        // evalsha it is pipelined, so one script's round trip does not hold back every other
        // command on the connection (each of ours is independent; a NOSCRIPT reloads and
        // repeats just that one, its arguments built again by `build` rather than copied in
        // case it is needed).
        let header = &self.headers[usize::from(p.0)];
        let slot = fred::util::redis_keyslot(header[0].as_bytes());
        let command = || CustomCommand::new_static("EVALSHA", fred::types::ClusterHash::Custom(slot), false);
        let call = || {
            let (keys, args) = build();
            let mut call: Vec<Value> = Vec::with_capacity(3 + header.len() + keys.len() + args.len());
            call.push(Value::from(script.sha1().clone()));
            call.push(Value::from((header.len() + keys.len()) as i64));
            call.extend(header.iter().map(|k| Value::String(k.clone())));
            call.extend(keys.into_iter().map(Value::from));
            call.push(Value::String(self.retention.clone()));
            call.extend(args.into_iter().map(Value::from));
            call
        };
        let reply: Value = match self.client.custom(command(), call()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                script.load(&self.client).await?;
                self.client.custom(command(), call()).await?
            }
            r => r?,
        };
        // { entries to publish now, the body's reply } (see Scripts::new).
        let mut parts = reply.into_array().into_iter();
        let delivered = parts.next().unwrap_or(Value::Null);
        if let Some(prompt) = &self.prompt {
            prompt.hand(p, delivered);
        }
        Ok(R::from_value(parts.next().unwrap_or(Value::Null))?)
    }

    /// Runs a batch script of `n` items in partition `p` whose reply is one array of strings
    /// per item.
    async fn eval_items(
        &self,
        script: &Script,
        p: Partition,
        n: usize,
        build: impl Fn() -> (Vec<String>, Vec<String>),
    ) -> Result<Vec<Vec<String>>, Error> {
        let reply: Value = self.eval(script, p, build).await?;
        let items: Vec<Vec<String>> = reply
            .into_array()
            .into_iter()
            .map(|item| item.into_array().into_iter().filter_map(|v| v.into_string()).collect())
            .collect();
        if items.len() != n {
            return Err(Error::Corrupt(format!("batch reply of {} items for {n}", items.len())));
        }
        Ok(items)
    }

    /// Splits `items` by partition (keeping each item's index), runs `f` once per partition,
    /// all at once, and puts the results back in the items' order.
    async fn per_partition<T, R, F, Fut>(&self, items: Vec<(Partition, T)>, f: F) -> Result<Vec<R>, Error>
    where
        F: Fn(Partition, Vec<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<R>, Error>>,
    {
        let n = items.len();
        let mut groups: BTreeMap<Partition, (Vec<usize>, Vec<T>)> = BTreeMap::new();
        for (i, (p, item)) in items.into_iter().enumerate() {
            let g = groups.entry(p).or_default();
            g.0.push(i);
            g.1.push(item);
        }
        let (indexes, calls): (Vec<_>, Vec<_>) = groups.into_iter().map(|(p, (ix, items))| (ix, f(p, items))).unzip();
        let results = futures::future::join_all(calls).await;
        let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
        for (ix, result) in indexes.into_iter().zip(results) {
            let result = result?;
            if result.len() != ix.len() {
                return Err(Error::Corrupt(format!(
                    "{} results for {} items",
                    result.len(),
                    ix.len()
                )));
            }
            for (i, r) in ix.into_iter().zip(result) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| Error::Corrupt("an item without a result".into())))
            .collect()
    }

    /// The retention override to store with a new job ("s|f|c" ms), or "" for the default.
    fn retention_for(&self, job: &NewJob) -> String {
        match job.retention_ms {
            Some(ms) => format!("{ms}|{ms}|{ms}"),
            None => self.queue_retention.get(&job.queue).cloned().unwrap_or_default(),
        }
    }
}

/// Turns a script reply (status word, then either a reason or the record) into a record.
fn record(id: &str, mut reply: Vec<String>) -> Result<(String, JobRecord), Error> {
    if reply.is_empty() {
        return Err(Error::Corrupt("empty script reply".into()));
    }
    let status = reply.remove(0);
    match status.as_str() {
        "NOT_FOUND" | "FAILED_PRECONDITION" => Err(refusal(id, &status, &reply)),
        _ => Ok((status, parse_record(id, reply)?)),
    }
}

/// The error for a script's refusal reply (`NOT_FOUND`, or `FAILED_PRECONDITION` + reason).
fn refusal(id: &str, status: &str, rest: &[String]) -> Error {
    match status {
        "NOT_FOUND" => Error::NotFound(id.to_string()),
        _ => Error::FailedPrecondition(rest.first().cloned().unwrap_or_default()),
    }
}

/// Parses a flat HGETALL-style list into the record of job `id`.
fn parse_record(id: &str, flat: Vec<String>) -> Result<JobRecord, Error> {
    let mut map = std::collections::HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k, v);
    }
    JobRecord::from_fields(id, &map).map_err(Error::Corrupt)
}
