//! What every part of the worker uses to talk to dispatch: the client type, retries while
//! dispatch is away, and the conversions of durations and trace context.

use std::time::Duration;

use dispatch_client::pb::worker_service_client::WorkerServiceClient;
use tonic::Code;

pub(crate) type Client = WorkerServiceClient<dispatch_client::Transport>;

/// A request carrying `traceparent` (the attempt's trace context) when there is one.
pub(crate) fn traced<T>(msg: T, traceparent: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = traceparent.parse()
        && !traceparent.is_empty()
    {
        req.metadata_mut().insert("traceparent", v);
    }
    req
}

pub(crate) fn pb_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn std_duration(d: Option<&pbjson_types::Duration>) -> Option<Duration> {
    d.filter(|d| d.seconds >= 0 && d.nanos >= 0)
        .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Retries a report while dispatch is unreachable or at capacity (about 30 s in all); other
/// errors are final.
pub(crate) async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(s),
        }
    }
}
