"""Python client for Dispatch, the gRPC-first job dispatcher.

- `Client`: create, get, list, wait, watch, cancel, retry over gRPC.
- `Worker`: run jobs from NATS JetStream in Python, reporting through gRPC.
- `dispatch_client.v1`: the generated messages (with `.pyi` stubs) and gRPC stubs.
- `dispatch_client.errors`: one exception class per status code worth telling apart.
"""

from . import errors
from ._convert import from_value, to_value
from .client import TERMINAL, Client, JobState, job_options
from .errors import DispatchError, FailedPrecondition, InvalidArgument, NotFound
from .v1 import job_pb2
from .worker import FatalError, JobContext, RetryableError, Worker

Job = job_pb2.Job


def payload(job: job_pb2.Job):
    """The job's payload as a Python value."""
    return from_value(job.payload) if job.HasField("payload") else None


def result(job: job_pb2.Job):
    """The job's result as a Python value (None until it SUCCEEDED)."""
    return from_value(job.result) if job.HasField("result") else None


__all__ = [
    "TERMINAL",
    "Client",
    "DispatchError",
    "FailedPrecondition",
    "FatalError",
    "InvalidArgument",
    "Job",
    "JobContext",
    "JobState",
    "NotFound",
    "RetryableError",
    "Worker",
    "errors",
    "from_value",
    "job_options",
    "payload",
    "result",
    "to_value",
]
