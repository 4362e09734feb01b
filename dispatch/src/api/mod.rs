//! The edge between protobuf and the domain: conversions, request validation, and the one
//! mapping from errors to gRPC statuses.

pub mod validate;

use dispatch_client::json;
use dispatch_client::pb;
use pbjson_types::{Duration, Timestamp};

use crate::store::{self, HistoryEvent, JobRecord, State};

pub use validate::{FieldErrors, Limits};

/// Domain state → protobuf enum value.
pub fn state_to_pb(s: State) -> i32 {
    (match s {
        State::Scheduled => pb::JobState::Scheduled,
        State::Queued => pb::JobState::Queued,
        State::Running => pb::JobState::Running,
        State::Succeeded => pb::JobState::Succeeded,
        State::Failed => pb::JobState::Failed,
        State::Cancelled => pb::JobState::Cancelled,
    }) as i32
}

/// Protobuf enum value → domain state; `None` for UNSPECIFIED or unknown values.
pub fn state_from_pb(v: i32) -> Option<State> {
    match pb::JobState::try_from(v).ok()? {
        pb::JobState::Unspecified => None,
        pb::JobState::Scheduled => Some(State::Scheduled),
        pb::JobState::Queued => Some(State::Queued),
        pb::JobState::Running => Some(State::Running),
        pb::JobState::Succeeded => Some(State::Succeeded),
        pb::JobState::Failed => Some(State::Failed),
        pb::JobState::Cancelled => Some(State::Cancelled),
    }
}

/// Milliseconds since the epoch → Timestamp.
pub fn ts(ms: u64) -> Timestamp {
    Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Milliseconds → Duration.
pub fn dur(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn json_text(text: &str) -> pbjson_types::Value {
    json::to_proto(&serde_json::from_str(text).unwrap_or(serde_json::Value::Null))
}

/// A stored record → the protobuf Job.
pub fn job_to_pb(r: &JobRecord) -> pb::Job {
    pb::Job {
        payload: Some(json_text(&r.payload)),
        ..job_to_pb_without_payload(r)
    }
}

/// [`job_to_pb`] with `payload` unset (a claim that asked for the payload as JSON text).
pub fn job_to_pb_without_payload(r: &JobRecord) -> pb::Job {
    pb::Job {
        id: r.id.clone(),
        queue: r.queue.clone(),
        r#type: r.job_type.clone(),
        payload: None,
        state: state_to_pb(r.state),
        attempt: r.attempt,
        max_attempts: r.retry_base + r.max_attempts,
        backoff: Some(pb::Backoff {
            initial: Some(dur(r.backoff.initial_ms)),
            max: Some(dur(r.backoff.max_ms)),
            multiplier: r.backoff.multiplier,
            jitter: r.backoff.jitter,
        }),
        timeout: Some(dur(r.timeout_ms)),
        run_at: Some(ts(r.run_at_ms)),
        idempotency_key: r.idempotency_key.clone(),
        lease: match (r.state, &r.lease_id, r.lease_deadline_ms) {
            (State::Running, Some(lease_id), Some(deadline)) => Some(pb::Lease {
                worker_id: r.worker_id.clone(),
                lease_id: lease_id.clone(),
                deadline: Some(ts(deadline)),
            }),
            _ => None,
        },
        progress: r.progress.as_deref().map(json_text),
        result: r.result.as_deref().map(json_text),
        error: r.error.as_ref().map(|e| pb::JobError {
            message: e.message.clone(),
            retryable: e.retryable,
            attempt: e.attempt,
        }),
        cancel_requested: r.cancel_requested,
        labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_at: Some(ts(r.created_at_ms)),
        updated_at: Some(ts(r.updated_at_ms)),
        started_at: r.started_at_ms.map(ts),
        finished_at: r.finished_at_ms.map(ts),
        trace_id: trace_id(&r.traceparent),
    }
}

/// The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`); empty for anything
/// else, or the all-zero id.
fn trace_id(traceparent: &str) -> String {
    let mut parts = traceparent.split('-');
    match (parts.next(), parts.next()) {
        (Some(_), Some(id))
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0') =>
        {
            id.to_ascii_lowercase()
        }
        _ => String::new(),
    }
}

/// A history entry → the protobuf event.
pub fn event_to_pb(job: &JobRecord, e: &HistoryEvent) -> pb::JobEvent {
    pb::JobEvent {
        version: 1,
        job_id: job.id.clone(),
        queue: job.queue.clone(),
        r#type: job.job_type.clone(),
        attempt: e.attempt,
        state: state_to_pb(e.state),
        worker_id: e.worker_id.clone(),
        timestamp: Some(ts(e.at_ms)),
        error: e.error.clone(),
        sequence: e.sequence,
    }
}

impl From<store::Error> for tonic::Status {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound(_) => tonic::Status::not_found(e.to_string()),
            store::Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            // Redis away or failing: the caller may retry.
            store::Error::Redis(err) => {
                tracing::warn!(error = %err, "redis error");
                tonic::Status::unavailable(format!("job store unavailable: {err}"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                tonic::Status::internal(other.to_string())
            }
        }
    }
}
