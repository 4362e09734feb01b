//! Domain types of the job record, parsed from the Redis hash. Conversions to and from the
//! protobuf types live in `api::convert`.

use std::collections::{BTreeMap, HashMap};

/// Where a job is in its life cycle. Stored in Redis by its upper-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    /// Every state, in life-cycle order.
    pub const ALL: [State; 6] = [
        State::Scheduled,
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];

    /// The name stored in Redis and used in the per-queue index keys.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "SCHEDULED",
            State::Queued => "QUEUED",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for SUCCEEDED, FAILED and CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// Delay policy between attempts, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Backoff {
    /// Parses field `b` of a record, packed as "initial|max|multiplier|jitter".
    pub fn unpack(b: &str) -> Result<Backoff, String> {
        let bad_b = || format!("field b is not a backoff: {b:?}");
        let mut parts = b.split('|');
        let mut part = || parts.next().and_then(|v| v.parse::<f64>().ok()).ok_or_else(bad_b);
        Ok(Backoff {
            initial_ms: part()? as u64,
            max_ms: part()? as u64,
            multiplier: part()?,
            jitter: part()?,
        })
    }
}

/// A validated request to create a job, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub queue: String,
    pub job_type: String,
    /// The payload as JSON text.
    pub payload: String,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    /// Absolute run time in ms since the epoch; `None` for now.
    pub run_at_ms: Option<u64>,
    /// Delay from now in ms; used when `run_at_ms` is `None`.
    pub delay_ms: u64,
    pub idempotency_key: String,
    pub labels: BTreeMap<String, String>,
    /// W3C traceparent of the caller, carried to the worker.
    pub traceparent: String,
    /// How long the record is kept once finished (`options.retention`); `None` for the
    /// queue's or the global setting.
    pub retention_ms: Option<u64>,
}

impl NewJob {
    /// When the job is due, for a job created at `now`.
    pub fn run_at(&self, now: u64) -> u64 {
        self.run_at_ms.unwrap_or(now + self.delay_ms)
    }

    /// The record `create.lua` writes for this job at `now` (so the script need not send it
    /// back).
    pub fn record(&self, id: &str, now: u64) -> JobRecord {
        let run_at = self.run_at(now);
        JobRecord {
            id: id.to_string(),
            queue: self.queue.clone(),
            job_type: self.job_type.clone(),
            payload: self.payload.clone(),
            state: if run_at > now { State::Scheduled } else { State::Queued },
            attempt: 1,
            max_attempts: self.max_attempts,
            retry_base: 0,
            backoff: self.backoff.clone(),
            timeout_ms: self.timeout_ms,
            run_at_ms: run_at.max(now),
            idempotency_key: self.idempotency_key.clone(),
            worker_id: String::new(),
            lease_id: None,
            lease_deadline_ms: None,
            progress: None,
            result: None,
            error: None,
            cancel_requested: false,
            labels: self.labels.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Why the last attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub message: String,
    pub retryable: bool,
    pub attempt: u32,
}

/// A job record as stored in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub queue: String,
    pub job_type: String,
    /// JSON text.
    pub payload: String,
    pub state: State,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Attempts made before the last RetryJob; the budget counts from here.
    pub retry_base: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    pub run_at_ms: u64,
    pub idempotency_key: String,
    pub worker_id: String,
    pub lease_id: Option<String>,
    pub lease_deadline_ms: Option<u64>,
    /// JSON text of the last progress report.
    pub progress: Option<String>,
    /// JSON text of the result.
    pub result: Option<String>,
    pub error: Option<JobError>,
    pub cancel_requested: bool,
    pub labels: BTreeMap<String, String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub traceparent: String,
}

impl JobRecord {
    /// Builds the record of job `id` from its hash fields (and `payload`); the error names the
    /// first missing or bad field. Fields left at their default are not stored (see lib.lua).
    pub fn from_fields(id: &str, f: &HashMap<String, String>) -> Result<JobRecord, String> {
        let s = |k: &str| f.get(k).cloned().ok_or_else(|| format!("field {k} missing"));
        let num = |k: &str| number(k, &s(k)?);
        let opt = |k: &str| -> Option<u64> { f.get(k).and_then(|v| v.parse::<f64>().ok()).map(|x| x as u64) };
        let state_s = s("state")?;
        let error = f.get("error").map(|m| JobError {
            message: m.clone(),
            retryable: f.get("error_retryable").map(|v| v == "1").unwrap_or(false),
            attempt: opt("error_attempt").unwrap_or(0) as u32,
        });
        let backoff = Backoff::unpack(&s("b")?)?;
        Ok(JobRecord {
            id: id.to_string(),
            queue: s("queue")?,
            job_type: s("type")?,
            payload: s("payload")?,
            state: State::parse(&state_s).ok_or_else(|| format!("unknown state {state_s}"))?,
            attempt: num("attempt")? as u32,
            max_attempts: num("max_attempts")? as u32,
            retry_base: opt("retry_base").unwrap_or(0) as u32,
            backoff,
            timeout_ms: num("timeout")?,
            run_at_ms: num("run_at")?,
            idempotency_key: f.get("idem_key").cloned().unwrap_or_default(),
            worker_id: f.get("worker_id").cloned().unwrap_or_default(),
            lease_id: f.get("lease_id").cloned(),
            lease_deadline_ms: opt("lease_deadline"),
            progress: f.get("progress").cloned(),
            result: f.get("result").cloned(),
            error,
            cancel_requested: f.get("cancel_requested").map(|v| v == "1").unwrap_or(false),
            labels: f
                .get("labels")
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default(),
            created_at_ms: num("created_at")?,
            updated_at_ms: num("updated_at")?,
            started_at_ms: opt("started_at"),
            finished_at_ms: opt("finished_at"),
            traceparent: f.get("traceparent").cloned().unwrap_or_default(),
        })
    }

