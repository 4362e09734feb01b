//! The Rust client against a live stack (real Redis, NATS, dispatch, worker from the harness).

use std::time::Duration;

use dispatch_client::pb::{self, JobState};
use dispatch_client::{Client, field_violations};
use dispatch_testkit::Stack;
use futures::StreamExt;
use serde_json::json;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_get_wait_watch_cancel_and_errors() {
    let mut s = Stack::start().await;
    s.spawn_builtin_worker(&[("default", 4)]);
    let client = Client::connect(s.url()).await.unwrap();

    // create -> wait -> the result is recorded; watch replays every transition.
    let job = client
        .create("default", "sleep", json!({"durationMs": 50}))
        .await
        .unwrap();
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(client.get(&job.id).await.unwrap().id, job.id);
    let done = client.wait(&job.id, T).await.unwrap();
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(
        dispatch_client::json::from_proto(done.result.as_ref()),
        json!({"sleptMs": 50})
    );
    let states: Vec<JobState> = client
        .watch(&job.id)
        .await
        .unwrap()
        .map(|e| e.unwrap().state())
        .collect()
        .await;
    assert_eq!(states, [JobState::Queued, JobState::Running, JobState::Succeeded]);

    // cancel a delayed job; wait returns at once for it.
    let delayed = client
        .create_with(
            "default",
            "noop",
            json!(null),
            pb::JobOptions {
                delay: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!(delayed.state(), JobState::Scheduled);
    let cancelled = client.cancel(&delayed.id, "not needed").await.unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert_eq!(client.wait(&delayed.id, T).await.unwrap().state(), JobState::Cancelled);
    // retry re-runs the cancelled job; it succeeds.
    client.retry(&delayed.id).await.unwrap();
    assert_eq!(client.wait(&delayed.id, T).await.unwrap().state(), JobState::Succeeded);

    // Error mapping.
    let missing = client.get("0190a000-0000-7000-8000-000000000000").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = client.create("", "noop", json!({})).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&bad)[0].0, "queue");
    let finished = client.cancel(&job.id, "").await.unwrap_err();
    assert_eq!(finished.code(), Code::FailedPrecondition);

    // wait gives up with DEADLINE_EXCEEDED on a job nobody runs.
    let idle = client.create("nobody", "noop", json!({})).await.unwrap();
    let late = client.wait(&idle.id, Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded);
    s.stop().await;
}
