"""The Python client against a live dispatch with Rust workers."""

import grpc
import pytest

import dispatch_client
from dispatch_client import Client, JobState, job_options


def test_create_get_wait_and_watch_to_completion(client: Client):
    job = client.create("default", "sleep", {"durationMs": 50, "note": "from python"})
    assert job.state == JobState.JOB_STATE_QUEUED
    assert client.get(job.id).id == job.id
    assert dispatch_client.payload(client.get(job.id)) == {"durationMs": 50, "note": "from python"}

    done = client.wait(job.id, timeout=20)
    assert done.state == JobState.JOB_STATE_SUCCEEDED
    assert dispatch_client.result(done) == {"sleptMs": 50}
    states = [e.state for e in client.watch(job.id, timeout=20)]
    assert states == [JobState.JOB_STATE_QUEUED, JobState.JOB_STATE_RUNNING, JobState.JOB_STATE_SUCCEEDED]


def test_cancel_retry_and_options(client: Client):
    job = client.create("default", "noop", None, delay=60, labels={"team": "py"})
    assert job.state == JobState.JOB_STATE_SCHEDULED
    assert dict(job.labels) == {"team": "py"}
    cancelled = client.cancel(job.id, "not needed")
    assert cancelled.state == JobState.JOB_STATE_CANCELLED
    assert client.wait(job.id, timeout=5).state == JobState.JOB_STATE_CANCELLED
    client.retry(job.id)
    assert client.wait(job.id, timeout=20).state == JobState.JOB_STATE_SUCCEEDED

    first = client.create_job("default", "noop", options=job_options(idempotency_key="py-order-1"))
    again = client.create_job("default", "noop", idempotency_key="py-order-1")
    assert first.created and not again.created and first.job.id == again.job.id


def test_batch_list_and_queues(client: Client):
    results = client.create_many(
        [{"queue": "py-batch", "type": "noop", "payload": {"i": i}, "options": {"delay": 60}} for i in range(5)]
    )
    assert [r.created for r in results] == [True] * 5
    listed = list(client.list(queue="py-batch", page_size=2))
    assert [dispatch_client.payload(j)["i"] for j in listed] == [0, 1, 2, 3, 4]
    queue = next(q for q in client.queues() if q.name == "py-batch")
    assert queue.scheduled == 5

    brief = client.create_many([{"queue": "py-brief", "type": "noop"}], ids_only=True)
    assert brief[0].created and brief[0].job.id and not brief[0].job.queue
    assert client.get(brief[0].job.id).queue == "py-brief"


def test_errors_map_to_exceptions(client: Client):
    with pytest.raises(dispatch_client.NotFound) as e:
        client.get("0190a000-0000-7000-8000-000000000000")
    assert e.value.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(dispatch_client.InvalidArgument) as e:
        client.create("", "", {"x": 1})
    fields = [f for f, _ in e.value.field_violations]
    assert "queue" in fields and "type" in fields

    done = client.create("default", "noop")
    client.wait(done.id, timeout=20)
    with pytest.raises(dispatch_client.FailedPrecondition):
        client.cancel(done.id)

    with pytest.raises(dispatch_client.errors.DeadlineExceeded):
        client.wait(client.create("py-nobody", "noop").id, timeout=0.5)


def test_token_and_ca_against_tls_with_keys(secure_stack):
    """With TLS and keys on: the CA and a producer token create and read a job (run by the
    stack's workers); no token is UNAUTHENTICATED; a viewer token may read but not create."""
    s = secure_stack
    with Client(s["target"], token=s["token"], ca_cert=s["ca"]) as c:
        job = c.create("default", "noop", {"lang": "python"})
        done = c.wait(job.id, timeout=30)
        assert done.state == JobState.JOB_STATE_SUCCEEDED
    with Client(s["target"], ca_cert=s["ca"]) as anonymous:
        with pytest.raises(dispatch_client.errors.Unauthenticated):
            anonymous.get(job.id)
    with Client(s["target"], token=s["viewer_token"], ca_cert=s["ca"]) as viewer:
        assert viewer.get(job.id).id == job.id
        with pytest.raises(dispatch_client.errors.PermissionDenied):
            viewer.create("default", "noop", {})
