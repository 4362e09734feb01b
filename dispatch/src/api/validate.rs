//! Request validation: every field checked, every problem reported at once as a field
//! violation, nothing written unless all is well.

use std::collections::BTreeMap;

use dispatch_client::pb;
use pbjson_types::Duration;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::JobDefaults;
use crate::store::{Backoff, NewJob, now_ms};

const DAY_MS: u64 = 24 * 3600 * 1000;
const YEAR_MS: u64 = 366 * DAY_MS;

/// Limits that come from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub defaults: JobDefaults,
}

/// Collected field violations.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<(String, String)>);

impl FieldErrors {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(v)` when empty, else INVALID_ARGUMENT with every violation.
    pub fn into_result<T>(self, v: T) -> Result<T, tonic::Status> {
        if self.0.is_empty() {
            return Ok(v);
        }
        let summary = self
            .0
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        for (f, d) in &self.0 {
            details.add_bad_request_violation(f.clone(), d.clone());
        }
        Err(tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            format!("invalid request: {summary}"),
            details,
        ))
    }
}

fn check_name(errs: &mut FieldErrors, field: &str, v: &str, extra: &str) {
    if v.is_empty() {
        errs.add(field, "is required");
    } else if v.len() > 128 {
        errs.add(field, "must be at most 128 characters");
    } else if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(c))
    {
        errs.add(
            field,
            format!(
                "may contain only letters, digits, '_', '-'{}",
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" and {extra:?}")
                }
            ),
        );
    }
}

/// Checks a job id: required, the shape of an id dispatch hands out.
pub fn job_id(errs: &mut FieldErrors, field: &str, v: &str) {
    if v.is_empty() {
        errs.add(field, "is required");
    } else if v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        errs.add(field, "is not a job id (letters, digits and '-', at most 64)");
    }
}

/// Checks a queue name (required).
pub fn queue_name(errs: &mut FieldErrors, field: &str, v: &str) {
    check_name(errs, field, v, "");
}

/// Checks a job type (required).
pub fn job_type(errs: &mut FieldErrors, field: &str, v: &str) {
    check_name(errs, field, v, ".:");
}

/// Checks a worker id.
pub fn worker_id(errs: &mut FieldErrors, field: &str, v: &str) {
    check_name(errs, field, v, ".:");
}

/// An optional W3C trace context: empty, or at most 128 visible ASCII characters.
pub fn traceparent(errs: &mut FieldErrors, field: &str, v: &str) {
    if v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        errs.add(field, "must be a W3C traceparent of at most 128 characters");
    }
}

/// Checks a lease id (as handed out by ClaimJob).
pub fn lease_id(errs: &mut FieldErrors, field: &str, v: &str) {
    job_id(errs, field, v);
}

/// A duration in ms, or a violation when negative, malformed or above `max_ms`.
pub fn duration_ms(errs: &mut FieldErrors, field: &str, d: &Duration, max_ms: u64) -> u64 {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        errs.add(field, "must be a non-negative duration");
        return 0;
    }
    let ms = (d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(d.nanos as u64 / 1_000_000);
    if ms > max_ms {
        errs.add(field, format!("must be at most {}s", max_ms / 1000));
    }
    ms
}

/// JSON text of a value, or a violation when it is over `max_bytes`.
pub fn json_value(errs: &mut FieldErrors, field: &str, v: Option<&pbjson_types::Value>, max_bytes: usize) -> String {
    let text = serde_json::to_string(&dispatch_client::json::from_proto(v)).unwrap_or_else(|_| "null".into());
    if text.len() > max_bytes {
        errs.add(
            field,
            format!("is {} bytes of JSON; the limit is {max_bytes}", text.len()),
        );
    }
    text
}

impl Limits {
    /// Validates one CreateJobRequest (fields prefixed with `prefix`) into a NewJob.
    pub fn new_job(&self, errs: &mut FieldErrors, prefix: &str, r: &pb::CreateJobRequest, traceparent: &str) -> NewJob {
        let d = &self.defaults;
        let f = |name: &str| format!("{prefix}{name}");
        check_name(errs, &f("queue"), &r.queue, "");
        check_name(errs, &f("type"), &r.r#type, ".:");
        let payload = json_value(errs, &f("payload"), r.payload.as_ref(), d.max_payload_bytes);
        let o = r.options.clone().unwrap_or_default();
        let max_attempts = match o.max_attempts {
            0 => d.max_attempts,
            n if n > 1000 => {
                errs.add(f("options.max_attempts"), "must be 1 to 1000");
                n
            }
            n => n,
        };
        let timeout_ms = match &o.timeout {
            None => d.default_timeout_ms,
            Some(t) => {
                let ms = duration_ms(errs, &f("options.timeout"), t, DAY_MS);
                if ms == 0 {
                    errs.add(f("options.timeout"), "must be positive");
                }
                ms
            }
        };
        let b = o.backoff.unwrap_or_default();
        let initial_ms = b
            .initial
            .as_ref()
            .map(|x| duration_ms(errs, &f("options.backoff.initial"), x, DAY_MS))
            .unwrap_or(d.backoff_initial_ms);
        let max_ms = b
            .max
            .as_ref()
            .map(|x| duration_ms(errs, &f("options.backoff.max"), x, 7 * DAY_MS))
            .unwrap_or(d.backoff_max_ms.max(initial_ms));
        if max_ms < initial_ms {
            errs.add(f("options.backoff.max"), "must not be less than backoff.initial");
        }
        let multiplier = if b.multiplier == 0.0 {
            d.backoff_multiplier
        } else {
            b.multiplier
        };
        if !(1.0..=100.0).contains(&multiplier) {
            errs.add(f("options.backoff.multiplier"), "must be between 1 and 100");
        }
        let jitter = if b.jitter == 0.0 { d.backoff_jitter } else { b.jitter };
        if !(0.0..=1.0).contains(&jitter) {
            errs.add(f("options.backoff.jitter"), "must be between 0 and 1");
        }
        let mut run_at_ms = None;
        let mut delay_ms = 0;
        if o.run_at.is_some() && o.delay.is_some() {
            errs.add(f("options.run_at"), "run_at and delay are exclusive");
        }
        if let Some(t) = &o.run_at {
            if t.seconds < 0 || t.nanos < 0 || t.nanos >= 1_000_000_000 {
                errs.add(f("options.run_at"), "must be a valid timestamp after 1970");
            } else {
                let ms = t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000;
                if ms > now_ms() + YEAR_MS {
                    errs.add(f("options.run_at"), "must be within a year from now");
                }
                run_at_ms = Some(ms);
            }
        }
        if let Some(dl) = &o.delay {
            delay_ms = duration_ms(errs, &f("options.delay"), dl, YEAR_MS);
        }
        if o.idempotency_key.len() > 256 || o.idempotency_key.chars().any(|c| c.is_control()) {
            errs.add(
                f("options.idempotency_key"),
                "must be at most 256 characters, without control characters",
            );
        }
        if o.labels.len() > 64 {
            errs.add(f("options.labels"), "at most 64 labels");
        }
        for (k, v) in &o.labels {
            if k.is_empty() || k.len() > 64 || !k.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)) {
                errs.add(
                    f(&format!("options.labels[{k}]")),
                    "keys are 1 to 64 of letters, digits, '_', '.', '-', '/'",
                );
            }
            if v.len() > 256 {
                errs.add(f(&format!("options.labels[{k}]")), "values are at most 256 characters");
            }
        }
        let retention_ms = o
            .retention
            .as_ref()
            .map(|x| duration_ms(errs, &f("options.retention"), x, YEAR_MS));
        NewJob {
            retention_ms,
            queue: r.queue.clone(),
            job_type: r.r#type.clone(),
            payload,
            max_attempts,
            backoff: Backoff {
                initial_ms,
                max_ms,
                multiplier,
                jitter,
            },
            timeout_ms,
            run_at_ms,
            delay_ms,
            idempotency_key: o.idempotency_key.clone(),
            labels: o.labels.into_iter().collect::<BTreeMap<_, _>>(),
            traceparent: traceparent.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            defaults: JobDefaults::default(),
        }
    }

    #[test]
    fn defaults_fill_unset_options() {
        let mut errs = FieldErrors::default();
        let r = pb::CreateJobRequest {
            queue: "default".into(),
            r#type: "noop".into(),
            ..Default::default()
        };
        let job = limits().new_job(&mut errs, "", &r, "");
        assert!(errs.is_empty());
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.payload, "null");
        assert_eq!(job.backoff.initial_ms, 1000);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut errs = FieldErrors::default();
        let r = pb::CreateJobRequest {
            queue: "bad queue!".into(),
            r#type: String::new(),
            payload: None,
            options: Some(pb::JobOptions {
                max_attempts: 5000,
                timeout: Some(Duration { seconds: -1, nanos: 0 }),
                ..Default::default()
            }),
        };
        limits().new_job(&mut errs, "", &r, "");
        let fields: Vec<String> = errs.0.iter().map(|(f, _)| f.clone()).collect();
        for want in ["queue", "type", "options.max_attempts", "options.timeout"] {
            assert!(fields.iter().any(|f| f == want), "{want} missing from {fields:?}");
        }
        let status = errs.into_result(()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations.len(),
            fields.len()
        );
    }

    proptest::proptest! {
        /// Any request: no panic; an accepted one is within every documented limit.
        #[test]
        fn validation_never_panics_and_accepts_only_valid_jobs(
            queue in ".{0,140}", job_type in ".{0,140}", key in ".{0,300}",
            max_attempts in proptest::prelude::any::<u32>(),
            t_s in proptest::prelude::any::<i64>(), t_n in proptest::prelude::any::<i32>(),
            b_s in proptest::prelude::any::<i64>(), mult in proptest::prelude::any::<f64>(),
            jitter in proptest::prelude::any::<f64>(), delay_s in proptest::prelude::any::<i64>(),
            label in "[a-z/._-]{0,70}",
        ) {
            let r = pb::CreateJobRequest {
                queue: queue.clone(),
                r#type: job_type.clone(),
                payload: None,
                options: Some(pb::JobOptions {
                    max_attempts,
                    timeout: Some(Duration { seconds: t_s, nanos: t_n }),
                    backoff: Some(pb::Backoff { initial: Some(Duration { seconds: b_s, nanos: 0 }), max: None, multiplier: mult, jitter }),
                    delay: Some(Duration { seconds: delay_s, nanos: 0 }),
                    idempotency_key: key,
                    labels: [(label, "v".to_string())].into_iter().collect(),
                    ..Default::default()
                }),
            };
            let mut errs = FieldErrors::default();
            let job = limits().new_job(&mut errs, "", &r, "");
            if errs.is_empty() {
                proptest::prop_assert!(!job.queue.is_empty() && job.queue.len() <= 128);
                proptest::prop_assert!(job.queue.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
                proptest::prop_assert!((1..=1000).contains(&job.max_attempts));
                proptest::prop_assert!(job.timeout_ms > 0 && job.timeout_ms <= DAY_MS);
                proptest::prop_assert!(job.backoff.initial_ms <= job.backoff.max_ms);
                proptest::prop_assert!((1.0..=100.0).contains(&job.backoff.multiplier));
                proptest::prop_assert!((0.0..=1.0).contains(&job.backoff.jitter));
                proptest::prop_assert!(job.delay_ms <= YEAR_MS);
            }
        }
    }
}
