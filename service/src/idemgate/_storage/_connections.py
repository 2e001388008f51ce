"""Keep-alive HTTP/1.1 connections for the DynamoDB client: one write out, httptools in.

DynamoDB's API is one POST and one small JSON answer at a time, so a general HTTP client buys
little and costs a lot: httpcore with h11 and anyio ran about 1,500 Python calls, about 1 ms
of user CPU, per request on a 2-core box, more than DynamoDB Local took to answer. Here a
request is one ``transport.write`` and the answer is parsed by httptools (llhttp, the parser
uvicorn already runs on), so a call costs about 0.15 ms.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["Answer", "ConnectionPool", "ExchangeError"]


class ExchangeError(Exception):
    """The connection failed or closed before a whole answer arrived, or sent a malformed one."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time; ``reusable`` once an answer left it clean."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self.reusable = False

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
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeError(f"malformed answer: {exc}"))
            self.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is None or self._waiter.done():
            # A second answer to one request, or one to a call that gave up: out of step.
            self.close()
            return
        self.reusable = self.reusable and self._parser.should_keep_alive()
        answer = Answer(self._parser.get_status_code(), b"".join(self._body))
        self._waiter.set_result(answer)
        self._waiter = None

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None
        self._body = []
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


class ConnectionPool:
    """Up to ``size`` keep-alive connections to one HTTP(S) endpoint.

    ``post`` raises ``TimeoutError`` when ``timeout_s`` passes (connecting, waiting for a free
    connection and the exchange all count), ``ExchangeError`` or ``OSError`` on failure.
    A connection that failed or timed out is closed, never reused.
    """

    def __init__(self, endpoint: str, *, size: int, timeout_s: float) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._path = url.path or "/"
        self.authority = url.netloc  # the Host header's value
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []

    async def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """POST ``body`` with ``headers`` (``host`` among them; ``content-length`` is added)."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"POST {self._path} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with asyncio.timeout(self._timeout_s), self._slots:
            connection = await self._checkout()
            try:
                answer = await connection.exchange(request)
            except BaseException:
                connection.close()
                raise
            if connection.reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    async def _checkout(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()  # the most recent: the least likely to have timed out
            if connection.reusable:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection,
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl else None,
        )
        return connection

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
