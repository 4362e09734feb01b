//! Group commit of single creates. While fewer than [`IN_FLIGHT`] writes are under way, a
//! CreateJob call writes its job itself, at once, in its own task (no hand-over, so no added
//! latency under light load); once that many are under way, calls queue their jobs and wait,
//! and each write that ends takes whatever has queued (at most [`MAX_GROUP`] jobs) as its next
//! group: under load many callers' jobs share one Redis round trip and one outbox entry, as a
//! CreateJobs batch would.
//!
//! Each caller gets the outcome of its own job's partition: jobs without an idempotency key
//! all go to one partition per group, keyed ones to their key's, and each partition is
//! written and answered on its own, so a failure in one never reports another's created jobs
//! as failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Created, Error, NewJob, Store};

/// Most jobs in one group.
pub const MAX_GROUP: usize = 256;
/// Most writes under way at once.
pub const IN_FLIGHT: usize = 2;

type Waiter = oneshot::Sender<Result<Created, Error>>;

/// A write's turn, passed on when dropped.
struct Turn(Committer);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.pass_turn();
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(NewJob, Waiter)>,
    writing: usize,
}

/// The group commit of a store. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    store: Store,
    window_ms: u64,
    queue: Arc<Mutex<Queue>>,
}

impl Committer {
    /// A committer writing to `store`; `idempotency_window_ms` as for [`Store::create_many`].
    pub fn new(store: Store, idempotency_window_ms: u64) -> Committer {
        Committer {
            store,
            window_ms: idempotency_window_ms,
            queue: Arc::default(),
        }
    }

    /// Creates `job` (or finds the existing job of its open idempotency key), sharing the
    /// write with whatever other creates are waiting.
    pub async fn create(&self, job: NewJob) -> Result<Created, Error> {
        let (tx, rx) = oneshot::channel();
        let group = {
            let mut q = self.lock();
            if q.writing >= IN_FLIGHT {
                q.waiting.push((job, tx));
                None
            } else {
                q.writing += 1;
                Some(vec![(job, tx)])
            }
        };
        if let Some(g) = group {
            // The turn passes on even when this call is dropped mid-write (its caller gone).
            let turn = Turn(self.clone());
            commit(&self.store, self.window_ms, g).await;
            drop(turn);
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Corrupt("the group commit dropped a create".into())))
    }

    /// The next group for a write that just ended, or `None` (its turn given back) when no
    /// job is waiting.
    fn next_group(&self) -> Option<Vec<(NewJob, Waiter)>> {
        let mut q = self.lock();
        if q.waiting.is_empty() {
            q.writing -= 1;
            return None;
        }
        let n = q.waiting.len().min(MAX_GROUP);
        Some(q.waiting.drain(..n).collect())
    }

    /// Writes the jobs that queued meanwhile, group after group, on a task of its own (the
    /// caller whose write ended does not wait for them); gives the turn back when none is left.
    fn pass_turn(&self) {
        if let Some(next) = self.next_group() {
            let this = self.clone();
            tokio::spawn(async move {
                let mut g = next;
                loop {
                    commit(&this.store, this.window_ms, g).await;
                    match this.next_group() {
                        Some(n) => g = n,
                        None => break,
                    }
                }
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes one group: one create script per partition, all at once; answers each waiter.
async fn commit(store: &Store, window_ms: u64, items: Vec<(NewJob, Waiter)>) {
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
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    });
    futures::future::join_all(writes).await;
}
