//! The background steps' writes: due timers (schedules, leases, retention) and the sweeper's
//! re-written run messages. Each step reads what it needs first, then hands every key to one
//! script in the partition, which checks everything again: safe with any number of replicas.

use fred::prelude::*;
use fred::types::Value;

use super::{Error, Partition, Store, cmd};

/// What one timers step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Jobs whose timer was due (at most the limit asked for; that many means "more").
    pub due: usize,
    /// SCHEDULED → QUEUED.
    pub promoted: u64,
    /// RUNNING past its lease → a failed attempt.
    pub reaped: u64,
    /// Finished jobs past their retention, deleted.
    pub expired: u64,
}

/// A job named to the sweeper: its id and the attempts the run stream holds for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepCandidate {
    pub id: String,
    pub attempts_in_stream: Vec<u32>,
}

impl Store {
    /// The ids whose timer is due by Redis's clock, at most `limit` per partition, earliest
    /// first, for every partition that has any: one TIME, then one pipeline of reads (no
    /// script, so nothing waits behind it on the connection while the timers are idle).
    pub async fn due(&self, limit: usize) -> Result<Vec<(Partition, Vec<String>)>, Error> {
        let now = self.time_ms().await?.to_string();
        let limit = limit.to_string();
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            let _: () = pipeline
                .custom(
                    cmd("ZRANGEBYSCORE"),
                    vec![
                        p.timers(),
                        "-inf".into(),
                        now.clone(),
                        "LIMIT".into(),
                        "0".into(),
                        limit.clone(),
                    ],
                )
                .await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        Ok(self
            .layout
            .all()
            .zip(replies)
            .map(|(p, v)| {
                (
                    p,
                    v.into_array()
                        .into_iter()
                        .filter_map(|v| v.into_string())
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect())
    }

    /// One timers step in partition `p`: handles up to `limit` jobs whose timer is due by
    /// Redis's clock (see tick.lua).
    pub async fn tick(&self, p: Partition, limit: usize) -> Result<Tick, Error> {
        let due = self.due(limit).await?;
        match due.into_iter().find(|(q, _)| *q == p) {
            Some((_, ids)) => self.tick_ids(p, ids).await,
            None => Ok(Tick::default()),
        }
    }

    /// One timers step in partition `p` for `ids` (from [`Store::due`]): tick.lua checks
    /// again, by its own clock, that each is due.
    pub async fn tick_ids(&self, p: Partition, ids: Vec<String>) -> Result<Tick, Error> {
        if ids.is_empty() {
            return Ok(Tick::default());
        }
        // The idempotency keys of finished jobs go with them: read their names first.
        let pipeline = self.client.pipeline();
        for id in &ids {
            let _: () = pipeline.hmget(p.job(id), vec!["queue", "idem_key"]).await?;
        }
        let fields: Vec<Value> = pipeline.all().await?;
        let mut keys = Vec::with_capacity(ids.len() * 3);
        for (id, f) in ids.iter().zip(fields) {
            let mut f = f.into_array().into_iter().map(|v| v.into_string());
            let record = p.job(id);
            keys.push(record.clone());
            keys.push(p.payload(id));
            keys.push(match (f.next().flatten(), f.next().flatten()) {
                (Some(queue), Some(key)) if !key.is_empty() => p.idem(&queue, &key),
                _ => record,
            });
        }
        let mut args = vec![rand::random::<f64>().to_string()];
        args.extend(ids.iter().cloned());
        let counts: Vec<u64> = self
            .eval(&self.scripts.tick, p, || (keys.clone(), args.clone()))
            .await?;
        let get = |i: usize| counts.get(i).copied().unwrap_or(0);
        Ok(Tick {
            due: ids.len(),
            promoted: get(0),
            reaped: get(1),
            expired: get(2),
        })
    }

    /// Writes the run message again for those of `jobs` (all in partition `p`) that are still
    /// QUEUED on an attempt the run stream lacks, queued more than `age_ms` ago, and whose
    /// first message has left the outbox (see sweep.lua). Returns how many.
    ///
    /// `floor`: Redis's time when the caller began reading the run stream, or the time of the
    /// oldest entry `p`'s outbox held then if older ([`Store::outbox_heads`]); a job queued
    /// since may have had its message published while the stream was read, so it is left
    /// alone.
    pub async fn sweep(&self, p: Partition, age_ms: u64, floor: u64, jobs: &[SweepCandidate]) -> Result<u64, Error> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = jobs.iter().map(|j| p.job(&j.id)).collect();
        let mut args = Vec::with_capacity(2 + jobs.len() * 2);
        args.push(age_ms.to_string());
        args.push(floor.to_string());
        for j in jobs {
            args.push(j.id.clone());
            let mut present = String::from(",");
            for a in &j.attempts_in_stream {
                present.push_str(&a.to_string());
                present.push(',');
            }
            args.push(present);
        }
        let n: i64 = self
            .eval(&self.scripts.sweep, p, || (keys.clone(), args.clone()))
            .await?;
        Ok(n.max(0) as u64)
    }
}
