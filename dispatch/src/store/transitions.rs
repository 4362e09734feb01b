//! Transitions: each call is one script in the job's partition (a batch: one script per
//! partition it touches, all at once).

use super::{Error, JobRecord, NewJob, Store, record, refusal};

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

impl Store {
    /// A new id for `job`, carrying the partition it goes to: its idempotency key's, else any.
    pub fn new_id(&self, job: &NewJob) -> String {
        self.new_ids(std::slice::from_ref(job)).pop().unwrap_or_default()
    }

    /// New ids for a batch: the jobs without an idempotency key all go to one partition
    /// picked at random (so the batch is one script, as one job would be; batches spread
    /// over the partitions), keyed ones to their key's.
    pub fn new_ids(&self, jobs: &[NewJob]) -> Vec<String> {
        let any = self.layout.any();
        jobs.iter()
            .map(|job| {
                let p = if job.idempotency_key.is_empty() {
                    any
                } else {
                    self.layout.partition_of_key(&job.queue, &job.idempotency_key)
                };
                self.layout.new_id(p)
            })
            .collect()
    }

    /// Creates a job (or returns the existing one for an open idempotency key). `id` comes
    /// from [`Store::new_id`].
    pub async fn create(&self, id: &str, job: &NewJob, idempotency_window_ms: u64) -> Result<Created, Error> {
        let mut created = self
            .create_many(&[id.to_string()], std::slice::from_ref(job), idempotency_window_ms)
            .await?;
        created.pop().ok_or_else(|| Error::Corrupt("empty create reply".into()))
    }

    /// Creates many jobs (`ids[i]` for `jobs[i]`, ids from [`Store::new_id`]): one atomic
    /// step per partition, the partitions at once. Results in order.
    pub async fn create_many(
        &self,
        ids: &[String],
        jobs: &[NewJob],
        idempotency_window_ms: u64,
    ) -> Result<Vec<Created>, Error> {
        let items: Vec<_> = ids
            .iter()
            .zip(jobs)
            .map(|(id, job)| (self.layout.partition_of(id), (id, job)))
            .collect();
        let outcomes = self
            .per_partition(items, |p, items| async move {
                let build = || {
                    let mut keys = Vec::with_capacity(items.len() * 3);
                    let mut args = Vec::with_capacity(items.len() * 14);
                    for (id, job) in &items {
                        let record = p.job(id);
                        // Without an idempotency key the script never reads its slot: the
                        // record's key stands in (same partition, so same cluster slot).
                        let idem = if job.idempotency_key.is_empty() {
                            record.clone()
                        } else {
                            p.idem(&job.queue, &job.idempotency_key)
                        };
                        keys.push(record);
                        keys.push(p.payload(id));
                        keys.push(idem);
                        args.extend(self.create_args(id, job, idempotency_window_ms));
                    }
                    (keys, args)
                };
                self.eval_items(&self.scripts.create, p, items.len(), build).await
            })
            .await?;
        let mut created = Vec::with_capacity(jobs.len());
        let mut existing = Vec::new();
        for (i, reply) in outcomes.into_iter().enumerate() {
            match (reply.first().map(String::as_str), reply.get(1)) {
                (Some("OK"), Some(now)) => {
                    let now = now
                        .parse()
                        .map_err(|_| Error::Corrupt(format!("create time {now:?}")))?;
                    created.push(Some(Created {
                        job: jobs[i].record(&ids[i], now),
                        created: true,
                    }));
                }
                (Some("EXISTS"), Some(id)) => {
                    existing.push((i, id.clone()));
                    created.push(None);
                }
                _ => return Err(Error::Corrupt(format!("create reply {reply:?}"))),
            }
        }
        if !existing.is_empty() {
            let ids: Vec<String> = existing.iter().map(|(_, id)| id.clone()).collect();
            let records = self.get_each(&ids).await?;
            for ((i, id), job) in existing.into_iter().zip(records) {
                // The job of the key expired between the two reads: its key went with it.
                let job = job.ok_or_else(|| Error::FailedPrecondition(format!("job {id} expired; retry the call")))?;
                created[i] = Some(Created { job, created: false });
            }
        }
        created
            .into_iter()
            .map(|c| c.ok_or_else(|| Error::Corrupt("create without result".into())))
            .collect()
    }

