"""A Python worker beside the Rust workers: jobs created in Python, run in Python."""

import asyncio
import threading
import time
import uuid

import pytest

import dispatch_client
from dispatch_client import Client, FatalError, JobContext, JobState, Worker


@pytest.fixture()
def py_worker(grpc_target, nats_url):
    """A Python Worker running in a background thread on its own queue, stopped afterwards."""
    queue = f"py-{uuid.uuid4().hex[:8]}"
    worker = Worker(dispatch=grpc_target, nats_url=nats_url, worker_id=f"pytest-{queue}", lease=3, drain_grace=2)

    @worker.handler("py.echo")
    async def echo(ctx: JobContext):
        ctx.set_progress({"pct": 50})
        await asyncio.sleep(1.2)  # long enough for one heartbeat to carry the progress
        return {"echo": ctx.payload, "attempt": ctx.attempt, "worker": "python"}

    @worker.handler("py.sync")
    def sync_handler(ctx: JobContext):
        return {"sum": sum(ctx.payload)}

    @worker.handler("py.flaky")
    async def flaky(ctx: JobContext):
        if ctx.attempt < 2:
            raise RuntimeError("first attempt fails")
        return "ok"

    @worker.handler("py.fatal")
    async def fatal(ctx: JobContext):
        raise FatalError("bad payload")

    @worker.handler("py.block")
    async def block(ctx: JobContext):
        await asyncio.sleep(60)  # cancelled by the worker when the job is
        return "never recorded"

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main():
        started = asyncio.Event()
        task = asyncio.create_task(worker.run({queue: 4}, stop, ready=started))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(20), "python worker did not start"
    yield queue
    loop.call_soon_threadsafe(stop.set)
    thread.join(20)
    assert not thread.is_alive(), "python worker did not stop"


def test_python_producer_and_python_worker(client: Client, py_worker):
    queue = py_worker
    job = client.create(queue, "py.echo", {"hello": "world"}, backoff_initial=0.1)
    # Progress reported by the heartbeat is visible while it runs.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        current = client.get(job.id)
        if current.HasField("progress"):
            break
        time.sleep(0.05)
    assert dispatch_client.from_value(client.get(job.id).progress) in ({"pct": 50}, None)
    done = client.wait(job.id, timeout=20)
    assert done.state == JobState.JOB_STATE_SUCCEEDED, done
    assert dispatch_client.result(done) == {"echo": {"hello": "world"}, "attempt": 1, "worker": "python"}
    assert done.lease.worker_id == "" and done.attempt == 1

    sync = client.wait(client.create(queue, "py.sync", [1, 2, 3]).id, timeout=20)
    assert dispatch_client.result(sync) == {"sum": 6}


def test_python_worker_runs_a_batch_in_one_runs_message(client: Client, py_worker):
    """A CreateJobs batch reaches the worker as one `runs` message of 20 jobs; the worker has
    4 slots, so most of them wait in it for a slot, and each runs once."""
    queue = py_worker
    results = client.create_many([{"queue": queue, "type": "py.sync", "payload": [i, 1]} for i in range(20)])
    for i, r in enumerate(results):
        done = client.wait(r.job.id, timeout=30)
        assert done.state == JobState.JOB_STATE_SUCCEEDED and done.attempt == 1, done
        assert dispatch_client.result(done) == {"sum": i + 1}


def test_python_worker_retries_fails_and_cancels(client: Client, py_worker):
    queue = py_worker
    flaky = client.create(queue, "py.flaky", None, backoff_initial=0.1)
    done = client.wait(flaky.id, timeout=20)
    assert done.state == JobState.JOB_STATE_SUCCEEDED and done.attempt == 2

    fatal = client.wait(client.create(queue, "py.fatal", None, max_attempts=5).id, timeout=20)
    assert fatal.state == JobState.JOB_STATE_FAILED and fatal.attempt == 1
    assert fatal.error.message == "bad payload" and not fatal.error.retryable

    unknown = client.wait(client.create(queue, "py.nothing", None).id, timeout=20)
    assert unknown.state == JobState.JOB_STATE_FAILED
    assert "no handler" in unknown.error.message

    blocked = client.create(queue, "py.block", None)
    deadline = time.monotonic() + 10
    while client.get(blocked.id).state != JobState.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline, "py.block never started"
        time.sleep(0.05)
    client.cancel(blocked.id, "stop it")
    ended = client.wait(blocked.id, timeout=20)
    assert ended.state == JobState.JOB_STATE_CANCELLED, ended


def test_python_worker_announces_itself_and_honours_a_pause(client: Client, py_worker):
    queue = py_worker
    client.pause(queue)
    try:
        job = client.create(queue, "py.sync", [1, 2])

        def seen() -> str:
            return ",".join(str(w.last_seen.ToMilliseconds()) for w in client.list_workers() if w.worker_id == f"pytest-{queue}")

        # Two announcements later (time passes, said by the worker itself) the job still waits.
        for _ in range(2):
            before, deadline = seen(), time.monotonic() + 20
            while seen() in (before, ""):
                assert time.monotonic() < deadline, "the Python worker does not announce itself"
                time.sleep(0.05)
        assert client.get(job.id).state == JobState.JOB_STATE_QUEUED
        info = next(q for q in client.queues() if q.name == queue)
        assert info.paused and info.depth == 1
        worker = next(w for w in client.list_workers() if w.worker_id == f"pytest-{queue}")
        assert worker.queues[queue] == 4 and worker.version.startswith("dispatch-client")
        assert [j.id for j in client.list(queue, labels={})] == [job.id]
    finally:
        client.resume(queue)
    done = client.wait(job.id, timeout=20)
    assert done.state == JobState.JOB_STATE_SUCCEEDED and done.attempt == 1


def test_python_producer_rust_worker(client: Client):
    """Jobs from Python run on the Rust workers of the stack (queue "default")."""
    jobs = [client.create("default", "sleep", {"durationMs": 10}) for _ in range(10)]
    for j in jobs:
        done = client.wait(j.id, timeout=20)
        assert done.state == JobState.JOB_STATE_SUCCEEDED
        assert done.lease.worker_id == ""
