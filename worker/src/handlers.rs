//! Built-in handlers of the `worker` binary.
//!
//! - `noop`: succeeds at once with `null`.
//! - `sleep` `{"durationMs": N}`: sleeps N ms (up to one hour), reporting progress.
//! - `http.fetch` `{"url": "..."}`: GETs the URL; result `{"status", "body"}` (body parsed as
//!   JSON when it is JSON). 5xx and 429 are retryable failures, other 4xx fatal.
//! - `fail` `{"probability": p}`: fails (retryably) with probability p (default 1).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{HandlerError, JobContext, Worker};

/// Largest response body `http.fetch` keeps.
const MAX_BODY: usize = 1 << 20;

/// Adds every built-in handler to `w`.
pub fn register(w: Worker) -> Worker {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    w.handler("noop", |_ctx| async { Ok(Value::Null) })
        .handler("sleep", sleep)
        .handler("fail", fail)
        .handler("http.fetch", move |ctx| fetch(client.clone(), ctx))
}

async fn sleep(ctx: JobContext) -> Result<Value, HandlerError> {
    let ms = ctx
        .payload
        .get("durationMs")
        .and_then(Value::as_u64)
        .ok_or_else(|| HandlerError::fatal("sleep wants {\"durationMs\": N}"))?;
    if ms > 3_600_000 {
        return Err(HandlerError::fatal("durationMs must be at most 3600000"));
    }
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_millis(ms);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_secs(1))).await;
        let done = start.elapsed().as_millis() as u64;
        ctx.set_progress(json!({"sleptMs": done.min(ms), "durationMs": ms}));
    }
    Ok(json!({"sleptMs": ms}))
}

async fn fail(ctx: JobContext) -> Result<Value, HandlerError> {
    let p = ctx.payload.get("probability").and_then(Value::as_f64).unwrap_or(1.0);
    if rand::random::<f64>() < p {
        Err(HandlerError::retryable(format!(
            "fail handler: injected failure (probability {p})"
        )))
    } else {
        Ok(json!({"failed": false}))
    }
}

async fn fetch(client: reqwest::Client, ctx: JobContext) -> Result<Value, HandlerError> {
    let url = ctx
        .payload
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::fatal("http.fetch wants {\"url\": \"...\"}"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(HandlerError::fatal("url must be http:// or https://"));
    }
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| HandlerError::retryable(format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| HandlerError::retryable(format!("reading {url}: {e}")))?;
    let bytes = &bytes[..bytes.len().min(MAX_BODY)];
    let body = serde_json::from_slice::<Value>(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
    match status {
        500..=599 | 429 => Err(HandlerError::retryable(format!("GET {url}: HTTP {status}"))),
        400..=499 => Err(HandlerError::fatal(format!("GET {url}: HTTP {status}"))),
        _ => Ok(json!({"status": status, "body": body})),
    }
}
