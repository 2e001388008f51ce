"""An httpx transport whose calls end at a wall-clock deadline, whatever the server does.

httpx's timeouts are per phase and per socket operation: a server that trickles one byte every
second never trips a one-second read timeout. Here every blocking socket operation waits at most
until the deadline of the call in progress (held in a context variable, so threads sharing the
transport each keep their own), which bounds the call's whole time without a watchdog thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    import ssl

__all__ = ["DeadlineTransport", "call_deadline"]

_deadline: ContextVar[float | None] = ContextVar("idemgate_call_deadline", default=None)


@contextmanager
def call_deadline(deadline: float) -> Iterator[None]:
    """Socket waits inside this block end by ``deadline`` (a ``time.monotonic()`` value)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _bounded(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose socket waits end by the call's deadline.

    Writes are held until the next read, so a request's head and body (which httpcore writes
    separately) leave in one send: one system call and one segment instead of two.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self._pending = bytearray()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            self._stream.write(pending, _bounded(timeout, httpcore.WriteTimeout))
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pending += buffer

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # The DNS lookup inside cannot be interrupted; an IP address or a local resolver
        # keeps it short.
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` over a connection pool with the deadline-bound backend.

    ``HTTPTransport.__init__`` is skipped on purpose: it has no hook for a network backend, and
    it builds an SSL context (about 20 ms of cold start) even when the gateway is plain HTTP.
    Requests, responses and error mapping are httpx's own.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=64,
            max_keepalive_connections=16,
            keepalive_expiry=30.0,
            network_backend=_DeadlineBackend(),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