    /// Builds the record of a granted claim from claim.lua's positional reply (see there)
    /// and what the claim sent: the job id, worker and lease id. No map, no copy of the field
    /// names: this runs for every job.
    pub fn from_claim(id: &str, worker_id: &str, lease_id: &str, reply: Vec<String>) -> Result<JobRecord, String> {
        let n = reply.len();
        let [
            _ok,
            now,
            deadline,
            queue,
            job_type,
            attempt,
            max_attempts,
            retry_base,
            b,
            timeout,
            run_at,
            idem_key,
            labels,
            traceparent,
            created_at,
            error,
            error_retryable,
            error_attempt,
            payload,
        ]: [String; 19] = reply.try_into().map_err(|_| format!("claim reply of {n} fields"))?;
        let now = number("updated_at", &now)?;
        Ok(JobRecord {
            id: id.to_string(),
            queue,
            job_type,
            payload,
            state: State::Running,
            attempt: number("attempt", &attempt)? as u32,
            max_attempts: number("max_attempts", &max_attempts)? as u32,
            retry_base: retry_base.parse::<f64>().map_or(0, |x| x as u32),
            backoff: Backoff::unpack(&b)?,
            timeout_ms: number("timeout", &timeout)?,
            run_at_ms: number("run_at", &run_at)?,
            idempotency_key: idem_key,
            worker_id: worker_id.to_string(),
            lease_id: Some(lease_id.to_string()),
            lease_deadline_ms: Some(number("lease_deadline", &deadline)?),
            progress: None,
            result: None,
            // error_attempt is written with every error (an error message may be empty).
            error: (!error_attempt.is_empty()).then(|| JobError {
                message: error,
                retryable: error_retryable == "1",
                attempt: error_attempt.parse::<f64>().map_or(0, |x| x as u32),
            }),
            cancel_requested: false,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            created_at_ms: number("created_at", &created_at)?,
            updated_at_ms: now,
            started_at_ms: Some(now),
            finished_at_ms: None,
            traceparent,
        })
    }
}

/// Field `k`'s value `v` as a whole number (a float is truncated).
fn number(k: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .or_else(|_| v.parse::<f64>().map(|x| x as u64))
        .map_err(|_| format!("field {k} is not a number: {v:?}"))
}

/// One entry of a job's history (field `h<seq>` of its record).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    /// 1, 2, 3... per job; the cursor for the next read.
    pub sequence: u64,
    pub state: State,
    pub attempt: u32,
    pub worker_id: String,
    pub at_ms: u64,
    pub error: String,
}

