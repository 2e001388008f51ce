"""Shared fixtures: real DynamoDB Local and real gateways on loopback, one per storage backend.

The DynamoDB suite never skips: if DynamoDB Local or Java is missing, the session fails and says
what to install.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idemgate.testing import DynamoDBLocal, DynamoDBLocalMissingError, GatewayServer

# DynamoDB Local accepts any credentials; the gateways started here inherit these.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

BACKENDS = ["sqlite", "dynamodb"]


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    try:
        server = DynamoDBLocal().start()
    except DynamoDBLocalMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dynamodb_storage_url(dynamodb_local: DynamoDBLocal) -> str:
    """A DynamoDB table created with ``idemgate create-table``, shared by the session."""
    from idemgate._cli import main

    url = dynamodb_local.storage_url("idemgate-test")
    assert main(["create-table", "--storage", url]) == 0
    return url


@pytest.fixture(scope="session")
def sqlite_storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "idemgate.db"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session", params=BACKENDS)
def storage_url(request: pytest.FixtureRequest) -> str:
    """The storage URL of each backend in turn."""
    url: str = request.getfixturevalue(f"{request.param}_storage_url")
    return url


@pytest.fixture(scope="session")
def gateway(storage_url: str) -> Iterator[GatewayServer]:
    """A real ``idemgate serve`` on loopback, once per backend."""
    with GatewayServer(storage=storage_url) as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests sharing a gateway never collide."""
    return f"t-{uuid.uuid4().hex[:12]}"
