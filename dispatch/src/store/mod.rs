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

/// One claim of [`Store::claim_many`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    /// The attempt named in the run message.
    pub attempt: u32,
    pub worker_id: String,
    /// The lease granted when the claim succeeds.
    pub lease_id: String,
    pub lease_ms: u64,
}

/// One recorded success of [`Store::complete_many`].
#[derive(Debug, Clone)]
pub struct Completed {
    /// False when an earlier identical report had recorded it already.
    pub fresh: bool,
    pub queue: String,
    pub job_type: String,
    pub started_at_ms: Option<u64>,
    pub attempt: u32,
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
    complete_many: Script,
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
            complete_many: s(include_str!("lua/complete_many.lua")),
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
            c.tcp.nodelay = Some(true);
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
            &scripts.complete_many,
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
        let mut created = self
            .create_many(&[id.to_string()], std::slice::from_ref(job), idempotency_window_ms)
            .await?;
        created.pop().ok_or_else(|| Error::Corrupt("empty create reply".into()))
    }

    /// A create script's reply: `OK` (the record is the one written, built here) or `EXISTS`
    /// and the existing job's record.
    fn created(id: &str, job: &NewJob, now: u64, reply: Vec<String>) -> Result<Created, Error> {
        if reply.len() == 1 && reply[0] == "OK" {
            return Ok(Created {
                job: job.record(id, now),
                created: true,
            });
        }
        let (status, job) = Self::record(id, reply)?;
        Ok(Created {
            job,
            created: status == "OK",
        })
    }

    /// Creates many jobs in one atomic step (`ids[i]` for `jobs[i]`), in order.
    pub async fn create_many(
        &self,
        ids: &[String],
        jobs: &[NewJob],
        idempotency_window_ms: u64,
    ) -> Result<Vec<Created>, Error> {
        let now = now_ms();
        let mut args = Vec::with_capacity(1 + jobs.len() * 15);
        args.push(now.to_string());
        for (id, job) in ids.iter().zip(jobs) {
            args.extend(create_args(id, job, idempotency_window_ms, now));
        }
        let items = self.run_many(&self.scripts.create, args, jobs.len()).await?;
        items
            .into_iter()
            .zip(ids.iter().zip(jobs))
            .map(|(item, (id, job))| Self::created(id, job, now, item))
            .collect()
    }

    /// Runs a batch script whose reply is one array of strings per item.
    async fn run_many(&self, script: &Script, args: Vec<String>, n: usize) -> Result<Vec<Vec<String>>, Error> {
        let reply: Value = script
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await?;
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

    /// QUEUED → RUNNING for many jobs in one atomic step; each claim is granted or refused on
    /// its own.
    pub async fn claim_many(&self, claims: &[Claim]) -> Result<Vec<Result<JobRecord, Error>>, Error> {
        let now = now_ms();
        let mut args = Vec::with_capacity(1 + claims.len() * 5);
        args.push(now.to_string());
        for c in claims {
            args.extend([
                c.id.clone(),
                c.attempt.to_string(),
                c.worker_id.clone(),
                c.lease_id.clone(),
                (now + c.lease_ms).to_string(),
            ]);
        }
        let items = self.run_many(&self.scripts.claim, args, claims.len()).await?;
        Ok(items
            .into_iter()
            .zip(claims)
            .map(|(item, c)| Self::record(&c.id, item).map(|(_, job)| job))
            .collect())
    }

    /// RUNNING → SUCCEEDED for many jobs in one atomic step: (id, lease id, result JSON).
    /// Each report is recorded or refused on its own.
    pub async fn complete_many(
        &self,
        reports: &[(String, String, String)],
    ) -> Result<Vec<Result<Completed, Error>>, Error> {
        let mut args = Vec::with_capacity(1 + reports.len() * 3);
        args.push(now_ms().to_string());
        for (id, lease_id, result) in reports {
            args.extend([id.clone(), lease_id.clone(), result.clone()]);
        }
        let items = self.run_many(&self.scripts.complete_many, args, reports.len()).await?;
        Ok(items
            .into_iter()
            .zip(reports)
            .map(|(item, (id, _, _))| match item.first().map(String::as_str) {
                Some("OK") if item.len() == 6 => Ok(Completed {
                    fresh: item[1] == "1",
                    queue: item[2].clone(),
                    job_type: item[3].clone(),
                    started_at_ms: item[4].parse().ok(),
                    attempt: item[5].parse().unwrap_or(0),
                }),
                Some(status @ ("NOT_FOUND" | "FAILED_PRECONDITION")) => Err(refusal(id, status, &item[1..])),
                _ => Err(Error::Corrupt(format!("complete reply {item:?}"))),
            })
            .collect())
    }

    /// Reads one job.
    pub async fn get(&self, id: &str) -> Result<JobRecord, Error> {
        self.get_many(&[id.to_string()])
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(id.to_string()))
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
        let claim = Claim {
            id: id.to_string(),
            attempt,
            worker_id: worker_id.to_string(),
            lease_id: lease_id.to_string(),
            lease_ms,
        };
        self.claim_many(std::slice::from_ref(&claim))
            .await?
            .pop()
            .ok_or_else(|| Error::Corrupt("empty claim reply".into()))?
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

    /// The job's history after sequence number `after` (0 for the start), at most `count`
    /// events, oldest first. NOT_FOUND when the job does not exist.
    pub async fn history(&self, id: &str, after: u64, count: usize) -> Result<Vec<HistoryEvent>, Error> {
        let fields: HashMap<String, String> = self.client.hgetall(format!("{PREFIX}job:{id}")).await?;
        if fields.is_empty() {
            return Err(Error::NotFound(id.to_string()));
        }
        let mut events = fields
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix('h')?.parse::<u64>().ok()?, v)))
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, v)| HistoryEvent::parse(seq, v).map_err(Error::Corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.sequence);
        events.truncate(count);
        Ok(events)
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
            let _: () = pipeline.get(format!("{PREFIX}job:{id}:p")).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut it = replies.into_iter();
        while let (Some(fields), Some(payload)) = (it.next(), it.next()) {
            let mut map: HashMap<String, String> = fields.convert()?;
            if map.is_empty() {
                continue;
            }
            if let Some(p) = payload.into_string() {
                map.insert("payload".into(), p);
            }
            out.push(JobRecord::from_fields(&map).map_err(Error::Corrupt)?);
        }
        Ok(out)
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

