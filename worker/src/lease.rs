//! Lease keeping: one loop per worker heartbeats every running job every third of its lease,
//! instead of a task and a timer per job. A job is held from the start of its handler until
//! its [`Held`] guard is dropped; a heartbeat that answers "cancel requested" or "lease not
//! held" stops the job through its token and says why ([`Held::stopped`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dispatch_client::{json, pb};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::rpc::{Client, pb_duration, traced};

/// Why the lease loop stopped a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// CancelJob was called: the attempt ends as failed, not retried.
    Cancelled,
    /// The lease is gone (expired and reaped, or the job moved on): the attempt is abandoned.
    LeaseLost,
}

/// What a running job shares with the lease loop.
pub(crate) struct Job {
    pub job_id: String,
    pub lease_id: String,
    pub traceparent: String,
    /// Progress the handler set since the last heartbeat.
    pub progress: Arc<Mutex<Option<serde_json::Value>>>,
    /// Cancelled to stop the handler.
    pub cancelled: CancellationToken,
}

struct Entry {
    job: Arc<Job>,
    next_beat: Instant,
    /// A heartbeat of this job is on its way (the next waits for its answer).
    beating: bool,
    stopped: Option<Stop>,
}

type Table = Mutex<HashMap<u64, Entry>>;

/// Handle on the lease loop. Cheap to clone; the loop ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct Leases {
    table: Arc<Table>,
    next_key: Arc<std::sync::atomic::AtomicU64>,
    every: Duration,
}

impl Leases {
    /// Starts the loop: heartbeats ask for `lease` and go every third of it.
    pub(crate) fn start(client: Client, lease: Duration) -> Leases {
        let every = (lease / 3).max(Duration::from_millis(10));
        let table: Arc<Table> = Arc::default();
        tokio::spawn(run(Arc::downgrade(&table), client, lease, every));
        Leases {
            table,
            next_key: Arc::default(),
            every,
        }
    }

    /// Keeps `job`'s lease until the guard is dropped.
    pub(crate) fn hold(&self, job: Job) -> Held {
        let key = self.next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            job: Arc::new(job),
            next_beat: Instant::now() + self.every,
            beating: false,
            stopped: None,
        };
        lock(&self.table).insert(key, entry);
        Held {
            table: self.table.clone(),
            key,
        }
    }
}

/// A job whose lease the loop keeps; dropping it lets the lease go.
pub(crate) struct Held {
    table: Arc<Table>,
    key: u64,
}

impl Held {
    /// Why the loop stopped this job, if it did.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        lock(&self.table).get(&self.key).and_then(|e| e.stopped)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.table).remove(&self.key);
    }
}

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes a few times per beat interval and heartbeats the jobs that are due, each on its own
/// task so that a slow answer delays no other job.
async fn run(table: Weak<Table>, client: Client, lease: Duration, every: Duration) {
    let mut tick = tokio::time::interval((every / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(table) = table.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<(u64, Arc<Job>)> = lock(&table)
            .iter_mut()
            .filter(|(_, e)| !e.beating && e.stopped.is_none() && e.next_beat <= now)
            .map(|(k, e)| {
                e.beating = true;
                e.next_beat = now + every;
                (*k, e.job.clone())
            })
            .collect();
        for (key, job) in due {
            let (client, table) = (client.clone(), Arc::downgrade(&table));
            tokio::spawn(async move {
                let stop = beat(client, &job, lease).await;
                let Some(table) = table.upgrade() else { return };
                if let Some(e) = lock(&table).get_mut(&key) {
                    e.beating = false;
                    if stop.is_some() {
                        e.stopped = stop;
                        job.cancelled.cancel();
                    }
                }
            });
        }
    }
}

/// One heartbeat; what it means for the job.
async fn beat(mut client: Client, job: &Job, lease: Duration) -> Option<Stop> {
    let progress = job
        .progress
        .lock()
        .ok()
        .and_then(|mut p| p.take())
        .map(|p| json::to_proto(&p));
    let req = pb::HeartbeatRequest {
        job_id: job.job_id.clone(),
        lease_id: job.lease_id.clone(),
        progress,
        lease_duration: Some(pb_duration(lease)),
    };
    match client.heartbeat(traced(req, &job.traceparent)).await {
        Ok(r) if r.get_ref().cancel_requested => {
            tracing::info!(job_id = %job.job_id, "cancel requested; stopping the job");
            Some(Stop::Cancelled)
        }
        Ok(_) => None,
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => Some(Stop::LeaseLost),
        Err(s) => {
            tracing::warn!(job_id = %job.job_id, error = %s, "heartbeat failed; will retry");
            None
        }
    }
}
