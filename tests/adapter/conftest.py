"""Fixtures for the Lambda adapter's tests: stores, and gateways that misbehave on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Self

import pytest

from idemgate.testing import GatewayServer, free_port
from lambda_adapter import GatewayPersistenceLayer


@pytest.fixture
def store(gateway: GatewayServer, namespace: str) -> GatewayPersistenceLayer:
    """A store on the real gateway (each backend in turn), in the test's own namespace.

    A small reserve lets short fake invocations (a few hundred ms) still reach the gateway.
    """
    return GatewayPersistenceLayer(url=gateway.url, namespace=namespace, reserve_ms=100)


@pytest.fixture
def unreachable_url() -> str:
    """A loopback URL nothing listens on: every connection is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


class LoopbackServer:
    """A threaded TCP server on 127.0.0.1: ``serve`` runs on a thread of its own per connection.

    On exit it stops accepting, shuts every connection down (which wakes a thread blocked in
    ``recv``) and waits for the threads.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop notices the server stopping
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self._open: list[socket.socket] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._start(self._accept)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for connection in self._open:
            with contextlib.suppress(OSError):  # already closed
                connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._open.append(connection)
            self._start(self.serve, connection)


class StallingServer(LoopbackServer):
    """A server that accepts connections and never finishes a response.

    With ``trickle`` it sends that response one byte every ``interval`` seconds; without, it
    stays silent. Each connection stops by itself after ``lifetime`` seconds, and all of them
    stop when the server does.
    """

    def __init__(
        self, *, trickle: bytes | None = None, interval: float = 0.01, lifetime: float = 10.0
    ) -> None:
        super().__init__()
        self.trickle = trickle
        self.interval = interval
        self.lifetime = lifetime

    def serve(self, connection: socket.socket) -> None:
        ends = time.monotonic() + self.lifetime
        with connection, contextlib.suppress(OSError):  # the client hung up: done
            connection.settimeout(self.interval)
            position = 0
            while not self._stopping.is_set() and time.monotonic() < ends:
                if self.trickle is None:
                    with contextlib.suppress(TimeoutError):
                        if not connection.recv(65536):
                            return
                elif position < len(self.trickle):
                    connection.sendall(self.trickle[position : position + 1])
                    position += 1
                    time.sleep(self.interval)


# A status line, then a header longer than any test waits for, one byte every 10 ms.
TRICKLED_RESPONSE = b"HTTP/1.1 201 Created\r\nX-Slow: " + b"a" * 4096


@pytest.fixture
def silent_server() -> Iterator[StallingServer]:
    with StallingServer() as server:
        yield server


@pytest.fixture
def trickling_server() -> Iterator[StallingServer]:
    with StallingServer(trickle=TRICKLED_RESPONSE) as server:
        yield server
