//! Per-caller limits: open watch streams (in total and per API key) and a job-creation rate
//! per API key. Both answer RESOURCE_EXHAUSTED (HTTP 429); the rate limit says when to come
//! back (RetryInfo, `Retry-After`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Identity;

/// Open watch streams per key name.
type PerKey = Arc<Mutex<HashMap<Arc<str>, usize>>>;
/// Tokens left and when they were counted, per key name.
type Buckets = Arc<Mutex<HashMap<Arc<str>, (f64, Instant)>>>;

/// Counts open watch streams.
#[derive(Clone)]
pub struct Watches {
    total: Arc<Semaphore>,
    max_total: usize,
    per_key: PerKey,
    max_per_key: usize,
}

/// Held by an open watch stream; frees its place when dropped.
pub struct WatchSlot {
    _total: OwnedSemaphorePermit,
    key: Option<(Arc<str>, PerKey)>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Some((key, map)) = &self.key {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

impl Watches {
    pub fn new(max_total: usize, max_per_key: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            per_key: Arc::default(),
            max_per_key,
        }
    }

    /// A place for one more stream of `who`, or RESOURCE_EXHAUSTED.
    pub fn open(&self, who: Option<&Identity>) -> Result<WatchSlot, tonic::Status> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "{} watch streams are open, the most dispatch serves (limits.watch_streams); close one or retry later",
                self.max_total
            ))
        })?;
        let key = match who {
            None => None,
            Some(id) => {
                let mut map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
                let n = map.entry(id.name.clone()).or_insert(0);
                if *n >= self.max_per_key {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "key {} has {} watch streams open, the most one key may (limits.watch_streams_per_key)",
                        id.name, self.max_per_key
                    )));
                }
                *n += 1;
                Some((id.name.clone(), self.per_key.clone()))
            }
        };
        Ok(WatchSlot { _total: total, key })
    }
}

/// A token bucket per API key for job creation.
#[derive(Clone)]
pub struct CreateRate {
    per_s: f64,
    burst: f64,
    buckets: Buckets,
}

impl CreateRate {
    /// `per_s` jobs per second with bursts of `burst`; 0 per second means no limit.
    pub fn new(per_s: u64, burst: u64) -> Self {
        Self {
            per_s: per_s as f64,
            burst: burst.max(per_s) as f64,
            buckets: Arc::default(),
        }
    }

    /// Takes `n` jobs from `who`'s bucket, or says how long until they would fit.
    pub fn take(&self, who: Option<&Identity>, n: usize, now: Instant) -> Result<(), Duration> {
        let Some(id) = who else { return Ok(()) };
        if self.per_s <= 0.0 {
            return Ok(());
        }
        let n = n as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(id.name.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_s).min(self.burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            // A batch larger than the burst can never fit: come back when the bucket is full.
            let missing = n.min(self.burst) - *tokens;
            Err(Duration::from_secs_f64((missing / self.per_s).max(0.001)))
        }
    }

    /// RESOURCE_EXHAUSTED with RetryInfo for a refused `take`.
    pub fn refusal(&self, who: &Identity, wait: Duration) -> tonic::Status {
        let mut details = tonic_types::ErrorDetails::new();
        details.set_retry_info(Some(wait));
        <tonic::Status as tonic_types::StatusExt>::with_error_details(
            tonic::Code::ResourceExhausted,
            format!(
                "key {} may create {} jobs per second (limits.create_per_key_per_s); retry in {} ms",
                who.name,
                self.per_s,
                wait.as_millis().max(1)
            ),
            details,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn key(name: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Producer,
            tag: "0000000000000000".into(),
        }
    }

    #[test]
    fn watch_slots_are_capped_in_total_and_per_key() {
        let w = Watches::new(3, 2);
        let (a, b) = (key("a"), key("b"));
        let a1 = w.open(Some(&a)).unwrap();
        let _a2 = w.open(Some(&a)).unwrap();
        assert_eq!(w.open(Some(&a)).err().unwrap().code(), tonic::Code::ResourceExhausted);
        let _b1 = w.open(Some(&b)).unwrap();
        assert!(w.open(Some(&b)).is_err(), "3 open in total");
        drop(a1);
        assert!(w.open(Some(&a)).is_ok(), "a closed one");
    }

    #[test]
    fn creation_rate_refills_and_says_when() {
        let r = CreateRate::new(100, 200);
        let a = key("a");
        let t0 = Instant::now();
        assert!(r.take(Some(&a), 200, t0).is_ok());
        let wait = r.take(Some(&a), 50, t0).unwrap_err();
        assert!((490..=510).contains(&wait.as_millis()), "{wait:?}");
        assert!(r.take(Some(&a), 50, t0 + Duration::from_millis(500)).is_ok());
        assert!(r.take(Some(&key("b")), 200, t0).is_ok(), "buckets are per key");
        assert!(r.take(None, 1_000_000, t0).is_ok(), "no key, no bucket");
        assert!(
            CreateRate::new(0, 0).take(Some(&a), 1_000_000, t0).is_ok(),
            "0 is no limit"
        );
    }
}
