//! Prometheus metrics of one worker process, served on `GET /metrics` at
//! `WorkerConfig::metrics_addr` when set.

use std::net::SocketAddr;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// The worker's collectors. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub started: IntCounterVec,
    pub succeeded: IntCounterVec,
    pub failed: IntCounterVec,
    pub run_time: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub claims_refused: IntCounterVec,
    pub lease_lost: IntCounterVec,
    pub errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let job = &["queue", "type"];
        let started = counter(
            "worker_jobs_started_total",
            "Attempts claimed and started by this worker.",
            job,
        );
        let succeeded = counter(
            "worker_jobs_succeeded_total",
            "Attempts that succeeded (completion recorded).",
            job,
        );
        let failed = counter(
            "worker_jobs_failed_total",
            "Attempts that failed: handler error, timeout, cancel, hand-back (by reason).",
            &["queue", "type", "reason"],
        );
        let claims_refused = counter(
            "worker_claims_refused_total",
            "Run messages whose claim dispatch refused (stale: already claimed, cancelled...).",
            &["queue"],
        );
        let lease_lost = counter(
            "worker_leases_lost_total",
            "Attempts abandoned because the lease was lost.",
            job,
        );
        let errors = counter(
            "worker_errors_total",
            "Errors talking to NATS (pull) or dispatch (claim, heartbeat, report).",
            &["op"],
        );
        let run_time = HistogramVec::new(
            HistogramOpts::new("worker_job_run_seconds", "Handler run time per attempt.").buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
            ]),
            job,
        )
        .expect("valid metric");
        r.register(Box::new(run_time.clone())).expect("registered once");
        let in_flight = IntGaugeVec::new(Opts::new("worker_jobs_in_flight", "Attempts running now."), &["queue"])
            .expect("valid metric");
        r.register(Box::new(in_flight.clone())).expect("registered once");
        Metrics {
            registry: r,
            started,
            succeeded,
            failed,
            run_time,
            in_flight,
            claims_refused,
            lease_lost,
            errors,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Serves `GET /metrics` on `addr` until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "worker metrics on /metrics");
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = self.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
