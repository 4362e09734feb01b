//! Group commit of single creates. A CreateJob call hands its job to the committer and waits;
//! the committer writes whatever has piled up as one create script per partition (at most
//! [`MAX_GROUP`] jobs, at most [`IN_FLIGHT`] groups being written at once). Under light load
//! a job goes alone at once (no timer, no added latency); under load many callers' jobs share
//! one Redis round trip and one outbox entry, as a CreateJobs batch would.
//!
//! Each caller gets the outcome of its own job's partition: jobs without an idempotency key
//! all go to one partition per group, keyed ones to their key's, and each partition is
//! written and answered on its own, so a failure in one never reports another's created jobs
//! as failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Created, Error, NewJob, Store};

/// Most jobs in one group.
pub const MAX_GROUP: usize = 256;
/// Most groups being written at once.
pub const IN_FLIGHT: usize = 4;

type Item = (NewJob, oneshot::Sender<Result<Created, Error>>);

/// Handle on the committer task. Cheap to clone; the task ends when every handle is gone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Item>,
}

impl Committer {
    /// Starts the committer; `idempotency_window_ms` as for [`Store::create_many`].
    pub fn start(store: Store, idempotency_window_ms: u64) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, idempotency_window_ms, rx));
        Committer { tx }
    }

    /// Creates `job` (or finds the existing job of its open idempotency key), sharing the
    /// write with whatever other creates are waiting.
    pub async fn create(&self, job: NewJob) -> Result<Created, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((job, tx))
            .map_err(|_| Error::Corrupt("the committer stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::Corrupt("the committer dropped a create".into())))
    }
}

async fn run(store: Store, window_ms: u64, mut rx: mpsc::UnboundedReceiver<Item>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: meanwhile more creates pile up and go together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut items = vec![first];
        while items.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            commit(&store, window_ms, items).await;
            drop(slot);
        });
    }
}

/// Writes one group: one create script per partition, all at once; answers each waiter.
async fn commit(store: &Store, window_ms: u64, items: Vec<Item>) {
    let (jobs, waiters): (Vec<NewJob>, Vec<_>) = items.into_iter().unzip();
    let ids = store.new_ids(&jobs);
    let mut parts: BTreeMap<_, (Vec<String>, Vec<NewJob>, Vec<_>)> = BTreeMap::new();
    for ((id, job), waiter) in ids.into_iter().zip(jobs).zip(waiters) {
        let part = parts.entry(store.layout.partition_of(&id)).or_default();
        part.0.push(id);
        part.1.push(job);
        part.2.push(waiter);
    }
    let writes = parts.into_values().map(|(ids, jobs, waiters)| async move {
        match store.create_many(&ids, &jobs, window_ms).await {
            Ok(created) => {
                for (c, w) in created.into_iter().zip(waiters) {
                    let _ = w.send(Ok(c));
                }
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(dup(&e)));
                }
            }
        }
    });
    futures::future::join_all(writes).await;
}

/// The same error again, for every caller of a failed write.
fn dup(e: &Error) -> Error {
    match e {
        Error::NotFound(s) => Error::NotFound(s.clone()),
        Error::FailedPrecondition(s) => Error::FailedPrecondition(s.clone()),
        Error::Redis(r) => Error::Redis(r.clone()),
        Error::Corrupt(s) => Error::Corrupt(s.clone()),
        Error::Incompatible(s) => Error::Incompatible(s.clone()),
    }
}
