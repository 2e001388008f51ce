"""uvicorn's httptools protocol, sending each response in one write, with bounded requests.

uvicorn writes a response's head and its body separately: two system calls and two TCP
segments for an answer of a few hundred bytes. Writes made in the same turn of the event loop
are joined here and leave together at the end of that turn.

uvicorn's httptools protocol also puts no bound on a request's head (URL, header count and
size) nor on how long a client may take to send it or its body, and it answers a request it
cannot parse in ``text/plain``. Here the head is bounded by the ``IDEMGATE_MAX_URL_BYTES``,
``IDEMGATE_MAX_HEADER_COUNT`` and ``IDEMGATE_MAX_HEADER_BYTES`` settings, a request's head must
arrive within ``IDEMGATE_HEAD_TIMEOUT_S`` of its first byte and its body within
``IDEMGATE_BODY_TIMEOUT_S`` of its head, a new connection that sends nothing is closed after
``IDEMGATE_KEEP_ALIVE_S`` like an idle one, and every refusal is a problem-details answer that
closes the connection.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, NoReturn

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from idemgate._exceptions import (
    HeadersTooLargeError,
    InvalidRequestError,
    ProblemError,
    RequestTimeoutError,
    URITooLongError,
)
from idemgate._observability import new_request_id
from idemgate._settings import Settings

__all__ = ["OneWriteHttpToolsProtocol", "problem_message"]

_PROBLEM_TYPE_BASE = "https://idemgate.dev/problems/"


class _JoinedWrites:
    """A connection's transport whose writes within one loop turn are sent as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@functools.cache
def _settings() -> Settings:
    return Settings()


def problem_message(error: ProblemError) -> bytes:
    """A whole HTTP/1.1 answer carrying ``error`` as problem details, closing the connection.

    For answers given below the application, before a request has an ID of its own.
    """
    request_id = new_request_id()
    body = orjson.dumps(
        {
            "type": _PROBLEM_TYPE_BASE + error.code.lower().replace("_", "-"),
            "title": error.title,
            "status": error.status,
            "detail": error.detail,
            "code": error.code,
            "request_id": request_id,
        }
    )
    head = (
        f"HTTP/1.1 {error.status} {error.title}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = _JoinedWrites(transport, asyncio.get_running_loop())
        super().connection_made(joined)  # type: ignore[arg-type]
        self._limits = _settings()
        self._refusal: ProblemError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._header_count = self._header_bytes = 0
        self._in_head, self._head_bytes = True, 0
        # A connection that never sends a byte is idle like one between requests: uvicorn's
        # keep-alive timer closes it, and the first byte cancels that timer.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # The parser holds a header until it ends: bytes that leave the head still unfinished
        # count against its limit here, so one endless header cannot grow without bound.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            limit = self._limits.max_url_bytes + self._limits.max_header_bytes
            if self._head_bytes > limit:
                self._refusal = HeadersTooLargeError(
                    f"The request head is larger than {limit} bytes."
                )
                self.send_400_response("")

    def connection_lost(self, exc: Exception | None) -> None:
        self._time_limit(None)
        super().connection_lost(exc)

    def _time_limit(self, seconds: float | None, what: str = "") -> None:
        """Answer 408 and close unless the ``what`` arrives within ``seconds``; None: no limit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds is not None:
            self._timer = self.loop.call_later(seconds, self._timed_out, seconds, what)

    def _timed_out(self, seconds: float, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            error = RequestTimeoutError(f"The {what} did not arrive within {seconds:g} s.")
            self.transport.write(problem_message(error))
        self.transport.close()

    def _refuse(self, error: ProblemError) -> NoReturn:
        """Stop parsing: uvicorn then calls ``send_400_response``, which answers ``error``."""
        self._refusal = error
        raise error

    def send_400_response(self, msg: str) -> None:
        error = self._refusal or InvalidRequestError("The request is not valid HTTP/1.1.")
        self._time_limit(None)
        self.transport.write(problem_message(error))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._header_bytes = 0
        self._in_head, self._head_bytes = True, 0
        self._time_limit(self._limits.head_timeout_s, "request head")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._limits.max_url_bytes:
            self._refuse(
                URITooLongError(f"The URL is longer than {self._limits.max_url_bytes} bytes.")
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > self._limits.max_header_count:
            self._refuse(
                HeadersTooLargeError(f"More than {self._limits.max_header_count} headers.")
            )
        if self._header_bytes > self._limits.max_header_bytes:
            self._refuse(
                HeadersTooLargeError(
                    f"The headers are larger than {self._limits.max_header_bytes} bytes."
                )
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._time_limit(self._limits.body_timeout_s, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._time_limit(None)
        super().on_message_complete()