/// The create script's 15 arguments for one job (without `now`).
fn create_args(id: &str, job: &NewJob, idempotency_window_ms: u64, now: u64) -> Vec<String> {
    vec![
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
        job.run_at(now).to_string(),
        job.idempotency_key.clone(),
        idempotency_window_ms.to_string(),
        serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()),
        job.traceparent.clone(),
    ]
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
            if let Some(packed) = fields.remove("m") {
                // An undecodable entry gets an unknown kind: the relay logs and drops it rather
                // than stall on it.
                fields = unpack_outbox(&packed).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "undecodable outbox entry");
                    HashMap::from([("kind".to_string(), "undecodable".to_string())])
                });
            }
            Ok(OutboxEntry { stream_id, fields })
        })
        .collect()
}

/// Names of the values of a packed outbox entry (field `m`, a JSON array; see `outbox` in
/// lib.lua), in order.
const OUTBOX_FIELDS: [&str; 12] = [
    "kind",
    "id",
    "queue",
    "type",
    "attempt",
    "state",
    "worker_id",
    "ts",
    "error",
    "seq",
    "tp",
    "sfx",
];

/// Decodes a packed outbox entry into its named fields.
fn unpack_outbox(packed: &str) -> Result<HashMap<String, String>, Error> {
    let values: Vec<serde_json::Value> =
        serde_json::from_str(packed).map_err(|e| Error::Corrupt(format!("outbox entry {packed:?}: {e}")))?;
    if values.len() != OUTBOX_FIELDS.len() {
        return Err(Error::Corrupt(format!("outbox entry of {} values", values.len())));
    }
    // Values are strings; a number (cjson encodes Lua numbers as such) is taken as its text.
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(Error::Corrupt(format!("outbox value {other}"))),
    };
    OUTBOX_FIELDS
        .iter()
        .zip(values)
        .map(|(k, v)| Ok((k.to_string(), text(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_outbox_entries_unpack_to_named_fields() {
        let m = r#"["failed","j1","q","noop","2","SCHEDULED","w-1","1700","bad \"x\" | y","4","00-ab-cd-01",""]"#;
        let f = unpack_outbox(m).unwrap();
        assert_eq!(f["kind"], "failed");
        assert_eq!(f["error"], "bad \"x\" | y");
        assert_eq!(f["seq"], "4");
        assert_eq!(f["tp"], "00-ab-cd-01");
        assert_eq!(f["sfx"], "");
        assert!(unpack_outbox(r#"["run","j1"]"#).is_err());
        // A number where a string belongs is read as its text.
        let n = unpack_outbox(r#"["run","j1","q","t",1,"QUEUED","",1700,"",0,"",":s1"]"#).unwrap();
        assert_eq!(
            (n["attempt"].as_str(), n["seq"].as_str(), n["sfx"].as_str()),
            ("1", "0", ":s1")
        );
        assert!(unpack_outbox(r#"["run","j1","q","t",[1],"QUEUED","",1700,"",0,"",""]"#).is_err());
        assert!(unpack_outbox("not json").is_err());
        // An undecodable entry in a stream reply is dropped by the relay, not fatal to the batch.
        let reply = Value::Array(vec![Value::Array(vec![
            Value::from("1-0"),
            Value::Array(vec![Value::from("m"), Value::from("{")]),
        ])]);
        let entries = parse_entries(reply).unwrap();
        assert_eq!(entries[0].fields["kind"], "undecodable");
        assert!(crate::bus::outgoing(&entries[0].fields).is_none());
    }
}
