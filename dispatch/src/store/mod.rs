//! The job store: every job record lives in Redis, and every transition is one Lua script
//! (see `store/lua/`) that checks the expected state and lease, writes the record, and appends
//! the outbound NATS message to the outbox stream in the same atomic step.

mod record;

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{CustomCommand, Value};

pub use record::{Backoff, HistoryEvent, JobError, JobRecord, NewJob, QueueCounts, State};

/// Key prefix shared with the Lua scripts.
pub const PREFIX: &str = "dispatch:";
/// The outbox stream key.
pub const OUTBOX: &str = "dispatch:outbox";
/// Consumer group of the outbox relays.
pub const OUTBOX_GROUP: &str = "relay";
/// Pub/sub channel carrying the id of every job that changed.
pub const WATCH_CHANNEL: &str = "dispatch:watch";

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
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
}

/// Result of [`Store::create`].
#[derive(Debug, Clone)]
pub struct Created {
    pub job: JobRecord,
    /// False when an idempotency key returned an existing job.
    pub created: bool,
}

/// Result of [`Store::heartbeat`].
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    pub cancel_requested: bool,
    pub lease_deadline_ms: u64,
}

/// One outbox entry, as read by the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub stream_id: String,
    pub fields: HashMap<String, String>,
}

struct Scripts {
    create: Script,
    claim: Script,
    heartbeat: Script,
    complete: Script,
    fail: Script,
    cancel: Script,
    retry: Script,
    promote: Script,
    reap: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Self {
        let lib = include_str!("lua/lib.lua");
        let s = |body: &str| Script::from_lua(format!("{lib}\n{body}"));
        Scripts {
            create: s(include_str!("lua/create.lua")),
            claim: s(include_str!("lua/claim.lua")),
            heartbeat: s(include_str!("lua/heartbeat.lua")),
            complete: s(include_str!("lua/complete.lua")),
            fail: s(include_str!("lua/fail.lua")),
            cancel: s(include_str!("lua/cancel.lua")),
            retry: s(include_str!("lua/retry.lua")),
            promote: s(include_str!("lua/promote.lua")),
            reap: s(include_str!("lua/reap.lua")),
            sweep: s(include_str!("lua/sweep.lua")),
        }
    }
}

/// Handle on the Redis store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    scripts: std::sync::Arc<Scripts>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

/// Builds a fred client that reconnects forever and fails commands fast while Redis is away.
pub fn redis_client(url: &str) -> Result<Client, fred::error::Error> {
    let config = fred::types::config::Config::from_url(url)?;
    Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.max_command_attempts = 2;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
}

