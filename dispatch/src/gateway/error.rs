//! gRPC status → HTTP response in the Google JSON error shape:
//! `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND", "details": [...]}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// The HTTP status for a gRPC code. Google's table, with one deliberate change:
/// FAILED_PRECONDITION (wrong state, stale lease) is 412 rather than 400, so a caller can
/// tell "fix your request" from "the job moved on".
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `NOT_FOUND` style name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The JSON body for `status` (also the data of an SSE `error` event).
pub fn body(status: &tonic::Status, http: StatusCode) -> Value {
    let mut error = json!({
        "code": http.as_u16(),
        "message": status.message(),
        "status": code_name(status.code()),
    });
    let mut details = Vec::new();
    let parsed = status.get_error_details();
    if let Some(bad) = parsed.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error })
}

/// The HTTP response for a gRPC status.
pub fn response(status: &tonic::Status) -> Response {
    with_status(status, http_status(status.code()))
}

/// The response for `status`, sent with an HTTP status of our choosing (413, 415, 405...).
pub fn with_status(status: &tonic::Status, http: StatusCode) -> Response {
    let mut resp = (http, axum::Json(body(status, http))).into_response();
    if matches!(http, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        // RetryInfo's delay when the status carries one, in whole seconds (at least 1).
        let secs = status
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(1)
            .max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

/// INVALID_ARGUMENT with one field violation, as the validators produce.
pub fn field_violation(field: &str, description: &str) -> tonic::Status {
    let mut details = tonic_types::ErrorDetails::new();
    details.add_bad_request_violation(field, description);
    tonic::Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {field}: {description}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_documented_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::PRECONDITION_FAILED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
    }

    #[test]
    fn field_violations_become_bad_request_details() {
        let s = field_violation("queue", "must not be empty");
        let b = body(&s, StatusCode::BAD_REQUEST);
        assert_eq!(b["error"]["code"], 400);
        assert_eq!(b["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            b["error"]["details"][0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(b["error"]["details"][0]["fieldViolations"][0]["field"], "queue");
    }
}
