"""The everyday verbs over the generated stubs: create, get, list, wait, watch, cancel, retry."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from . import errors
from ._convert import Seconds, to_duration, to_timestamp, to_value
from .v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, worker_service_pb2_grpc

JobState = job_pb2.JobState
TERMINAL = frozenset({JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED})


def job_options(
    *,
    max_attempts: int | None = None,
    timeout: Seconds | None = None,
    delay: Seconds | None = None,
    run_at: datetime.datetime | None = None,
    idempotency_key: str | None = None,
    labels: Mapping[str, str] | None = None,
    backoff_initial: Seconds | None = None,
    backoff_max: Seconds | None = None,
) -> job_pb2.JobOptions:
    """JobOptions from keyword arguments; anything left out takes dispatch's default."""
    o = job_pb2.JobOptions()
    if max_attempts is not None:
        o.max_attempts = max_attempts
    if timeout is not None:
        o.timeout.CopyFrom(to_duration(timeout))
    if delay is not None:
        o.delay.CopyFrom(to_duration(delay))
    if run_at is not None:
        o.run_at.CopyFrom(to_timestamp(run_at))
    if idempotency_key is not None:
        o.idempotency_key = idempotency_key
    if labels:
        o.labels.update(labels)
    if backoff_initial is not None:
        o.backoff.initial.CopyFrom(to_duration(backoff_initial))
    if backoff_max is not None:
        o.backoff.max.CopyFrom(to_duration(backoff_max))
    return o


