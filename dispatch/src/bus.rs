//! NATS JetStream: connection, streams, and the mapping from outbox entries to messages.
//!
//! Subjects: `job_run.<queue>` (work, stream `DISPATCH_RUN`, work-queue retention) and the
//! events `job_processing.<queue>`, `job_complete.<queue>`, `job_failed.<queue>`,
//! `job_cancelled.<queue>` (stream `DISPATCH_EVENTS`, kept for `events_max_age_s`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use dispatch_client::pb;
use prost::Message;

use crate::config::Streams;
use crate::store::{OutboxMsg, State};

/// Header naming the event kind (`run`, `processing`, `complete`, `failed`, `cancelled`).
pub const KIND_HEADER: &str = "Dispatch-Kind";
/// Header carrying the schema version of the protobuf body.
pub const VERSION_HEADER: &str = "Dispatch-Version";

/// Connects to NATS with `auth`'s credentials and TLS (or the URL's credentials), retrying
/// forever in the background after the first connection. Errors never hold a secret.
pub async fn connect(
    url: &str,
    auth: &dispatch_client::nats::NatsAuth,
    name: &str,
) -> Result<async_nats::Client, String> {
    use async_nats::ConnectErrorKind as Kind;
    // One plain attempt first: a server that is not there yet (refused, timed out, unknown
    // name) is retried in the background; anything else it answers with (a refused login, a
    // TLS handshake it or we reject) is final and said at once.
    let (opts, servers) = dispatch_client::nats::connect_options(url, auth).await?;
    match opts
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        .connect(servers.as_str())
        .await
    {
        Ok(client) => return Ok(client),
        Err(e) if !dispatch_client::nats::not_there_yet(&e) => {
            return Err(match e.kind() {
                Kind::Authentication | Kind::AuthorizationViolation => format!("NATS refused the login: {e}"),
                _ => format!("NATS refused the connection: {e}"),
            });
        }
        Err(_) => {}
    }
    let (opts, servers) = dispatch_client::nats::connect_options(url, auth).await?;
    opts.name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(servers.as_str())
        .await
        .map_err(|e| e.to_string())
}

