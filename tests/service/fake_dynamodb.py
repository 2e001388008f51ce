"""A scripted DynamoDB endpoint on loopback, for what DynamoDB Local cannot show.

With ``tls`` it serves HTTPS (as ``https://localhost:PORT``), for trust and proxy tests.

``FakeDynamoDB`` serves HTTP/1.1 from an event loop in a thread of its own, so a test can
point a gateway subprocess or an in-process client at it. Each request takes the next reply
from the script (``script(...)``), or ``default`` once the script is empty, and is kept in
``requests``. A reply is one of:

- ``Answer(status, body, ...)``: a DynamoDB-shaped answer with ``x-amzn-RequestId`` and
  ``x-amz-crc32`` (a wrong one with ``crc32=...``), optionally closing the connection after;
- ``dynamodb_error(status, type)``: a DynamoDB error body (``__type``, ``message``);
- ``RESET``: half an answer, then a TCP reset;
- ``SILENT``: no answer at all, the connection held open;
- ``HANG_UP``: the connection closed without an answer.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["HANG_UP", "RESET", "SILENT", "Answer", "FakeDynamoDB", "Seen", "dynamodb_error"]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)
    crc32: int | None = None  # None: the right one
    close: bool = False
    request_id: str | None = None

    def encode(self, request_id: str) -> bytes:
        payload = orjson.dumps(self.body)
        crc = zlib.crc32(payload) if self.crc32 is None else self.crc32
        head = [
            f"HTTP/1.1 {self.status} X",
            "Content-Type: application/x-amz-json-1.0",
            f"x-amzn-RequestId: {self.request_id or request_id}",
            f"x-amz-crc32: {crc}",
            f"Content-Length: {len(payload)}",
        ]
        if self.close:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def dynamodb_error(status: int, error: str, message: str = "scripted") -> Answer:
    return Answer(
        status, {"__type": f"com.amazonaws.dynamodb.v20120810#{error}", "message": message}
    )


RESET = "reset"
SILENT = "silent"
HANG_UP = "hang-up"
Reply = Answer | str


@dataclass(frozen=True)
class Seen:
    """One request the fake received: its headers (lower-case names), body and connection."""

    headers: dict[str, str]
    body: bytes
    connection: int

    @property
    def operation(self) -> str:
        return self.headers.get("x-amz-target", "").rpartition(".")[2]


class FakeDynamoDB:
    """See the module docstring; a context manager, listening on 127.0.0.1."""

    def __init__(self, default: Reply | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.default: Reply = default if default is not None else Answer()
        self._tls = tls
        self.requests: list[Seen] = []
        self.connections = 0
        self._script: deque[Reply] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""
        self.arrived = threading.Condition(self._lock)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    def wait_for_requests(self, count: int, timeout_s: float = 10) -> list[Seen]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout_s)
            return list(self.requests)

    def __enter__(self) -> FakeDynamoDB:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls), self._loop
        ).result()
        self._server = server
        port = server.sockets[0].getsockname()[1]
        self.url = f"https://localhost:{port}" if self._tls else f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _next(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            self.arrived.notify_all()
            return self._script.popleft() if self._script else self.default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                reply = self._next(Seen(headers, body, connection))
                if reply == SILENT:
                    await reader.read()  # until the client gives up
                    return
                if reply == HANG_UP:
                    return
                if reply == RESET:
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"Item')
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                assert isinstance(reply, Answer)
                writer.write(reply.encode(f"FAKE-{next(self._ids):04d}"))
                await writer.drain()
                if reply.close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
