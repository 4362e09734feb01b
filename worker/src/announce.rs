//! Announcing the worker to dispatch (the workers page), and learning the paused queues from
//! the replies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dispatch_client::pb;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::WorkerConfig;
use crate::rpc::{Client, std_duration};

/// Announces the worker to dispatch every interval (dispatch's reply says how often), and
/// keeps `paused` to the paused queues the reply names. While dispatch cannot be reached the
/// worker says so at WARN, naming it, once a minute.
pub(crate) struct Announcer {
    client: Client,
    cfg: WorkerConfig,
    paused: watch::Sender<BTreeSet<String>>,
    started: Duration,
    hostname: String,
    interval: Duration,
    last_warning: Option<std::time::Instant>,
    /// False once dispatch said it takes no announcements (an older version).
    on: bool,
}

impl Announcer {
    pub(crate) fn new(client: Client, cfg: WorkerConfig, paused: watch::Sender<BTreeSet<String>>) -> Self {
        Announcer {
            client,
            cfg,
            paused,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            interval: Duration::from_secs(2),
            last_warning: None,
            on: true,
        }
    }

    pub(crate) async fn run(mut self, slots: Vec<(usize, Arc<Semaphore>)>, shutdown: CancellationToken) {
        while self.on {
            let in_flight = slots
                .iter()
                .map(|(n, s)| n.saturating_sub(s.available_permits()) as u32)
                .sum();
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            self.once(in_flight).await;
        }
    }

    /// One announcement; the paused queues updated from its reply.
    pub(crate) async fn once(&mut self, in_flight: u32) {
        let req = pb::AnnounceRequest {
            worker_id: self.cfg.worker_id.clone(),
            queues: self
                .cfg
                .queues
                .iter()
                .map(|(q, c)| (q.clone(), (*c).max(1) as u32))
                .collect(),
            in_flight,
            hostname: self.hostname.clone(),
            version: concat!("dispatch-worker ", env!("CARGO_PKG_VERSION")).to_string(),
            started_at: Some(pbjson_types::Timestamp {
                seconds: self.started.as_secs() as i64,
                nanos: self.started.subsec_nanos() as i32,
            }),
        };
        match self.client.clone().announce(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if self.last_warning.take().is_some() {
                    tracing::info!(dispatch = %self.cfg.dispatch_url, "dispatch reachable again");
                }
                let now: BTreeSet<String> = r.paused_queues.into_iter().collect();
                self.paused.send_if_modified(|p| {
                    let changed = *p != now;
                    *p = now;
                    changed
                });
                if let Some(d) = std_duration(r.interval.as_ref()).filter(|d| !d.is_zero()) {
                    self.interval = d;
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::info!("dispatch does not take announcements (an older version); not announcing");
                self.on = false;
            }
            Err(s) => {
                if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(dispatch = %self.cfg.dispatch_url, code = ?s.code(), error = %s.message(), "cannot reach dispatch; retrying");
                    self.last_warning = Some(std::time::Instant::now());
                }
            }
        }
    }
}
