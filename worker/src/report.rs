//! Reports of an attempt's outcome. Successes are batched: a finished job hands its
//! `CompleteJobRequest` to the reporter and waits for the outcome; the reporter sends whatever
//! has piled up as one `CompleteJobs` call (at most [`MAX_BATCH`] reports, at most
//! [`IN_FLIGHT`] calls at once). Under light load a
//! report goes out alone at once; under heavy load reports share calls, so a worker makes far
//! fewer round trips than jobs. Failures go one by one ([`fail`]).

use std::sync::Arc;

use dispatch_client::pb;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::rpc::{Client, traced, with_retries};

/// Most reports in one call (the server takes up to 1000).
const MAX_BATCH: usize = 500;
/// Most calls in flight at once.
const IN_FLIGHT: usize = 4;

type Item = (pb::CompleteJobRequest, oneshot::Sender<Result<(), Status>>);

/// Handle on the reporter task. Cheap to clone; the task ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct Reporter {
    tx: mpsc::UnboundedSender<Item>,
}

impl Reporter {
    pub(crate) fn start(client: Client) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        Reporter { tx }
    }

    /// Records a success; the outcome of this one report (retried while dispatch is away).
    pub(crate) async fn complete(&self, req: pb::CompleteJobRequest) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .map_err(|_| Status::unavailable("reporter stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("reporter stopped")))
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Item>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free call slot first: meanwhile more reports pile up and go together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut items = vec![first];
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            send(client, items).await;
            drop(slot);
        });
    }
}

async fn send(client: Client, items: Vec<Item>) {
    let (reqs, waiters): (Vec<_>, Vec<_>) = items.into_iter().unzip();
    let r = with_retries(|| {
        let mut c = client.clone();
        let req = pb::CompleteJobsRequest {
            completions: reqs.clone(),
        };
        async move { Ok(c.complete_jobs(req).await?.into_inner()) }
    })
    .await;
    match r {
        Ok(resp) if resp.results.len() == waiters.len() => {
            for (w, res) in waiters.into_iter().zip(resp.results) {
                let outcome = match res.error {
                    Some(e) => Err(Status::new(Code::from(e.code), e.message)),
                    None => Ok(()),
                };
                let _ = w.send(outcome);
            }
        }
        Ok(_) => {
            for w in waiters {
                let _ = w.send(Err(Status::internal(
                    "CompleteJobs answered with the wrong number of results",
                )));
            }
        }
        Err(s) => {
            for w in waiters {
                let _ = w.send(Err(s.clone()));
            }
        }
    }
}

/// Records a failed attempt with FailJob (retried while dispatch is away).
pub(crate) async fn fail(client: &Client, req: pb::FailJobRequest, traceparent: &str) -> Result<(), Status> {
    with_retries(|| {
        let mut c = client.clone();
        let req = traced(req.clone(), traceparent);
        async move { c.fail_job(req).await.map(|_| ()) }
    })
    .await
}
