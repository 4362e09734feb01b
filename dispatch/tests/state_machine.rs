//! Property test of the state machine against a real Redis: random sequences of transitions
//! (valid and invalid, with current and stale leases) never produce an illegal transition,
//! never leave the indexes inconsistent with the record, and a refused operation never
//! changes the record.

use dispatch_testkit as common;

use std::collections::HashMap;

use dispatch::store::{Backoff, NewJob, State, Store};
use fred::prelude::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create {
        delayed: bool,
    },
    Claim {
        job: usize,
        stale_attempt: bool,
        expired_lease: bool,
    },
    Heartbeat {
        job: usize,
        stale: bool,
    },
    Complete {
        job: usize,
        stale: bool,
    },
    Fail {
        job: usize,
        stale: bool,
        retryable: bool,
        now: bool,
    },
    Cancel {
        job: usize,
    },
    Retry {
        job: usize,
    },
    Promote,
    Reap,
}

fn op() -> impl Strategy<Value = Op> {
    let j = 0usize..3;
    prop_oneof![
        any::<bool>().prop_map(|delayed| Op::Create { delayed }),
        (j.clone(), any::<bool>(), any::<bool>()).prop_map(|(job, stale_attempt, expired_lease)| Op::Claim {
            job,
            stale_attempt,
            expired_lease
        }),
        (j.clone(), any::<bool>()).prop_map(|(job, stale)| Op::Heartbeat { job, stale }),
        (j.clone(), any::<bool>()).prop_map(|(job, stale)| Op::Complete { job, stale }),
        (j.clone(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(job, stale, retryable, now)| Op::Fail {
            job,
            stale,
            retryable,
            now
        }),
        j.clone().prop_map(|job| Op::Cancel { job }),
        j.prop_map(|job| Op::Retry { job }),
        Just(Op::Promote),
        Just(Op::Reap),
    ]
}

fn new_job(delayed: bool) -> NewJob {
    NewJob {
        queue: "q".into(),
        job_type: "t".into(),
        payload: "null".into(),
        max_attempts: 2,
        backoff: Backoff {
            initial_ms: 0,
            max_ms: 0,
            multiplier: 1.0,
            jitter: 0.0,
        },
        timeout_ms: 60_000,
        run_at_ms: None,
        delay_ms: if delayed { 1 } else { 0 },
        idempotency_key: String::new(),
        labels: Default::default(),
        traceparent: String::new(),
        retention_ms: None,
    }
}

fn allowed(from: State, to: State) -> bool {
    use State::*;
    from == to
        || matches!(
            (from, to),
            (Scheduled, Queued | Cancelled)
                | (Queued, Running | Cancelled)
                | (Running, Succeeded | Failed | Cancelled | Scheduled | Queued)
                | (Failed | Cancelled, Queued)
        )
}

async fn raw(store: &Store, id: &str) -> HashMap<String, String> {
    let key = store.layout().partition_of(id).job(id);
    store.client().hgetall(key).await.unwrap()
}

/// Checks the record against every index that mentions it.
async fn check_indexes(store: &Store, id: &str) -> Result<(), String> {
    let rec = store.get(id).await.map_err(|e| e.to_string())?;
    let c = store.client();
    let p = store.layout().partition_of(id);
    for s in State::ALL {
        let member: Option<f64> = c.zscore(p.idx(s), format!("q:{id}")).await.unwrap();
        if member.is_some() != (s == rec.state) {
            return Err(format!("idx {} membership wrong for a {:?} job", s.as_str(), rec.state));
        }
    }
    // Every job but a QUEUED one has a timer: run time, lease deadline or expiry.
    let timer: Option<f64> = c.zscore(p.timers(), id).await.unwrap();
    if timer.is_some() == (rec.state == State::Queued) {
        return Err(format!("timer present = {} on a {:?} job", timer.is_some(), rec.state));
    }
    if rec.state == State::Running && timer.map(|t| t as u64) != rec.lease_deadline_ms {
        return Err(format!(
            "timer {timer:?} is not the lease deadline {:?}",
            rec.lease_deadline_ms
        ));
    }
    if rec.lease_id.is_some() != (rec.state == State::Running) {
        return Err(format!(
            "lease present = {} on a {:?} job",
            rec.lease_id.is_some(),
            rec.state
        ));
    }
    if rec.attempt - rec.retry_base > rec.max_attempts {
        return Err(format!(
            "attempt {} beyond budget {}+{}",
            rec.attempt, rec.retry_base, rec.max_attempts
        ));
    }
    Ok(())
}

/// One timers step in every partition (promotes, reaps, expires what is due).
async fn tick_all(store: &Store) -> Result<(), dispatch::store::Error> {
    for p in store.layout().all() {
        store.tick(p, 100).await?;
    }
    Ok(())
}

async fn run_case(store: &Store, ops: Vec<Op>) -> Result<(), String> {
    let _: () = store.client().flushall(false).await.unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut leases: HashMap<String, String> = HashMap::new();
    for (n, op) in ops.into_iter().enumerate() {
        let pick = |j: usize| ids.get(j % ids.len().max(1)).cloned();
        let target = match &op {
            Op::Claim { job, .. }
            | Op::Heartbeat { job, .. }
            | Op::Complete { job, .. }
            | Op::Fail { job, .. }
            | Op::Cancel { job }
            | Op::Retry { job } => pick(*job),
            _ => None,
        };
        let before: HashMap<String, HashMap<String, String>> = {
            let mut m = HashMap::new();
            for id in &ids {
                m.insert(id.clone(), raw(store, id).await);
            }
            m
        };
        let stale = "00000000-0000-0000-0000-000000000000".to_string();
        let lease_of = |id: &str, stale_flag: bool| {
            if stale_flag {
                stale.clone()
            } else {
                leases.get(id).cloned().unwrap_or(stale.clone())
            }
        };
        let result: Result<(), dispatch::store::Error> = match (&op, &target) {
            (Op::Create { delayed }, _) => {
                let job = new_job(*delayed);
                let id = store.new_id(&job);
                store.create(&id, &job, 60_000).await.map(|_| ids.push(id))
            }
            (
                Op::Claim {
                    stale_attempt,
                    expired_lease,
                    ..
                },
                Some(id),
            ) => {
                let rec = store.get(id).await.map_err(|e| e.to_string())?;
                let attempt = if *stale_attempt { rec.attempt + 1 } else { rec.attempt };
                let lease = uuid::Uuid::new_v4().to_string();
                let r = store
                    .claim(id, attempt, "w", &lease, if *expired_lease { 0 } else { 60_000 })
                    .await;
                if r.is_ok() {
                    leases.insert(id.clone(), lease);
                }
                r.map(|_| ())
            }
            (Op::Heartbeat { stale, .. }, Some(id)) => store
                .heartbeat(id, &lease_of(id, *stale), 60_000, None)
                .await
                .map(|_| ()),
            (Op::Complete { stale, .. }, Some(id)) => {
                store.complete(id, &lease_of(id, *stale), "1".into()).await.map(|_| ())
            }
            (
                Op::Fail {
                    stale, retryable, now, ..
                },
                Some(id),
            ) => store
                .fail(id, &lease_of(id, *stale), "boom", *retryable, now.then_some(0))
                .await
                .map(|_| ()),
            (Op::Cancel { .. }, Some(id)) => store.cancel(id, "stop").await.map(|_| ()),
            (Op::Retry { .. }, Some(id)) => store.retry(id).await.map(|_| ()),
            (Op::Promote | Op::Reap, _) => tick_all(store).await,
            _ => Ok(()),
        };
        match &result {
            Err(dispatch::store::Error::FailedPrecondition(_)) | Err(dispatch::store::Error::NotFound(_)) => {
                let id = target.as_ref().unwrap();
                if raw(store, id).await != before[id] {
                    return Err(format!("step {n} {op:?}: refused but the record changed"));
                }
            }
            Err(e) => return Err(format!("step {n} {op:?}: unexpected error {e}")),
            Ok(()) => {}
        }
        for id in &ids {
            check_indexes(store, id)
                .await
                .map_err(|e| format!("step {n} {op:?} job {id}: {e}"))?;
            if let Some(prev) = before.get(id) {
                let from = State::parse(&prev["state"]).unwrap();
                let after = store.get(id).await.map_err(|e| e.to_string())?;
                if !allowed(from, after.state) {
                    return Err(format!("step {n} {op:?}: illegal {from:?} -> {:?}", after.state));
                }
                let prev_attempt: u32 = prev["attempt"].parse().unwrap();
                if after.attempt < prev_attempt {
                    return Err(format!("step {n} {op:?}: attempt went back"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn transitions_keep_every_invariant() {
    // One Redis for all cases, stopped when the test ends (FLUSHALL between cases).
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut redis = common::spawn_redis(dir.path(), port);
    common::wait_ready(
        &mut redis,
        &dir.path().join("redis.log"),
        "Ready to accept connections",
        "redis-server",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A few partitions, so that jobs of one case land in different ones.
    let options = dispatch::store::Options {
        partitions: 4,
        ..Default::default()
    };
    let store = rt
        .block_on(Store::connect(&format!("redis://127.0.0.1:{port}"), options))
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        let r = rt.block_on(run_case(&store, ops));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