    /// The create script's 14 arguments for one job.
    fn create_args(&self, id: &str, job: &NewJob, idempotency_window_ms: u64) -> [String; 14] {
        let b = &job.backoff;
        [
            id.to_string(),
            job.queue.clone(),
            job.job_type.clone(),
            job.payload.clone(),
            job.max_attempts.to_string(),
            format!("{}|{}|{}|{}", b.initial_ms, b.max_ms, b.multiplier, b.jitter),
            job.timeout_ms.to_string(),
            job.run_at_ms.map(|t| t.to_string()).unwrap_or_default(),
            job.idempotency_key.clone(),
            idempotency_window_ms.to_string(),
            serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()),
            job.traceparent.clone(),
            self.retention_for(job),
            job.delay_ms.to_string(),
        ]
    }

    /// QUEUED → RUNNING for many jobs: one atomic step per partition; each claim is granted
    /// or refused on its own.
    pub async fn claim_many(&self, claims: &[Claim]) -> Result<Vec<Result<JobRecord, Error>>, Error> {
        let items: Vec<_> = claims.iter().map(|c| (self.layout.partition_of(&c.id), c)).collect();
        self.per_partition(items, |p, claims| async move {
            let build = || {
                let mut keys = Vec::with_capacity(claims.len() * 2);
                let mut args = Vec::with_capacity(claims.len() * 5);
                for c in &claims {
                    keys.push(p.job(&c.id));
                    keys.push(p.payload(&c.id));
                    args.extend([
                        c.id.clone(),
                        c.attempt.to_string(),
                        c.worker_id.clone(),
                        c.lease_id.clone(),
                        c.lease_ms.to_string(),
                    ]);
                }
                (keys, args)
            };
            let items = self.eval_items(&self.scripts.claim, p, claims.len(), build).await?;
            Ok(items
                .into_iter()
                .zip(&claims)
                .map(|(item, c)| match item.first().map(String::as_str) {
                    Some("OK") => JobRecord::from_claim(&c.id, &c.worker_id, &c.lease_id, item).map_err(Error::Corrupt),
                    Some(status @ ("NOT_FOUND" | "FAILED_PRECONDITION")) => Err(refusal(&c.id, status, &item[1..])),
                    _ => Err(Error::Corrupt(format!("claim reply {item:?}"))),
                })
                .collect())
        })
        .await
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

    /// RUNNING → SUCCEEDED for many jobs: (id, lease id, result JSON); one atomic step per
    /// partition. Each report is recorded or refused on its own.
    pub async fn complete_many(
        &self,
        reports: &[(String, String, String)],
    ) -> Result<Vec<Result<Completed, Error>>, Error> {
        let items: Vec<_> = reports.iter().map(|r| (self.layout.partition_of(&r.0), r)).collect();
        self.per_partition(items, |p, reports| async move {
            let build = || {
                let keys = reports.iter().map(|(id, _, _)| p.job(id)).collect();
                let mut args = Vec::with_capacity(reports.len() * 3);
                for (id, lease_id, result) in &reports {
                    args.extend([id.clone(), lease_id.clone(), result.clone()]);
                }
                (keys, args)
            };
            let items = self
                .eval_items(&self.scripts.complete_many, p, reports.len(), build)
                .await?;
            Ok(items
                .into_iter()
                .zip(&reports)
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
        })
        .await
    }

    /// Runs a one-job script whose reply is a status and the record.
    async fn transition(
        &self,
        script: &fred::types::scripts::Script,
        id: &str,
        args: Vec<String>,
    ) -> Result<JobRecord, Error> {
        let p = self.layout.partition_of(id);
        let reply: Vec<String> = self
            .eval(script, p, || (vec![p.job(id), p.payload(id)], args.clone()))
            .await?;
        Ok(record(id, reply)?.1)
    }

    /// Extends the lease, records progress (JSON text) when given.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_ms: u64,
        progress: Option<String>,
    ) -> Result<Beat, Error> {
        let p = self.layout.partition_of(id);
        let args = vec![
            id.to_string(),
            lease_id.to_string(),
            lease_ms.to_string(),
            if progress.is_some() { "1" } else { "0" }.to_string(),
            progress.unwrap_or_default(),
        ];
        let reply: Vec<String> = self
            .eval(&self.scripts.heartbeat, p, || (vec![p.job(id)], args.clone()))
            .await?;
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
        let args = vec![id.to_string(), lease_id.to_string(), result];
        self.transition(&self.scripts.complete, id, args).await
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
        ];
        self.transition(&self.scripts.fail, id, args).await
    }

    /// Cancels; see `cancel.lua`.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<JobRecord, Error> {
        let args = vec![id.to_string(), reason.to_string()];
        self.transition(&self.scripts.cancel, id, args).await
    }

    /// Re-runs a FAILED or CANCELLED job.
    pub async fn retry(&self, id: &str) -> Result<JobRecord, Error> {
        self.transition(&self.scripts.retry, id, vec![id.to_string()]).await
    }
}