impl Store {
    /// Connects to Redis, loads the scripts and creates the outbox consumer group.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        let client = redis_client(url)?;
        client.init().await?;
        let scripts = Scripts::new();
        for s in [
            &scripts.create,
            &scripts.claim,
            &scripts.heartbeat,
            &scripts.complete,
            &scripts.fail,
            &scripts.cancel,
            &scripts.retry,
            &scripts.promote,
            &scripts.reap,
            &scripts.sweep,
        ] {
            s.load(&client).await?;
        }
        let store = Store {
            client,
            scripts: std::sync::Arc::new(scripts),
        };
        store.ensure_outbox_group().await?;
        Ok(store)
    }

    /// The underlying client (tests and the watch subscriber use it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn ensure_outbox_group(&self) -> Result<(), Error> {
        let r: Result<Value, _> = self
            .client
            .custom(cmd("XGROUP"), vec!["CREATE", OUTBOX, OUTBOX_GROUP, "0", "MKSTREAM"])
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn run(&self, script: &Script, args: Vec<String>) -> Result<Vec<String>, Error> {
        let reply: Vec<String> = script
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await?;
        Ok(reply)
    }

    /// Turns a script reply (status word, then either a reason or the record) into a record.
    fn record(id: &str, mut reply: Vec<String>) -> Result<(String, JobRecord), Error> {
        if reply.is_empty() {
            return Err(Error::Corrupt("empty script reply".into()));
        }
        let status = reply.remove(0);
        match status.as_str() {
            "NOT_FOUND" | "FAILED_PRECONDITION" => Err(refusal(id, &status, &reply)),
            _ => Ok((status, parse_record(reply)?)),
        }
    }

    /// Creates a job (or returns the existing one for an open idempotency key).
    pub async fn create(&self, id: &str, job: &NewJob, idempotency_window_ms: u64) -> Result<Created, Error> {
        let now = now_ms();
        let run_at = job.run_at_ms.unwrap_or(now + job.delay_ms);
        let args = vec![
            id.to_string(),
            job.queue.clone(),
            job.job_type.clone(),
            job.payload.clone(),
            job.max_attempts.to_string(),
            job.backoff.initial_ms.to_string(),
            job.backoff.max_ms.to_string(),
            job.backoff.multiplier.to_string(),
            job.backoff.jitter.to_string(),
            job.timeout_ms.to_string(),
            run_at.to_string(),
            job.idempotency_key.clone(),
            idempotency_window_ms.to_string(),
            serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()),
            job.traceparent.clone(),
            now.to_string(),
        ];
        let (status, job) = Self::record(id, self.run(&self.scripts.create, args).await?)?;
        Ok(Created {
            job,
            created: status == "OK",
        })
    }

    /// Reads one job.
    pub async fn get(&self, id: &str) -> Result<JobRecord, Error> {
        let fields: HashMap<String, String> = self.client.hgetall(format!("{PREFIX}job:{id}")).await?;
        if fields.is_empty() {
            return Err(Error::NotFound(id.to_string()));
        }
        JobRecord::from_fields(&fields).map_err(Error::Corrupt)
    }

    /// QUEUED → RUNNING for `attempt`, with a lease.
    pub async fn claim(
        &self,
        id: &str,
        attempt: u32,
        worker_id: &str,
        lease_id: &str,
        lease_ms: u64,
    ) -> Result<JobRecord, Error> {
        let args = vec![
            id.to_string(),
            attempt.to_string(),
            worker_id.to_string(),
            lease_id.to_string(),
            lease_ms.to_string(),
            now_ms().to_string(),
        ];
        Ok(Self::record(id, self.run(&self.scripts.claim, args).await?)?.1)
    }

    /// Extends the lease, records progress (JSON text) when given.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_ms: u64,
        progress: Option<String>,
    ) -> Result<Beat, Error> {
        let args = vec![
            id.to_string(),
            lease_id.to_string(),
            lease_ms.to_string(),
            if progress.is_some() { "1" } else { "0" }.to_string(),
            progress.unwrap_or_default(),
            now_ms().to_string(),
        ];
        let reply = self.run(&self.scripts.heartbeat, args).await?;
        match reply.first().map(String::as_str) {
            Some("OK") if reply.len() == 3 => Ok(Beat {
                cancel_requested: reply[1] == "1",
                lease_deadline_ms: reply[2].parse().map_err(|_| Error::Corrupt("bad deadline".into()))?,
            }),
            Some(status @ ("NOT_FOUND" | "FAILED_PRECONDITION")) => Err(refusal(id, status, &reply[1..])),
            _ => Err(Error::Corrupt(format!("heartbeat reply {reply:?}"))),
        }
    }

    /// RUNNING → SUCCEEDED with a result (JSON text).
    pub async fn complete(&self, id: &str, lease_id: &str, result: String) -> Result<JobRecord, Error> {
        let args = vec![id.to_string(), lease_id.to_string(), result, now_ms().to_string()];
        Ok(Self::record(id, self.run(&self.scripts.complete, args).await?)?.1)
    }

    /// Ends the attempt as failed; see `fail.lua`.
    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
        delay_ms: Option<u64>,
    ) -> Result<JobRecord, Error> {
        let args = vec![
            id.to_string(),
            lease_id.to_string(),
            error.to_string(),
            if retryable { "1" } else { "0" }.to_string(),
            delay_ms.map(|d| d as i64).unwrap_or(-1).to_string(),
            rand::random::<f64>().to_string(),
            now_ms().to_string(),
        ];
        Ok(Self::record(id, self.run(&self.scripts.fail, args).await?)?.1)
    }

    /// Cancels; see `cancel.lua`.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<JobRecord, Error> {
        let args = vec![id.to_string(), reason.to_string(), now_ms().to_string()];
        Ok(Self::record(id, self.run(&self.scripts.cancel, args).await?)?.1)
    }

    /// Re-runs a FAILED or CANCELLED job.
    pub async fn retry(&self, id: &str) -> Result<JobRecord, Error> {
        let args = vec![id.to_string(), now_ms().to_string()];
        Ok(Self::record(id, self.run(&self.scripts.retry, args).await?)?.1)
    }

    async fn count(&self, script: &Script, args: Vec<String>) -> Result<u64, Error> {
        let n: i64 = script
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Scheduler step: promotes up to `limit` due jobs. Returns how many.
    pub async fn promote_due(&self, limit: usize) -> Result<u64, Error> {
        self.count(&self.scripts.promote, vec![now_ms().to_string(), limit.to_string()])
            .await
    }

    /// Reaper step: fails up to `limit` attempts whose lease expired. Returns how many.
    pub async fn reap_expired(&self, limit: usize) -> Result<u64, Error> {
        let args = vec![
            now_ms().to_string(),
            limit.to_string(),
            rand::random::<f64>().to_string(),
        ];
        self.count(&self.scripts.reap, args).await
    }

    /// Sweeper step: re-writes run messages of up to `limit` jobs QUEUED longer than `age_ms`.
    pub async fn sweep_queued(&self, age_ms: u64, limit: usize) -> Result<u64, Error> {
        let args = vec![now_ms().to_string(), age_ms.to_string(), limit.to_string()];
        self.count(&self.scripts.sweep, args).await
    }

    /// The job's history after stream id `after` ("-" for the start), at most `count` events.
    pub async fn history(&self, id: &str, after: &str, count: usize) -> Result<Vec<HistoryEvent>, Error> {
        let start = if after == "-" {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let v: Value = self
            .client
            .custom(
                cmd("XRANGE"),
                vec![
                    format!("{PREFIX}job:{id}:events"),
                    start,
                    "+".into(),
                    "COUNT".into(),
                    count.to_string(),
                ],
            )
            .await?;
        parse_entries(v)?
            .into_iter()
            .map(|e| {
                let f = &e.fields;
                let g = |k: &str| f.get(k).cloned().unwrap_or_default();
                Ok(HistoryEvent {
                    sequence: g("seq").parse().unwrap_or(0),
                    state: State::parse(&g("state"))
                        .ok_or_else(|| Error::Corrupt(format!("history state {:?}", g("state"))))?,
                    attempt: g("attempt").parse().unwrap_or(0),
                    worker_id: g("worker_id"),
                    at_ms: g("ts").parse().unwrap_or(0),
                    error: g("error"),
                    stream_id: e.stream_id,
                })
            })
            .collect()
    }

    /// Lists job ids of `queues` × `states` after `cursor` (exclusive), oldest first.
    pub async fn list_ids(
        &self,
        queues: &[String],
        states: &[State],
        cursor: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let start = if cursor.is_empty() {
            "-".to_string()
        } else {
            format!("({cursor}")
        };
        let pipeline = self.client.pipeline();
        let mut n = 0;
        for q in queues {
            for s in states {
                let _: () = pipeline
                    .custom(
                        cmd("ZRANGE"),
                        vec![
                            format!("{PREFIX}idx:{q}:{}", s.as_str()),
                            start.clone(),
                            "+".into(),
                            "BYLEX".into(),
                            "LIMIT".into(),
                            "0".into(),
                            limit.to_string(),
                        ],
                    )
                    .await?;
                n += 1;
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut ids: Vec<String> = replies
            .into_iter()
            .flat_map(|v| if v.is_null() { Vec::new() } else { v.into_array() })
            .filter_map(|v| v.into_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }

    /// Reads many jobs in one round trip; missing ones are skipped.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<JobRecord>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for id in ids {
            let _: () = pipeline.hgetall(format!("{PREFIX}job:{id}")).await?;
        }
        let maps: Vec<HashMap<String, String>> = pipeline.all().await?;
        maps.into_iter()
            .filter(|m| !m.is_empty())
            .map(|m| JobRecord::from_fields(&m).map_err(Error::Corrupt))
            .collect()
    }

    /// Every queue name seen, sorted.
    pub async fn queue_names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = self.client.smembers(format!("{PREFIX}queues")).await?;
        names.sort();
        Ok(names)
    }

    /// Counts per state for each queue.
    pub async fn queue_counts(&self) -> Result<Vec<QueueCounts>, Error> {
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for q in &names {
            for s in State::ALL {
                let _: () = pipeline.zcard(format!("{PREFIX}idx:{q}:{}", s.as_str())).await?;
            }
        }
        let counts: Vec<u64> = pipeline.all().await?;
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, name)| QueueCounts {
                name,
                counts: State::ALL
                    .iter()
                    .enumerate()
                    .map(|(j, s)| (s.as_str(), counts[i * State::ALL.len() + j]))
                    .collect(),
            })
            .collect())
    }

    /// Relay: up to `count` entries for `consumer`: its own unacknowledged ones first
    /// (a publish that failed), else new ones.
    pub async fn outbox_read(
        &self,
        consumer: &str,
        count: usize,
        pending_first: bool,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let id = if pending_first { "0" } else { ">" };
        let v: Value = self
            .client
            .custom(
                cmd("XREADGROUP"),
                vec![
                    "GROUP",
                    OUTBOX_GROUP,
                    consumer,
                    "COUNT",
                    &count.to_string(),
                    "STREAMS",
                    OUTBOX,
                    id,
                ],
            )
            .await?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        // [[stream, [[id, [k, v, ...]], ...]]]
        let streams = v.into_array();
        let Some(first) = streams.into_iter().next() else {
            return Ok(Vec::new());
        };
        let mut parts = first.into_array().into_iter();
        let _name = parts.next();
        match parts.next() {
            Some(entries) => parse_entries(entries),
            None => Ok(Vec::new()),
        }
    }

    /// Relay: takes over entries another relay left unacknowledged for `idle_ms`.
    pub async fn outbox_autoclaim(&self, consumer: &str, idle_ms: u64, count: usize) -> Result<usize, Error> {
        let v: Value = self
            .client
            .custom(
                cmd("XAUTOCLAIM"),
                vec![
                    OUTBOX,
                    OUTBOX_GROUP,
                    consumer,
                    &idle_ms.to_string(),
                    "0",
                    "COUNT",
                    &count.to_string(),
                    "JUSTID",
                ],
            )
            .await?;
        let mut parts = v.into_array().into_iter();
        let _next = parts.next();
        Ok(parts.next().map(|ids| ids.into_array().len()).unwrap_or(0))
    }

    /// Relay: acknowledges and deletes published entries, in one round trip.
    pub async fn outbox_done(&self, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut ack = vec![OUTBOX.to_string(), OUTBOX_GROUP.to_string()];
        ack.extend(ids.iter().cloned());
        let mut del = vec![OUTBOX.to_string()];
        del.extend(ids.iter().cloned());
        let pipeline = self.client.pipeline();
        let _: () = pipeline.custom(cmd("XACK"), ack).await?;
        let _: () = pipeline.custom(cmd("XDEL"), del).await?;
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Entries waiting in the outbox.
    pub async fn outbox_len(&self) -> Result<u64, Error> {
        Ok(self.client.xlen(OUTBOX).await?)
    }

    /// Entries waiting in the outbox, and when the oldest was written (ms since the epoch; a
    /// stream id starts with its time).
    pub async fn outbox_stats(&self) -> Result<(u64, Option<u64>), Error> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline.xlen(OUTBOX).await?;
        let _: () = pipeline
            .custom(
                cmd("XRANGE"),
                vec![OUTBOX.to_string(), "-".into(), "+".into(), "COUNT".into(), "1".into()],
            )
            .await?;
        let (len, first): (u64, Value) = pipeline.all().await?;
        let oldest = match first {
            Value::Array(entries) => entries.first().and_then(|e| match e {
                Value::Array(parts) => parts.first().and_then(|id| id.as_string()),
                _ => None,
            }),
            _ => None,
        }
        .and_then(|id| id.split('-').next().and_then(|ms| ms.parse().ok()));
        Ok((len, oldest))
    }
}

