"""Shared fixtures: real DynamoDB Local and real gateways on loopback, one per storage backend,
and a moto server (``moto_server``) for what DynamoDB Local cannot check.

The DynamoDB suite never skips: if DynamoDB Local or Java is missing, the session fails and says
what to install.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate.testing import DynamoDBLocal, DynamoDBLocalMissingError, GatewayServer, free_port

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


class MotoServer:
    """moto in server mode: one process on 127.0.0.1 that emulates every AWS service moto knows.

    For what DynamoDB Local cannot check (signatures, IAM, STS) and for other services (SQS,
    ...). Start it as a context manager, or use the session's ``moto_server`` fixture::

        iam = moto_server.boto3_client("iam")          # any credentials while auth is off
        iam.create_user(UserName="u")
        with moto_server.authentication():              # now every call must be signed by a
            ...                                         # key moto issued, and is verified

    Authentication is off when the server starts, so a test can first create users, keys,
    roles and policies; ``authentication()`` turns it on (through moto's
    ``/moto-api/reset-auth``) until the block ends. State persists for the server's life: use
    names of your own (``uuid``) or ``reset()``.
    """

    ACCOUNT_ID = "123456789012"  # moto's default account

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "inf"}
        self._process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/moto-api/data.json", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"moto_server on {self.url} did not start in time")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def boto3_client(self, service: str, **credentials: str) -> Any:
        """A boto3 client for ``service`` here, in us-east-1; placeholder keys unless given."""
        import boto3

        keys = {"aws_access_key_id": "unused", "aws_secret_access_key": "unused", **credentials}
        return boto3.client(service, region_name="us-east-1", endpoint_url=self.url, **keys)

    def _set_auth_after(self, actions: str) -> None:
        httpx.post(
            f"{self.url}/moto-api/reset-auth", content=actions, timeout=10
        ).raise_for_status()

    @contextlib.contextmanager
    def authentication(self) -> Iterator[None]:
        """IAM authentication on (every request signed by a key moto issued) for the block."""
        self._set_auth_after("0")
        try:
            yield
        finally:
            self._set_auth_after("inf")

    def reset(self) -> None:
        """Forget every resource of every service."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session (see ``MotoServer``)."""
    with MotoServer() as server:
        yield server
