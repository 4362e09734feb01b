"""The tests run against a live stack (Redis, NATS, dispatch and two Rust workers on queue
"default"), started on free ports by tools/with-stack.sh, which sets the variables below."""

import os

import pytest


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests through tools/test-clients.sh", returncode=2)
    return value


@pytest.fixture(scope="session")
def grpc_target() -> str:
    return _env("STACK_GRPC")


@pytest.fixture(scope="session")
def nats_url() -> str:
    return _env("STACK_NATS")


@pytest.fixture()
def client(grpc_target):
    from dispatch_client import Client

    with Client(grpc_target) as c:
        yield c


@pytest.fixture(scope="session")
def secure_stack() -> dict:
    """A second dispatch of the same stack with TLS and API keys on (tools/test-clients.sh)."""
    return {
        "target": _env("STACK_TLS_GRPC"),
        "ca": _env("STACK_CA"),
        "token": _env("STACK_TOKEN"),
        "viewer_token": _env("STACK_VIEWER_TOKEN"),
    }