/// The error for a script's refusal reply (`NOT_FOUND`, or `FAILED_PRECONDITION` + reason).
fn refusal(id: &str, status: &str, rest: &[String]) -> Error {
    match status {
        "NOT_FOUND" => Error::NotFound(id.to_string()),
        _ => Error::FailedPrecondition(rest.first().cloned().unwrap_or_default()),
    }
}

/// Parses a flat HGETALL-style list into a record.
fn parse_record(flat: Vec<String>) -> Result<JobRecord, Error> {
    let mut map = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k, v);
    }
    JobRecord::from_fields(&map).map_err(Error::Corrupt)
}

/// Parses stream entries `[[id, [k, v, ...]], ...]`.
fn parse_entries(v: Value) -> Result<Vec<OutboxEntry>, Error> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    v.into_array()
        .into_iter()
        .map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let stream_id = parts
                .next()
                .and_then(|v| v.into_string())
                .ok_or_else(|| Error::Corrupt("stream entry without id".into()))?;
            let mut fields = HashMap::new();
            let mut kv = parts.next().map(|v| v.into_array()).unwrap_or_default().into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(k), Some(v)) = (k.into_string(), v.into_string()) {
                    fields.insert(k, v);
                }
            }
            Ok(OutboxEntry { stream_id, fields })
        })
        .collect()
}
