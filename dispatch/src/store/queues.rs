//! Queue-wide state and operator data: paused queues, jobs finished per minute, and the
//! workers that announced themselves.
//!
//! A pause is written twice: into every partition's `paused` set, which claims check in the
//! same step as the claim (so a claim never slips past a pause it could see), and into one
//! hash of when each queue was paused, which listings read. Pausing writes the hash first and
//! resuming removes it last, so a call cut short leaves the queue listed as paused, and
//! calling again finishes it.

use std::collections::{BTreeMap, HashMap};

use fred::prelude::*;
use fred::types::Value;

use super::keys::{PAUSED, STATS_PREFIX, WORKERS};
use super::{Error, Store, cmd};

/// One minute of finished jobs (see [`Store::record_outcomes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteStats {
    /// The minute's start, ms since the epoch.
    pub start_ms: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub cancelled: u64,
}

/// What happened to a job, as counted per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    Failed,
    Retried,
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome an outbox message reports (kind, and the state the job entered), if any.
    pub fn of(kind: &str, state: &str) -> Option<Outcome> {
        match (kind, state) {
            ("complete", _) => Some(Outcome::Succeeded),
            ("failed", "FAILED") => Some(Outcome::Failed),
            ("failed", _) => Some(Outcome::Retried),
            ("cancelled", _) => Some(Outcome::Cancelled),
            _ => None,
        }
    }
}

/// Minutes of per-minute counts kept (a day).
pub const STATS_MINUTES: u64 = 1440;
const MINUTE_MS: u64 = 60_000;

impl Store {
    /// Pauses `queue` (see the module doc). Returns when it was paused (ms), the first time
    /// if it already was.
    pub async fn pause_queue(&self, queue: &str) -> Result<u64, Error> {
        let now = self.time_ms().await?.to_string();
        let _: () = self
            .client
            .custom(cmd("HSETNX"), vec![PAUSED, queue, now.as_str()])
            .await?;
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            let _: () = pipeline.sadd(p.paused(), queue).await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        let at: Option<String> = self.client.hget(PAUSED, queue).await?;
        Ok(at.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Resumes `queue`: claims are granted again. Returns whether it was paused.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool, Error> {
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            let _: () = pipeline.srem(p.paused(), queue).await?;
        }
        let removed: Vec<i64> = pipeline.all().await?;
        let listed: i64 = self.client.hdel(PAUSED, queue).await?;
        Ok(listed > 0 || removed.iter().any(|n| *n > 0))
    }

    /// The paused queues and when each was paused (ms since the epoch).
    pub async fn paused_queues(&self) -> Result<BTreeMap<String, u64>, Error> {
        let all: HashMap<String, String> = self.client.hgetall(PAUSED).await?;
        Ok(all.into_iter().map(|(q, at)| (q, at.parse().unwrap_or(0))).collect())
    }

    /// Adds finished jobs to their minute's counts: (minute start ms, queue, outcome) → n.
    /// Each minute's hash expires a day after it began.
    pub async fn record_outcomes(&self, counts: &BTreeMap<(u64, String, Outcome), u64>) -> Result<(), Error> {
        if counts.is_empty() {
            return Ok(());
        }
        let pipeline = self.client.pipeline();
        let mut minutes = Vec::new();
        for ((minute, queue, outcome), n) in counts {
            let key = format!("{STATS_PREFIX}{}", minute / MINUTE_MS);
            let _: () = pipeline
                .hincrby(&key, format!("{queue}|{}", outcome.as_str()), *n as i64)
                .await?;
            if !minutes.contains(minute) {
                minutes.push(*minute);
                let ttl = (STATS_MINUTES + 1) * MINUTE_MS / 1000;
                let _: () = pipeline.expire(&key, ttl as i64, None).await?;
            }
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// The last `minutes` minutes' counts (the current minute last), of `queue` or of every
    /// queue when it is empty.
    pub async fn stats(&self, queue: &str, minutes: u64) -> Result<Vec<MinuteStats>, Error> {
        let now = self.time_ms().await? / MINUTE_MS;
        let minutes = minutes.clamp(1, STATS_MINUTES);
        let first = now + 1 - minutes;
        let pipeline = self.client.pipeline();
        for m in first..=now {
            let _: () = pipeline.hgetall(format!("{STATS_PREFIX}{m}")).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut out = Vec::with_capacity(minutes as usize);
        for (m, reply) in (first..=now).zip(replies) {
            let fields: HashMap<String, String> = reply.convert()?;
            let mut s = MinuteStats {
                start_ms: m * MINUTE_MS,
                ..MinuteStats::default()
            };
            for (field, n) in fields {
                let Some((q, outcome)) = field.rsplit_once('|') else {
                    continue;
                };
                if !queue.is_empty() && q != queue {
                    continue;
                }
                let n: u64 = n.parse().unwrap_or(0);
                match outcome {
                    "succeeded" => s.succeeded += n,
                    "failed" => s.failed += n,
                    "retried" => s.retried += n,
                    "cancelled" => s.cancelled += n,
                    _ => {}
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Records a worker's announcement (`info` is its JSON, with its last-seen time).
    pub async fn announce_worker(&self, worker_id: &str, info: &str) -> Result<(), Error> {
        let _: () = self.client.hset(WORKERS, (worker_id, info)).await?;
        Ok(())
    }

    /// Every announcement on record (worker id → JSON).
    pub async fn workers(&self) -> Result<BTreeMap<String, String>, Error> {
        let all: HashMap<String, String> = self.client.hgetall(WORKERS).await?;
        Ok(all.into_iter().collect())
    }

    /// Forgets the announcements of these workers.
    pub async fn forget_workers(&self, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self.client.hdel(WORKERS, ids.to_vec()).await?;
        Ok(())
    }

    /// Creation time of the oldest QUEUED job of each queue that has one (ms since the epoch,
    /// from its UUIDv7 id).
    pub async fn oldest_queued(&self, queues: &[String]) -> Result<HashMap<String, u64>, Error> {
        let firsts = futures::future::join_all(queues.iter().map(|q| self.queued_ids(q, 1))).await;
        let mut out = HashMap::new();
        for (q, ids) in queues.iter().zip(firsts) {
            if let Some(t) = ids?.first().and_then(|id| super::id_time_ms(id)) {
                out.insert(q.clone(), t);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_messages_map_to_outcomes() {
        assert_eq!(Outcome::of("complete", "SUCCEEDED"), Some(Outcome::Succeeded));
        assert_eq!(Outcome::of("failed", "FAILED"), Some(Outcome::Failed));
        assert_eq!(Outcome::of("failed", "SCHEDULED"), Some(Outcome::Retried));
        assert_eq!(Outcome::of("failed", "QUEUED"), Some(Outcome::Retried));
        assert_eq!(Outcome::of("cancelled", "CANCELLED"), Some(Outcome::Cancelled));
        assert_eq!(Outcome::of("run", "QUEUED"), None);
        assert_eq!(Outcome::of("processing", "RUNNING"), None);
    }
}