impl HistoryEvent {
    /// Parses `state|attempt|worker_id|ts|error` (the error may itself hold `|`).
    pub fn parse(sequence: u64, v: &str) -> Result<HistoryEvent, String> {
        let mut parts = v.splitn(5, '|');
        let mut next = || parts.next().unwrap_or("");
        let state = next();
        let (attempt, worker_id, ts, error) = (next(), next(), next(), next());
        Ok(HistoryEvent {
            sequence,
            state: State::parse(state).ok_or_else(|| format!("history state {state:?}"))?,
            attempt: attempt.parse().map_err(|_| format!("history attempt {attempt:?}"))?,
            worker_id: worker_id.to_string(),
            at_ms: ts.parse().map_err(|_| format!("history time {ts:?}"))?,
            error: error.to_string(),
        })
    }
}

/// Counts of one queue by state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueCounts {
    pub name: String,
    pub counts: HashMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_terminality() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("NEW"), None);
        assert!(State::Failed.is_terminal() && !State::Running.is_terminal());
    }

    #[test]
    fn history_entries_parse_with_pipes_in_the_error() {
        let e = HistoryEvent::parse(3, "FAILED|2|w-1|1700000000000|bad | worse").unwrap();
        assert_eq!(
            e,
            HistoryEvent {
                sequence: 3,
                state: State::Failed,
                attempt: 2,
                worker_id: "w-1".into(),
                at_ms: 1_700_000_000_000,
                error: "bad | worse".into(),
            }
        );
        assert_eq!(HistoryEvent::parse(1, "QUEUED|1||5|").unwrap().error, "");
        assert!(HistoryEvent::parse(1, "NEW|1||5|").is_err());
        assert!(HistoryEvent::parse(1, "QUEUED|x||5|").is_err());
    }

    #[test]
    fn a_claim_reply_builds_the_running_record() {
        let reply = |attempt: &str, err: [&str; 3]| -> Vec<String> {
            let mut r = vec![
                "OK",
                "1700000000500",
                "1700000030500",
                "mail",
                "send",
                attempt,
                "5",
                "",
                "1000|60000|2|0.2",
                "30000",
                "1700000000000",
                "",
                r#"{"team":"a"}"#,
                "00-abc-def-01",
                "1700000000000",
            ];
            r.extend(err);
            r.push(r#"{"to":"x"}"#);
            r.into_iter().map(String::from).collect()
        };
        let job = JobRecord::from_claim("j1", "w1", "l1", reply("1", ["", "", ""])).unwrap();
        assert_eq!(job.state, State::Running);
        assert_eq!(
            (job.queue.as_str(), job.job_type.as_str(), job.attempt),
            ("mail", "send", 1)
        );
        assert_eq!(job.lease_id.as_deref(), Some("l1"));
        assert_eq!(job.lease_deadline_ms, Some(1_700_000_030_500));
        assert_eq!(job.started_at_ms, Some(1_700_000_000_500));
        assert_eq!(job.backoff.multiplier, 2.0);
        assert_eq!(job.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!((job.payload.as_str(), job.error.is_none()), (r#"{"to":"x"}"#, true));
        let again = JobRecord::from_claim("j1", "w1", "l2", reply("2", ["boom", "1", "1"])).unwrap();
        assert_eq!(
            again.error,
            Some(JobError {
                message: "boom".into(),
                retryable: true,
                attempt: 1
            })
        );
        let mut short = reply("1", ["", "", ""]);
        short.pop();
        assert_eq!(
            JobRecord::from_claim("j1", "w1", "l1", short).unwrap_err(),
            "claim reply of 18 fields"
        );
        let mut bad = reply("1", ["", "", ""]);
        bad[9] = "soon".into();
        assert!(
            JobRecord::from_claim("j1", "w1", "l1", bad)
                .unwrap_err()
                .contains("timeout")
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut f = HashMap::new();
        f.insert("queue".to_string(), "x".to_string());
        assert_eq!(JobRecord::from_fields("j", &f).unwrap_err(), "field state missing");
    }
}
