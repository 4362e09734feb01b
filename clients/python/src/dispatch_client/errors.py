"""gRPC errors as Python exceptions, one class per status code a caller handles differently."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


class DispatchError(Exception):
    """A call to dispatch failed. `code` is the gRPC status code; `message` its text."""

    def __init__(self, code: grpc.StatusCode, message: str, field_violations: list[tuple[str, str]] | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        #: For INVALID_ARGUMENT: every (field, description) the server reported.
        self.field_violations = field_violations or []


class InvalidArgument(DispatchError):
    """The request was refused as it stands; see `field_violations`. Do not retry unchanged."""


class NotFound(DispatchError):
    """No job with that id."""


class FailedPrecondition(DispatchError):
    """The job is not in a state that allows this (it moved on, or the lease is stale)."""


class Unauthenticated(DispatchError):
    """No API key, or one dispatch does not know (authentication on)."""


class PermissionDenied(DispatchError):
    """The API key's role may not make this call, or the lease belongs to another key."""


class ResourceExhausted(DispatchError):
    """Dispatch is at capacity. Retry with backoff."""


class Unavailable(DispatchError):
    """Dispatch or its job store is unreachable. Retry with backoff."""


class DeadlineExceeded(DispatchError):
    """The call, or a wait for a job to end, ran out of time."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(err: grpc.RpcError) -> DispatchError:
    """The DispatchError subclass for a grpc.RpcError, with field violations decoded."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    violations: list[tuple[str, str]] = []
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations += [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code, DispatchError)
    return cls(code, message or "", violations)
