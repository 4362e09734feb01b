//! Prometheus metrics of one dispatch, served as text on `GET /metrics` (HTTP port).
//!
//! Counters and histograms count what this replica did (sum them across replicas); queue
//! depth and outbox gauges are read from Redis at scrape time, so every replica reports the
//! same, whole-system values.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::store::{JobRecord, State, Store, now_ms};

/// Latency buckets in seconds: 1 ms to 10 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Distinct queue names, and job types, that get labels of their own; beyond, callers'
/// names share the label [`OTHER`], so a caller cannot grow the metrics without bound.
pub const MAX_LABEL_VALUES: usize = 500;
/// The label shared by the names beyond [`MAX_LABEL_VALUES`].
pub const OTHER: &str = "_other";

/// A bounded set of label values: the first `cap` seen keep their name.
#[derive(Default)]
struct Capped {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Capped {
    fn label<'a>(&self, value: &'a str, cap: usize) -> &'a str {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value;
        }
        if seen.len() < cap {
            seen.insert(value.to_string());
            return value;
        }
        OTHER
    }
}

/// The metrics of one dispatch. Cheap to clone (the collectors are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub created: IntCounterVec,
    pub started: IntCounterVec,
    pub succeeded: IntCounterVec,
    pub failed: IntCounterVec,
    pub retries: IntCounterVec,
    pub cancelled: IntCounterVec,
    pub enqueue_to_start: HistogramVec,
    pub run_time: HistogramVec,
    pub lease_expiries: IntCounter,
    pub expired: IntCounter,
    pub run_messages_rewritten: IntCounter,
    pub redis_errors: IntCounter,
    pub nats_errors: IntCounterVec,
    pub rejected: IntCounterVec,
    queue_depth: IntGaugeVec,
    outbox_depth: prometheus::IntGauge,
    outbox_age: prometheus::Gauge,
    scrape_errors: IntCounter,
    pub relay_batch: Histogram,
    queues: std::sync::Arc<Capped>,
    types: std::sync::Arc<Capped>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let job = &["queue", "type"];
        let created = counter(
            &r,
            "dispatch_jobs_created_total",
            "Jobs created (idempotent repeats excluded).",
            job,
        );
        let started = counter(&r, "dispatch_jobs_started_total", "Attempts claimed by a worker.", job);
        let succeeded = counter(&r, "dispatch_jobs_succeeded_total", "Jobs that ended SUCCEEDED.", job);
        let failed = counter(
            &r,
            "dispatch_jobs_failed_total",
            "Jobs that ended FAILED (dead-lettered).",
            job,
        );
        let retries = counter(
            &r,
            "dispatch_job_retries_total",
            "Failed attempts that will be retried.",
            job,
        );
        let cancelled = counter(
            &r,
            "dispatch_jobs_cancelled_total",
            "Jobs that ended CANCELLED.",
            &["queue"],
        );
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels)
                .expect("valid metric");
            r.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let enqueue_to_start = histogram(
            "dispatch_job_enqueue_to_start_seconds",
            "From a job becoming due (created, or its retry time) to its claim.",
            &["queue"],
        );
        let run_time = histogram(
            "dispatch_job_run_seconds",
            "From claim to the completion or failure report of an attempt.",
            &["queue", "type"],
        );
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let lease_expiries = single(
            "dispatch_lease_expiries_total",
            "Running attempts whose lease expired (reaped).",
        );
        let expired = single(
            "dispatch_jobs_expired_total",
            "Finished jobs deleted after their retention.",
        );
        let run_messages_rewritten = single(
            "dispatch_run_messages_rewritten_total",
            "Run messages the sweeper wrote again because the run stream lacked them.",
        );
        let redis_errors = single("dispatch_redis_errors_total", "Redis calls that failed.");
        let scrape_errors = single(
            "dispatch_metrics_scrape_errors_total",
            "Scrapes that could not read Redis.",
        );
        let nats_errors = counter(
            &r,
            "dispatch_nats_errors_total",
            "NATS publishes that failed or were not acked.",
            &["op"],
        );
        let rejected = counter(
            &r,
            "dispatch_requests_rejected_total",
            "Requests refused before any write.",
            &["reason"],
        );
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "dispatch_queue_jobs",
                "Jobs per queue and state, read from Redis at scrape time.",
            ),
            &["queue", "state"],
        )
        .expect("valid metric");
        r.register(Box::new(queue_depth.clone())).expect("registered once");
        let outbox_depth =
            prometheus::IntGauge::new("dispatch_outbox_depth", "Outbox entries not yet published to NATS.")
                .expect("valid metric");
        r.register(Box::new(outbox_depth.clone())).expect("registered once");
        let outbox_age = prometheus::Gauge::new(
            "dispatch_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox entry (0 when empty).",
        )
        .expect("valid metric");
        r.register(Box::new(outbox_age.clone())).expect("registered once");
        let relay_batch = Histogram::with_opts(
            HistogramOpts::new(
                "dispatch_relay_batch_size",
                "Messages published per batch (prompt publisher and relay).",
            )
            .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
        )
        .expect("valid metric");
        r.register(Box::new(relay_batch.clone())).expect("registered once");
        Metrics {
            registry: r,
            created,
            started,
            succeeded,
            failed,
            retries,
            cancelled,
            enqueue_to_start,
            run_time,
            lease_expiries,
            expired,
            run_messages_rewritten,
            redis_errors,
            nats_errors,
            rejected,
            queue_depth,
            outbox_depth,
            outbox_age,
            scrape_errors,
            relay_batch,
            queues: Default::default(),
            types: Default::default(),
        }
    }

    /// The label of queue `q` (its name, or [`OTHER`] beyond the cap).
    pub fn queue<'a>(&self, q: &'a str) -> &'a str {
        self.queues.label(q, MAX_LABEL_VALUES)
    }

    /// The label of job type `t` (its name, or [`OTHER`] beyond the cap).
    pub fn job_type<'a>(&self, t: &'a str) -> &'a str {
        self.types.label(t, MAX_LABEL_VALUES)
    }

    /// Counts a claim: started, and the wait since the job became due.
    pub fn on_claim(&self, job: &JobRecord) {
        let queue = self.queue(&job.queue);
        self.started
            .with_label_values(&[queue, self.job_type(&job.job_type)])
            .inc();
        let start = job.started_at_ms.unwrap_or_else(now_ms);
        let waited = start.saturating_sub(job.run_at_ms.max(job.created_at_ms));
        self.enqueue_to_start
            .with_label_values(&[queue])
            .observe(waited as f64 / 1000.0);
    }

    /// Counts a success recorded by a batch report (repeats excluded).
    pub fn on_complete(&self, c: &crate::store::Completed) {
        if c.fresh {
            self.on_end(&c.queue, &c.job_type, State::Succeeded, c.started_at_ms);
        }
    }

    /// Counts the end of an attempt reported by a worker (`started_ms` from before the report).
    pub fn on_report(&self, job: &JobRecord, started_ms: Option<u64>) {
        self.on_end(&job.queue, &job.job_type, job.state, started_ms);
    }

    /// Counts an attempt that ended with the job in `state`.
    fn on_end(&self, queue: &str, job_type: &str, state: State, started_ms: Option<u64>) {
        let queue = self.queue(queue);
        let labels = [queue, self.job_type(job_type)];
        if let Some(s) = started_ms {
            self.run_time
                .with_label_values(&labels)
                .observe(now_ms().saturating_sub(s) as f64 / 1000.0);
        }
        match state {
            State::Succeeded => self.succeeded.with_label_values(&labels).inc(),
            State::Failed => self.failed.with_label_values(&labels).inc(),
            State::Cancelled => self.cancelled.with_label_values(&[queue]).inc(),
            State::Scheduled | State::Queued => self.retries.with_label_values(&labels).inc(),
            State::Running => {}
        }
    }

    /// The text exposition, after refreshing the gauges read from Redis.
    pub async fn render(&self, store: &Store) -> String {
        if let Err(e) = self.refresh(store).await {
            tracing::warn!(error = %e, "metrics: cannot read Redis");
            self.scrape_errors.inc();
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    async fn refresh(&self, store: &Store) -> Result<(), crate::store::Error> {
        let counts = store.queue_counts().await?;
        self.queue_depth.reset();
        for q in counts {
            let queue = self.queue(&q.name);
            for (state, n) in &q.counts {
                // Added, not set: the queues beyond the cap share one series.
                self.queue_depth.with_label_values(&[queue, state]).add(*n as i64);
            }
        }
        let (len, oldest_ms) = store.outbox_stats().await?;
        self.outbox_depth.set(len as i64);
        self.outbox_age
            .set(oldest_ms.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0));
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_beyond_the_cap_share_one_label() {
        let c = Capped::default();
        assert_eq!(c.label("a", 2), "a");
        assert_eq!(c.label("b", 2), "b");
        assert_eq!(c.label("c", 2), OTHER);
        assert_eq!(c.label("a", 2), "a", "a name seen before keeps its label");
        let m = Metrics::new();
        for i in 0..MAX_LABEL_VALUES + 10 {
            let q = format!("q{i}");
            m.created.with_label_values(&[m.queue(&q), m.job_type("t")]).inc();
        }
        let series = prometheus::core::Collector::collect(&m.created)[0].get_metric().len();
        assert_eq!(series, MAX_LABEL_VALUES + 1);
    }
}
