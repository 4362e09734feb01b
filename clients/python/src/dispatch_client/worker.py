"""A worker in Python: takes `job_run.<queue>` from NATS JetStream, claims each attempt,
heartbeats while the handler runs, and reports through dispatch's gRPC WorkerService, the
same protocol as the Rust worker SDK (and sharing its durable consumers `worker-<queue>`).

    worker = Worker(dispatch="localhost:50051", nats_url="nats://localhost:4222")

    @worker.handler("resize")
    async def resize(ctx: JobContext):
        ctx.set_progress({"pct": 50})
        return {"width": ctx.payload["width"] // 2}

    worker.run_sync({"images": 8})      # until SIGINT/SIGTERM, then drain

A handler returns a JSON-able result (SUCCEEDED) or raises: `RetryableError` or any other
exception fails the attempt and lets dispatch retry with backoff; `FatalError` fails the job
for good. Sync handlers run in a thread. `ctx.cancelled` is set when an operator cancels the job
or the lease is lost; async handlers are cancelled then.

The worker announces itself to dispatch every few seconds (WorkerService.Announce: it shows in
ListWorkers and the dashboard) and stops pulling the queues the reply says are paused.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import nats
from nats.js import api as js_api

from google.protobuf import timestamp_pb2

from ._convert import from_value, to_duration, to_value
from .v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc

log = logging.getLogger("dispatch_client.worker")

Handler = Callable[["JobContext"], Any]

# Claim refusals that mean "this message is stale": drop it.
_DROP = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
# Report failures worth retrying while dispatch comes back.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


class RetryableError(Exception):
    """Fail this attempt; dispatch retries with backoff while attempts remain."""


class FatalError(Exception):
    """Fail the job for good, whatever attempts remain."""


class JobContext:
    """What a handler gets: the job, its payload as Python, progress and cancellation."""

    def __init__(self, job: job_pb2.Job) -> None:
        self.job = job
        self.id = job.id
        self.queue = job.queue
        self.type = job.type
        self.attempt = job.attempt
        self.payload = from_value(job.payload) if job.HasField("payload") else None
        #: Set when the job is cancelled or the lease is lost: stop soon.
        self.cancelled = asyncio.Event()
        self._progress: Any = None
        self._progress_dirty = False

    def set_progress(self, progress: Any) -> None:
        """Reported with the next heartbeat; readable with GetJob."""
        self._progress = progress
        self._progress_dirty = True


class Worker:
    def __init__(
        self,
        *,
        dispatch: str = "localhost:50051",
        nats_url: str = "nats://localhost:4222",
        worker_id: str | None = None,
        lease: float = 30.0,
        drain_grace: float = 30.0,
        run_stream: str = "DISPATCH_RUN",
    ) -> None:
        if lease < 3:
            raise ValueError("lease must be at least 3 seconds")
        self.dispatch = dispatch
        self.nats_url = nats_url
        self.worker_id = worker_id or f"py-{socket.gethostname()}-{os.getpid()}"
        self.lease = lease
        self.drain_grace = drain_grace
        self.run_stream = run_stream
        self._handlers: dict[str, Handler] = {}
        #: Queues dispatch says are paused (from the last announcement, or a refused claim).
        self.paused: set[str] = set()
        self._announce_every = 2.0
        self._started = time.time()

    def handler(self, job_type: str) -> Callable[[Handler], Handler]:
        """Registers the decorated function for jobs of `job_type`."""

        def register(fn: Handler) -> Handler:
            self._handlers[job_type] = fn
            return fn

        return register

    def run_sync(self, queues: Mapping[str, int]) -> None:
        """Runs until SIGINT or SIGTERM, then drains (see `run`)."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.run(queues, stop)

        asyncio.run(main())

    async def run(self, queues: Mapping[str, int], stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Takes jobs from each queue (name -> concurrency) until `stop` is set; then lets
        running jobs finish for `drain_grace` seconds and hands the rest back for a retry."""
        nc = await nats.connect(self.nats_url, name=self.worker_id, max_reconnect_attempts=-1)
        channel = grpc.aio.insecure_channel(self.dispatch)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        js = nc.jetstream()
        while not stop.is_set():
            try:
                await js.stream_info(self.run_stream)
                break
            except Exception as e:  # dispatch creates the stream; wait for it
                log.info("waiting for stream %s: %s", self.run_stream, e)
                await asyncio.sleep(0.5)
        running: set[asyncio.Task[None]] = set()
        hand_back = asyncio.Event()
        # Announce before the first pull, so a queue paused already is never pulled.
        await self._announce(stub, queues, running)
        announcer = asyncio.create_task(self._announcer(stub, queues, running, stop))
        pullers = []
        for queue, concurrency in queues.items():
            sub = await js.pull_subscribe(
                f"job_run.{queue}",
                durable=f"worker-{queue}",
                stream=self.run_stream,
                config=js_api.ConsumerConfig(
                    ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=100_000
                ),
            )
            slots = asyncio.Semaphore(max(1, concurrency))
            pullers.append(asyncio.create_task(self._pull(queue, sub, slots, stub, stop, hand_back, running)))
        log.info("worker %s started on %s", self.worker_id, dict(queues))
        if ready is not None:
            ready.set()
        await stop.wait()
        await asyncio.gather(*pullers, announcer, return_exceptions=True)
        if running:
            _, pending = await asyncio.wait(running, timeout=self.drain_grace)
            if pending:
                log.warning("grace period over: handing %d jobs back", len(pending))
                hand_back.set()
                await asyncio.wait(pending)
        await channel.close()
        await nc.close()
        log.info("worker %s stopped", self.worker_id)

    async def _announce(self, stub: Any, queues: Mapping[str, int], running: set[asyncio.Task[None]]) -> None:
        started = timestamp_pb2.Timestamp()
        started.FromSeconds(int(self._started))
        req = worker_service_pb2.AnnounceRequest(
            worker_id=self.worker_id, queues={q: max(1, c) for q, c in queues.items()}, in_flight=len(running),
            hostname=socket.gethostname()[:256], version="dispatch-client (Python)", started_at=started)
        try:
            resp = await stub.Announce(req, timeout=10)
        except grpc.aio.AioRpcError as e:
            log.warning("cannot announce to dispatch at %s: %s %s", self.dispatch, e.code().name, e.details())
            return
        self.paused = set(resp.paused_queues)
        if resp.HasField("interval"):
            self._announce_every = max(0.1, resp.interval.ToTimedelta().total_seconds())

    async def _announcer(self, stub: Any, queues: Mapping[str, int], running: set[asyncio.Task[None]],
                         stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._announce_every)
                return
            except asyncio.TimeoutError:
                pass
            await self._announce(stub, queues, running)

    async def _pull(self, queue: str, sub: Any, slots: asyncio.Semaphore, stub: Any, stop: asyncio.Event,
                    hand_back: asyncio.Event, running: set[asyncio.Task[None]]) -> None:
        # Jobs per message lately: a pull asks for as many messages as should fill the free slots.
        # Pessimistic (a message holds up to 64): it starts at the most, follows a larger message
        # at once and a smaller one slowly, so that few jobs wait for a slot.
        jobs_per_message = 64.0
        while not stop.is_set():
            if queue in self.paused:
                # Its run messages stay in the stream until it is resumed.
                await asyncio.sleep(0.2)
                continue
            await slots.acquire()
            free = 1
            while free < 256 and not slots.locked():
                await slots.acquire()
                free += 1
            try:
                msgs = await sub.fetch(batch=min(64, max(1, math.ceil(free / jobs_per_message))), timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                msgs = []
            except Exception as e:
                log.warning("pull failed: %s", e)
                msgs = []
                await asyncio.sleep(0.5)
            spare = free  # slots taken and not given to a job yet
            for msg in msgs:
                runs = _runs(msg)
                if not runs:
                    log.error("undecodable run message on %s dropped", msg.subject)
                    await msg.term()
                    continue
                n = len(runs)
                jobs_per_message = n if n > jobs_per_message else 0.8 * jobs_per_message + 0.2 * n
                delivery = _Delivery(msg, len(runs))
                for run in runs:
                    # A slot per job: the jobs of a message beyond the free slots wait here.
                    if spare > 0:
                        spare -= 1
                    else:
                        await slots.acquire()
                    task = asyncio.create_task(self._handle(run, delivery, stub, hand_back))
                    running.add(task)

                    def done(t: asyncio.Task[None]) -> None:
                        running.discard(t)
                        slots.release()

                    task.add_done_callback(done)
            for _ in range(spare):
                slots.release()

    async def _handle(self, run: job_pb2.JobRun, delivery: "_Delivery", stub: Any, hand_back: asyncio.Event) -> None:
        claim = worker_service_pb2.ClaimJobRequest(
            job_id=run.job_id, attempt=run.attempt, worker_id=self.worker_id, lease_duration=to_duration(self.lease)
        )
        try:
            job = (await stub.ClaimJob(claim, timeout=10)).job
        except grpc.aio.AioRpcError as e:
            if e.code() in _DROP:
                if e.details() == f"queue {run.queue} is paused":
                    self.paused.add(run.queue)  # dispatch writes it again on resume
                await delivery.settle(again=False)
            else:
                log.warning("claim of %s failed (%s); redelivered", run.job_id, e.code().name)
                await delivery.settle(again=True)
            return
        await delivery.settle(again=False)  # from here the lease in Redis is the one retry clock
        await self._run(job, stub, hand_back)

    async def _run(self, job: job_pb2.Job, stub: Any, hand_back: asyncio.Event) -> None:
        lease_id = job.lease.lease_id
        fn = self._handlers.get(job.type)
        if fn is None:
            await self._fail(stub, job, lease_id, f"no handler for job type {job.type!r} on worker {self.worker_id}", False)
            return
        ctx = JobContext(job)
        timeout = job.timeout.ToTimedelta().total_seconds() if job.HasField("timeout") else 60.0
        work = asyncio.create_task(_call(fn, ctx))
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(stub, ctx, lease_id, lost))
        stop_wait = asyncio.create_task(ctx.cancelled.wait())
        back = asyncio.create_task(hand_back.wait())
        done, _ = await asyncio.wait({work, stop_wait, back}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for t in (beat, stop_wait, back):
            t.cancel()
        if work in done:
            try:
                result = work.result()
            except FatalError as e:
                await self._fail(stub, job, lease_id, str(e) or "fatal error", False)
            except Exception as e:
                await self._fail(stub, job, lease_id, f"{type(e).__name__}: {e}", True)
            else:
                await self._report(stub.CompleteJob, worker_service_pb2.CompleteJobRequest(
                    job_id=job.id, lease_id=lease_id, result=to_value(result)))
            return
        work.cancel()
        ctx.cancelled.set()
        if lost.is_set():
            log.warning("job %s attempt %d: lease lost; abandoned", job.id, job.attempt)
        elif stop_wait in done:
            await self._fail(stub, job, lease_id, "cancelled", False)
        elif back in done:
            await self._fail(stub, job, lease_id, "worker shutting down; handed back", True, delay=0.0)
        else:
            await self._fail(stub, job, lease_id, f"timed out after {timeout:.3f}s", True)

    async def _heartbeat(self, stub: Any, ctx: JobContext, lease_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            req = worker_service_pb2.HeartbeatRequest(
                job_id=ctx.id, lease_id=lease_id, lease_duration=to_duration(self.lease))
            if ctx._progress_dirty:
                req.progress.CopyFrom(to_value(ctx._progress))
                ctx._progress_dirty = False
            try:
                resp = await stub.Heartbeat(req, timeout=self.lease / 3)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    lost.set()
                    ctx.cancelled.set()
                    return
                continue  # transient: the lease still has time
            if resp.cancel_requested:
                ctx.cancelled.set()
                return

    async def _fail(self, stub: Any, job: job_pb2.Job, lease_id: str, error: str, retryable: bool,
                    delay: float | None = None) -> None:
        req = worker_service_pb2.FailJobRequest(job_id=job.id, lease_id=lease_id, error=error[:4096], retryable=retryable)
        if delay is not None:
            req.retry_delay.CopyFrom(to_duration(delay))
        await self._report(stub.FailJob, req)

    async def _report(self, method: Callable[..., Awaitable[Any]], req: Any) -> None:
        """Sends a report, retrying for about 30 s while dispatch is unreachable."""
        pause, loop = 0.05, asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                await method(req, timeout=10)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in _TRANSIENT or loop.time() > deadline:
                    log.warning("report for %s not recorded: %s %s", req.job_id, e.code().name, e.details())
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)


async def _call(fn: Handler, ctx: JobContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx)
    return await asyncio.to_thread(fn, ctx)


def _runs(msg: Any) -> list[job_pb2.JobRun]:
    """The jobs a run message names: one (kind `run`, a `JobRun`) or several (kind `runs`, a
    `JobRuns`); none when it is undecodable."""
    try:
        if (msg.headers or {}).get("Dispatch-Kind") == "runs":
            runs = list(job_pb2.JobRuns.FromString(msg.data).runs)
        else:
            runs = [job_pb2.JobRun.FromString(msg.data)]
    except Exception:
        return []
    return [r for r in runs if r.job_id and r.attempt > 0]


class _Delivery:
    """A pulled message shared by the jobs it names: acked once each of them was claimed or
    refused for good, handed back (nak) to be delivered again if a claim could not be made (the
    claims of jobs taken already are then refused)."""

    def __init__(self, msg: Any, jobs: int) -> None:
        self.msg, self.left, self.again = msg, jobs, False

    async def settle(self, again: bool) -> None:
        self.again = self.again or again
        self.left -= 1
        if self.left == 0:
            if self.again:
                await self.msg.nak(delay=1)
            else:
                await self.msg.ack()
