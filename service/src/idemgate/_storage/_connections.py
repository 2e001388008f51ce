"""Keep-alive HTTP/1.1 connections for the DynamoDB client: one write out, httptools in.

DynamoDB's API is one POST and one small JSON answer at a time, so a general HTTP client buys
little and costs a lot: httpcore with h11 and anyio ran many Python calls per request, more
CPU than DynamoDB Local took to answer (docs/performance.md). Here a request is one
``transport.write`` and the answer is parsed by httptools (llhttp, the parser uvicorn
already runs on).

Keep-alive has two hazards. A far side (DynamoDB's front ends, a NAT gateway, a proxy) closes
connections it finds idle; the pool drops its own after ``idle_timeout_s``, below the usual
one-minute limits, so it rarely meets one. And a close can still cross a request in flight:
a request that fails on a reused connection before any byte of an answer came back is sent
once more on a fresh connection. Every request the DynamoDB client sends is safe to send
twice (its writes are conditional, its deletes idempotent), which this relies on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

__all__ = ["Answer", "ConnectionPool", "ExchangeError"]


class ExchangeError(Exception):
    """The connection failed or closed before a whole answer arrived, or sent a malformed one."""


DEFAULT_IDLE_TIMEOUT_S = 50.0
_MAX_PROXY_HEAD_BYTES = 16384


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer; ``request_id`` and ``crc32`` are DynamoDB's headers when it sent them."""

    status: int
    body: bytes
    request_id: str = ""
    crc32: int | None = None


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time; ``reusable`` once an answer left it clean."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._request_id = ""
        self._crc32: int | None = None
        self.reusable = False
        self.answered = False  # bytes of an answer to the current request arrived
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass
        self.reusable = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(ExchangeError(f"the connection closed: {exc or 'by the server'}"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nobody asked: an idle connection must stay silent
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeError(f"malformed answer: {exc}"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"x-amzn-requestid":
            self._request_id = value.decode("latin-1")
        elif name == b"x-amz-crc32" and value.isdigit():
            self._crc32 = int(value)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is None or self._waiter.done():
            # A second answer to one request, or one to a call that gave up: out of step.
            self.close()
            return
        self.reusable = self.reusable and self._parser.should_keep_alive()
        answer = Answer(
            self._parser.get_status_code(), b"".join(self._body), self._request_id, self._crc32
        )
        self._waiter.set_result(answer)
        self._waiter = None

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None
        self._body = []
        self._request_id, self._crc32 = "", None
        self.answered = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def _fail(self, error: ExchangeError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self._waiter = None

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class _Proxy:
    """An HTTP proxy that opens ``CONNECT`` tunnels, with Basic credentials if its URL has any."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// proxy: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authorization = ""
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = (
                f"Proxy-Authorization: Basic {b64encode(secret.encode()).decode()}\r\n"
            )

    async def tunnel(self, host: str, port: int) -> asyncio.Transport:
        """A connection to ``host:port`` through the proxy, ready for TLS."""
        target = f"{host}:{port}"
        loop = asyncio.get_running_loop()
        transport, reply = await loop.create_connection(_TunnelReply, self.host, self.port)
        try:
            transport.write(
                f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{self.authorization}\r\n".encode()
            )
            status_line = await reply.status_line
        except BaseException:
            transport.close()
            raise
        if not (status_line.startswith(b"HTTP/1.") and status_line[9:12] == b"200"):
            transport.close()
            line = status_line.decode("latin-1")
            raise ExchangeError(f"the proxy refused a tunnel to {target}: {line}")
        return transport


class _TunnelReply(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT``: its status line, once the whole head arrived."""

    def __init__(self) -> None:
        self.status_line: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head and not self.status_line.done():
            self.status_line.set_result(self._head.split(b"\r\n", 1)[0])
        elif len(self._head) > _MAX_PROXY_HEAD_BYTES and not self.status_line.done():
            self.status_line.set_exception(ExchangeError("the proxy's answer is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status_line.done():
            self.status_line.set_exception(
                ExchangeError(f"the proxy closed the connection: {exc or 'without an answer'}")
            )


class ConnectionPool:
    """Up to ``size`` keep-alive connections to one HTTP(S) endpoint.

    HTTPS is verified against ``ca_bundle`` if given, else the system trust store; with
    ``proxy`` (an ``http://`` URL) an HTTPS endpoint is reached through a ``CONNECT`` tunnel.

    ``post`` raises ``ExchangeError`` or ``OSError`` on failure; its caller bounds its time
    (connecting, waiting for a free connection and the exchange) with ``asyncio.timeout``.
    A connection that failed or was cancelled is closed, never reused.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        size: int,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        proxy: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context(cafile=ca_bundle) if url.scheme == "https" else None
        self._proxy = _Proxy(proxy) if proxy and self._ssl else None
        self._path = url.path or "/"
        self.authority = url.netloc  # the Host header's value
        self._idle_timeout_s = idle_timeout_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []

    async def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """POST ``body`` with ``headers`` (``host`` among them; ``content-length`` is added)."""
        head = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        request = (
            f"POST {self._path} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with self._slots:
            connection = self._reuse()
            if connection is not None:
                try:
                    return await self._exchange(connection, request)
                except ExchangeError:
                    if connection.answered:
                        raise
                    # Closed by the far side before it answered: once more, on a fresh one.
            return await self._exchange(await self._connect(), request)

    async def _exchange(self, connection: _Connection, request: bytes) -> Answer:
        try:
            answer = await connection.exchange(request)
        except BaseException:
            connection.close()
            raise
        if connection.reusable:
            connection.idle_since = now = time.monotonic()
            self._idle.append(connection)
            oldest = self._idle[0]
            if oldest.idle_since <= now - self._idle_timeout_s:
                self._idle.pop(0).close()
        else:
            connection.close()
        return answer

    def _reuse(self) -> _Connection | None:
        """The most recently used idle connection still open and young enough, if any."""
        fresh_since = time.monotonic() - self._idle_timeout_s
        while self._idle:
            connection = self._idle.pop()  # the most recent: the least likely to be closed
            if connection.reusable and connection.idle_since > fresh_since:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._proxy is None:
            _, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
            return connection
        assert self._ssl is not None
        transport = await self._proxy.tunnel(self._host, self._port)
        connection = _Connection()
        try:
            tls = await loop.start_tls(transport, connection, self._ssl, server_hostname=self._host)
        except BaseException:
            transport.close()
            raise
        assert tls is not None
        connection.connection_made(tls)
        return connection

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
