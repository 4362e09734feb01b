//! Reads. A read by id goes to the job's partition; listings and counts fan out over every
//! partition in one pipeline and merge.

use std::collections::{BTreeSet, HashMap};

use fred::prelude::*;
use fred::types::Value;

use super::{Error, HistoryEvent, JobRecord, QueueCounts, State, Store, cmd};

/// The lexicographic range of a queue's members (`<queue>:<id>`) in a state index, after
/// `cursor` when given. Queue names hold no ':' or ';', and ';' follows ':'.
fn queue_range(queue: &str, cursor: &str) -> (String, String) {
    let start = if cursor.is_empty() {
        format!("[{queue}:")
    } else {
        format!("({queue}:{cursor}")
    };
    (start, format!("({queue};"))
}

impl Store {
    /// Reads one job.
    pub async fn get(&self, id: &str) -> Result<JobRecord, Error> {
        self.get_each(&[id.to_string()])
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Reads many jobs in one round trip; `None` for a missing one.
    pub async fn get_each(&self, ids: &[String]) -> Result<Vec<Option<JobRecord>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for id in ids {
            let p = self.layout.partition_of(id);
            let _: () = pipeline.hgetall(p.job(id)).await?;
            let _: () = pipeline.get(p.payload(id)).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut it = replies.into_iter();
        for id in ids {
            let (Some(fields), Some(payload)) = (it.next(), it.next()) else {
                return Err(Error::Corrupt("short pipeline reply".into()));
            };
            let mut map: HashMap<String, String> = fields.convert()?;
            if map.is_empty() {
                out.push(None);
                continue;
            }
            if let Some(p) = payload.into_string() {
                map.insert("payload".into(), p);
            }
            out.push(Some(JobRecord::from_fields(id, &map).map_err(Error::Corrupt)?));
        }
        Ok(out)
    }

    /// Reads many jobs in one round trip; missing ones are skipped.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<JobRecord>, Error> {
        Ok(self.get_each(ids).await?.into_iter().flatten().collect())
    }

    /// The job's history after sequence number `after` (0 for the start), at most `count`
    /// events, oldest first. NOT_FOUND when the job does not exist.
    pub async fn history(&self, id: &str, after: u64, count: usize) -> Result<Vec<HistoryEvent>, Error> {
        let key = self.layout.partition_of(id).job(id);
        let fields: HashMap<String, String> = self.client.hgetall(key).await?;
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

    /// Lists job ids of `queues` × `states` after `cursor` (an id, exclusive), in id order
    /// (creation time), at most `limit`. Ids are unique and totally ordered, so paging with the
    /// last id as the cursor never skips or repeats a job that stays put.
    pub async fn list_ids(
        &self,
        queues: &[String],
        states: &[State],
        cursor: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        if queues.is_empty() || states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            for q in queues {
                let (start, end) = queue_range(q, cursor);
                for s in states {
                    let args = vec![
                        p.idx(*s),
                        start.clone(),
                        end.clone(),
                        "BYLEX".into(),
                        "LIMIT".into(),
                        "0".into(),
                        limit.to_string(),
                    ];
                    let _: () = pipeline.custom(cmd("ZRANGE"), args).await?;
                }
            }
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut ids: Vec<String> = replies
            .into_iter()
            .flat_map(|v| if v.is_null() { Vec::new() } else { v.into_array() })
            .filter_map(|v| v.into_string())
            .filter_map(|m| m.split_once(':').map(|(_, id)| id.to_string()))
            .collect();
        ids.sort();
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }

    /// Every queue with jobs, sorted.
    pub async fn queue_names(&self) -> Result<Vec<String>, Error> {
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            let _: () = pipeline.smembers(p.queues()).await?;
        }
        let sets: Vec<Value> = pipeline.all().await?;
        let names: BTreeSet<String> = sets
            .into_iter()
            .flat_map(|v| v.into_array())
            .filter_map(|v| v.into_string())
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Counts per state for each queue (exact: every index entry is a live job).
    pub async fn queue_counts(&self) -> Result<Vec<QueueCounts>, Error> {
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            for q in &names {
                let (start, end) = queue_range(q, "");
                for s in State::ALL {
                    let args = vec![p.idx(s), start.clone(), end.clone()];
                    let _: () = pipeline.custom(cmd("ZLEXCOUNT"), args).await?;
                }
            }
        }
        let counts: Vec<u64> = pipeline.all().await?;
        let per_partition = names.len() * State::ALL.len();
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, name)| QueueCounts {
                name,
                counts: State::ALL
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let at = i * State::ALL.len() + j;
                        (s.as_str(), counts.iter().skip(at).step_by(per_partition).sum())
                    })
                    .collect(),
            })
            .collect())
    }

    /// Redis's clock, in ms since the epoch.
    pub async fn time_ms(&self) -> Result<u64, Error> {
        let t: Vec<String> = self.client.custom(cmd("TIME"), Vec::<String>::new()).await?;
        let part = |i: usize| t.get(i).and_then(|v| v.parse::<u64>().ok());
        match (part(0), part(1)) {
            (Some(s), Some(us)) => Ok(s * 1000 + us / 1000),
            _ => Err(Error::Corrupt(format!("TIME reply {t:?}"))),
        }
    }

    /// The oldest QUEUED job ids of `queue`, across partitions, at most `limit`.
    pub async fn queued_ids(&self, queue: &str, limit: usize) -> Result<Vec<String>, Error> {
        self.list_ids(&[queue.to_string()], &[State::Queued], "", limit).await
    }
}