def _pem(value: bytes | str | os.PathLike[str] | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


class Client:
    """A connection to dispatch's gRPC API.

    `jobs` and `workers` are the generated stubs, for anything the wrapper does not cover.
    Every call raises a `dispatch_client.errors.DispatchError` subclass on failure.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        token: str | None = None,
        ca_cert: bytes | str | os.PathLike[str] | None = None,
        client_cert: bytes | str | os.PathLike[str] | None = None,
        client_key: bytes | str | os.PathLike[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        call_timeout: float | None = 30.0,
    ) -> None:
        """`token`: an API key, sent as `authorization: Bearer <token>` with every call.
        `ca_cert` (PEM bytes or a file path): TLS, trusting that CA (`tls=True`-like with the
        system's roots: pass `credentials=grpc.ssl_channel_credentials()`); `client_cert` and
        `client_key` add a client certificate for mutual TLS. `credentials` wins over those."""
        if credentials is None and (ca_cert is not None or client_cert is not None):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_cert),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
        self._channel = (
            grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        )
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        self._timeout = call_timeout
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def create(
        self,
        queue: str,
        type: str,
        payload: Any = None,
        *,
        options: job_pb2.JobOptions | None = None,
        **option_kwargs: Any,
    ) -> job_pb2.Job:
        """Creates a job; `payload` is any JSON-able value. Options as `options=job_options(...)`
        or directly as keywords (`max_attempts=5, delay=10, idempotency_key="order-42"`)."""
        return self.create_job(queue, type, payload, options=options, **option_kwargs).job

    def create_job(
        self,
        queue: str,
        type: str,
        payload: Any = None,
        *,
        options: job_pb2.JobOptions | None = None,
        **option_kwargs: Any,
    ) -> job_service_pb2.CreateJobResponse:
        """Like `create`, returning the whole response (`created` is False when an
        idempotency key matched an existing job)."""
        req = _create_request(queue, type, payload, options or job_options(**option_kwargs))
        return self._call(self.jobs.CreateJob, req)

    def create_many(
        self, jobs: Iterable[Mapping[str, Any]], *, ids_only: bool = False
    ) -> list[job_service_pb2.CreateJobResponse]:
        """Creates up to 1,000 jobs in one call: each a mapping with `queue`, `type`, and
        optionally `payload` and `options` (a JobOptions or a dict of `job_options` keywords).
        With `ids_only=True` each result's job carries only its id."""
        reqs = []
        for j in jobs:
            opts = j.get("options")
            if isinstance(opts, Mapping):
                opts = job_options(**opts)
            reqs.append(_create_request(j["queue"], j["type"], j.get("payload"), opts or job_pb2.JobOptions()))
        resp = self._call(self.jobs.CreateJobs, job_service_pb2.CreateJobsRequest(jobs=reqs, ids_only=ids_only))
        return list(resp.results)

    def get(self, job_id: str) -> job_pb2.Job:
        """The job's record. Raises NotFound when there is none."""
        return self._call(self.jobs.GetJob, job_service_pb2.GetJobRequest(id=job_id)).job

    def list(self, queue: str = "", state: int = JobState.JOB_STATE_UNSPECIFIED, page_size: int = 100,
             type: str = "", labels: Mapping[str, str] | None = None) -> Iterator[job_pb2.Job]:
        """Every job matching the filters (a job must carry every label given), oldest first,
        fetched a page at a time."""
        token = ""
        wanted = [f"{k}={v}" for k, v in (labels or {}).items()]
        while True:
            req = job_service_pb2.ListJobsRequest(queue=queue, state=state, page_size=page_size, page_token=token,
                                                  type=type, labels=wanted)
            resp = self._call(self.jobs.ListJobs, req)
            yield from resp.jobs
            if not resp.next_page_token:
                return
            token = resp.next_page_token

    def queues(self) -> list[job_pb2.QueueInfo]:
        """Depth and counts per state of every queue, and whether it is paused."""
        return list(self._call(self.jobs.ListQueues, job_service_pb2.ListQueuesRequest()).queues)

    def pause(self, queue: str) -> job_pb2.QueueInfo:
        """Pauses a queue: its jobs wait, QUEUED, until `resume` (admin key)."""
        return self._call(self.jobs.PauseQueue, job_service_pb2.PauseQueueRequest(name=queue)).queue

    def resume(self, queue: str) -> job_pb2.QueueInfo:
        """Resumes a paused queue (admin key)."""
        return self._call(self.jobs.ResumeQueue, job_service_pb2.ResumeQueueRequest(name=queue)).queue

    def list_workers(self) -> list[job_pb2.WorkerInfo]:
        """The workers that announced themselves in the last few seconds."""
        return list(self._call(self.jobs.ListWorkers, job_service_pb2.ListWorkersRequest()).workers)

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[job_pb2.JobEvent]:
        """The job's events from its creation on, one per transition; ends after the terminal
        one. `timeout` bounds the whole stream (DeadlineExceeded)."""
        try:
            for resp in self.jobs.WatchJob(
                job_service_pb2.WatchJobRequest(id=job_id), timeout=timeout, metadata=self._metadata
            ):
                yield resp.event
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def wait(self, job_id: str, timeout: float = 60.0) -> job_pb2.Job:
        """Blocks until the job is SUCCEEDED, FAILED or CANCELLED and returns it; raises
        DeadlineExceeded after `timeout` seconds."""
        # The stream replays history (a retried job has older terminal events) and ends once the
        # latest event is terminal: follow it to its end.
        for _ in self.watch(job_id, timeout=timeout):
            pass
        return self.get(job_id)

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels at once when waiting; a running job is told through its next heartbeat.
        Raises FailedPrecondition when the job has already ended."""
        return self._call(self.jobs.CancelJob, job_service_pb2.CancelJobRequest(id=job_id, reason=reason)).job

    def retry(self, job_id: str) -> job_pb2.Job:
        """Runs a FAILED or CANCELLED job again with a fresh budget of attempts."""
        return self._call(self.jobs.RetryJob, job_service_pb2.RetryJobRequest(id=job_id)).job


def _create_request(queue: str, type: str, payload: Any, options: job_pb2.JobOptions) -> job_service_pb2.CreateJobRequest:
    return job_service_pb2.CreateJobRequest(queue=queue, type=type, payload=to_value(payload), options=options)