/// Creates the two streams when missing (file storage).
pub async fn ensure_streams(js: &jetstream::Context, cfg: &Streams) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: cfg.run_stream.clone(),
        subjects: vec!["job_run.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating stream {}: {e}", cfg.run_stream))?;
    js.get_or_create_stream(stream::Config {
        name: cfg.events_stream.clone(),
        subjects: vec![
            "job_processing.>".into(),
            "job_complete.>".into(),
            "job_failed.>".into(),
            "job_cancelled.>".into(),
        ],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_age: Duration::from_secs(cfg.events_max_age_s),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating stream {}: {e}", cfg.events_stream))?;
    Ok(())
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Builds the NATS message for one outbox entry; `None` for an entry of unknown kind.
pub fn outgoing(m: &OutboxMsg) -> Option<Outgoing> {
    let (kind, id, queue, attempt) = (m.kind.as_str(), m.id.as_str(), m.queue.as_str(), m.attempt.as_str());
    let subject_base = match kind {
        "run" => "job_run",
        "processing" => "job_processing",
        "complete" => "job_complete",
        "failed" => "job_failed",
        "cancelled" => "job_cancelled",
        _ => return None,
    };
    let attempt_n: u32 = attempt.parse().unwrap_or(0);
    let payload = if kind == "run" {
        pb::JobRun {
            job_id: id.into(),
            attempt: attempt_n,
            queue: queue.into(),
            r#type: m.job_type.clone(),
            traceparent: String::new(),
        }
        .encode_to_vec()
    } else {
        let ts: u64 = m.ts.parse().unwrap_or(0);
        let mut timestamp = crate::api::ts(ts);
        // The microseconds past the ms (sub-millisecond latency), when the entry has them.
        timestamp.nanos += m.us.parse::<i32>().unwrap_or(0).clamp(0, 999) * 1000;
        pb::JobEvent {
            version: 1,
            job_id: id.into(),
            queue: queue.into(),
            r#type: m.job_type.clone(),
            attempt: attempt_n,
            state: State::parse(&m.state).map(crate::api::state_to_pb).unwrap_or(0),
            worker_id: m.worker_id.clone(),
            timestamp: Some(timestamp),
            error: m.error.clone(),
            sequence: m.seq.parse().unwrap_or(0),
        }
        .encode_to_vec()
    };
    let mut headers = HeaderMap::new();
    let msg_id = if kind == "run" {
        format!("{id}:{attempt}{}", m.sfx)
    } else {
        format!("{id}:{attempt}:{kind}")
    };
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert(KIND_HEADER, kind);
    headers.insert(VERSION_HEADER, "1");
    if !m.tp.is_empty() {
        headers.insert("traceparent", m.tp.as_str());
    }
    Some(Outgoing {
        subject: format!("{subject_base}.{queue}"),
        headers,
        payload: payload.into(),
    })
}

/// Builds one `runs` message for several run entries of one queue (`JobRuns`), each with the
/// trace context to carry. Its `Nats-Msg-Id` is the first job's run message id and the count
/// (`<id>:<attempt>[suffix]+<n>`): the same entry published again repeats it exactly, and a
/// job's run for an attempt is in one entry only.
pub fn outgoing_runs(runs: &[(&OutboxMsg, String)]) -> Outgoing {
    let (first, _) = runs[0];
    let body = pb::JobRuns {
        runs: runs
            .iter()
            .map(|(m, tp)| pb::JobRun {
                job_id: m.id.clone(),
                attempt: m.attempt.parse().unwrap_or(0),
                queue: m.queue.clone(),
                r#type: m.job_type.clone(),
                traceparent: tp.clone(),
            })
            .collect(),
    };
    let mut headers = HeaderMap::new();
    let msg_id = format!("{}:{}{}+{}", first.id, first.attempt, first.sfx, runs.len());
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert(KIND_HEADER, "runs");
    headers.insert(VERSION_HEADER, "1");
    Outgoing {
        subject: format!("job_run.{}", first.queue),
        headers,
        payload: body.encode_to_vec().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str) -> OutboxMsg {
        OutboxMsg {
            kind: kind.into(),
            id: "j1".into(),
            queue: "q".into(),
            job_type: "noop".into(),
            attempt: "2".into(),
            state: "FAILED".into(),
            ts: "1000".into(),
            seq: "4".into(),
            ..OutboxMsg::default()
        }
    }

    #[test]
    fn event_times_keep_their_microseconds() {
        let at = |us: &str| {
            let m = OutboxMsg {
                us: us.into(),
                ..entry("complete")
            };
            pb::JobEvent::decode(outgoing(&m).unwrap().payload)
                .unwrap()
                .timestamp
                .unwrap()
        };
        assert_eq!((at("").seconds, at("").nanos), (1, 0));
        assert_eq!(at("371").nanos, 371_000);
        assert_eq!(at("5000").nanos, 999_000);
    }

    #[test]
    fn run_and_event_messages() {
        let run = outgoing(&entry("run")).unwrap();
        assert_eq!(run.subject, "job_run.q");
        assert_eq!(run.headers.get("Nats-Msg-Id").unwrap().as_str(), "j1:2");
        let body = pb::JobRun::decode(run.payload).unwrap();
        assert_eq!((body.job_id.as_str(), body.attempt), ("j1", 2));

        let failed = outgoing(&entry("failed")).unwrap();
        assert_eq!(failed.subject, "job_failed.q");
        assert_eq!(failed.headers.get("Nats-Msg-Id").unwrap().as_str(), "j1:2:failed");
        let ev = pb::JobEvent::decode(failed.payload).unwrap();
        assert_eq!(ev.state, pb::JobState::Failed as i32);
        assert_eq!(ev.sequence, 4);
        assert!(outgoing(&entry("bogus")).is_none());
    }

    #[test]
    fn several_runs_in_one_message() {
        let a = entry("run");
        let b = OutboxMsg {
            id: "j2".into(),
            attempt: "1".into(),
            ..entry("run")
        };
        let msg = outgoing_runs(&[(&a, "tp-a".into()), (&b, String::new())]);
        assert_eq!(msg.subject, "job_run.q");
        assert_eq!(msg.headers.get(KIND_HEADER).unwrap().as_str(), "runs");
        // Stable for the same entry, distinct from j1's own run message id ("j1:2").
        assert_eq!(msg.headers.get("Nats-Msg-Id").unwrap().as_str(), "j1:2+2");
        let body = pb::JobRuns::decode(msg.payload).unwrap();
        let got: Vec<_> = body
            .runs
            .iter()
            .map(|r| (r.job_id.as_str(), r.attempt, r.queue.as_str(), r.traceparent.as_str()))
            .collect();
        assert_eq!(got, [("j1", 2, "q", "tp-a"), ("j2", 1, "q", "")]);
    }
}
