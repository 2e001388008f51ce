"""A transport that speaks HTTP/1.1 itself, and whose calls end at a wall-clock deadline.

Why not httpx's own transport: a gateway call through httpcore and h11 runs many times the
Python function calls a plain socket client needs (connection-pool bookkeeping, h11's state
machine, tracing hooks), and the adapter makes two such calls per invocation, inside the
function's own time: that difference was most of the adapter's CPU cost (figures in
docs/performance.md). The gateway's answers are small JSON bodies over keep-alive connections,
which takes little HTTP: one ``sendall`` per request and a small strict parser for the answer.
httpx stays the adapter's HTTP library at its interface, without being loaded on the default
path: ``exchange`` takes and returns bytes and fails with the adapter's own
``TransportError`` types, while ``handle_request`` makes this an httpx transport (requests
``httpx.Request``, answers ``httpx.Response``, failures httpx's exceptions), and any
``httpx.BaseTransport`` can stand in for this one (``through_httpx``).

Why a deadline: httpx's timeouts are per phase and per socket operation, so a server that
trickles one byte every second never trips a one-second read timeout. Here every blocking socket
operation waits at most until the deadline of the call in progress (held in a context variable,
so threads sharing the transport each keep their own), which bounds the call's whole time without
a watchdog thread.
"""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from . import _exceptions
from ._exceptions import (
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    NetworkError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TimeoutException,
    TransportError,
    UnsupportedProtocol,
    WriteError,
    WriteTimeout,
)

if TYPE_CHECKING:
    import ssl
    from types import TracebackType

    import httpx

__all__ = [
    "DeadlineTransport",
    "call_deadline",
    "default_ssl_context",
    "own_transport",
    "post",
    "split_url",
    "through_httpx",
]

_deadline: ContextVar[float | None] = ContextVar("idemgate_call_deadline", default=None)

_RECEIVE_SIZE = 65_536
_MAX_HEAD_BYTES = 65_536  # status line and headers; a chunk-size or trailer line as well
_MAX_IDLE_PER_ORIGIN = 16
# Older idle connections are closed, not reused: a firewall or NAT that has forgotten one may
# drop its packets without a word, and a request sent on it would wait out the call's timeout.
_IDLE_EXPIRY_S = 30.0
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# What httpx leaves unescaped in a URL path.
_PATH_SAFE = "/:@!$&'()*+,;=%-._~"
_NO_BODY_STATUSES = frozenset({204, 304})
# The grammar of RFC 9112, on a head decoded as Latin-1: a status line, then header lines whose
# values are visible characters, with blanks only between them (around them they are dropped).
_STATUS_LINE = re.compile(r"(HTTP/1\.[01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_FIELD_LINE = re.compile(
    r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*+"
    r"((?:[\x21-\x7e\x80-\xff]++|[ \t]++(?=[\x21-\x7e\x80-\xff]))*+)[ \t]*+\r\n",
    re.MULTILINE,
)
# Bounded, so a hostile Content-Length cannot become a huge int (a ValueError past 4,300 digits).
_LENGTH = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

_Origin = tuple[bytes, bytes, int]
# What a failed socket operation becomes, by phase: (on timeout, on any other error).
_Phase = tuple[type[TimeoutException], type[NetworkError]]
_CONNECT: _Phase = (ConnectTimeout, ConnectError)
_WRITE: _Phase = (WriteTimeout, WriteError)
_READ: _Phase = (ReadTimeout, ReadError)


class call_deadline:  # named as a function: it is used like one, as contextlib.suppress is
    """Socket waits inside this block end by ``deadline`` (a ``time.monotonic()`` value).

    A class rather than a generator-based context manager: it wraps every gateway call.
    """

    __slots__ = ("_token", "_until")

    def __init__(self, deadline: float) -> None:
        self._until = deadline

    def __enter__(self) -> None:
        self._token = _deadline.set(self._until)

    def __exit__(self, *exc_info: object) -> None:
        _deadline.reset(self._token)


def default_ssl_context() -> ssl.SSLContext:
    """The trust httpx would use: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` if set, else certifi's.

    certifi comes with httpx. Built only for HTTPS gateways: plain-HTTP ones never load ``ssl``.
    """
    import ssl

    import certifi

    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def split_url(url: str) -> tuple[_Origin, str, str]:
    """``url``'s origin (scheme, host, port), and its authority and path as httpx writes them.

    As httpx: host in lower case (IDNA if need be), no default port, the path escaped.
    """
    parts = urlsplit(url)
    default_port = _DEFAULT_PORTS.get(parts.scheme.encode())
    if default_port is None or not parts.hostname:
        raise UnsupportedProtocol(f"not an http:// or https:// URL: {url}")
    hostname = parts.hostname
    host = hostname if hostname.isascii() else hostname.encode("idna").decode("ascii")
    port = parts.port or default_port
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    origin = (parts.scheme.encode(), host.encode(), port)
    return origin, authority, quote(parts.path, safe=_PATH_SAFE)


def own_transport(transport: httpx.BaseTransport | DeadlineTransport) -> DeadlineTransport | None:
    """``transport`` if it is the adapter's own, not a subclass that handles requests its way."""
    if (
        isinstance(transport, DeadlineTransport)
        and type(transport).handle_request is DeadlineTransport.handle_request
    ):
        return transport
    return None


def post(
    transport: httpx.BaseTransport | DeadlineTransport,
    url: str,
    *,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeout: float,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST to ``url`` with ``headers`` (``host`` among them): status, headers and body.

    The adapter's own transport gets the request written out here; any other goes through httpx.
    """
    direct = own_transport(transport)
    if direct is None:
        return through_httpx(transport, url, headers=headers, body=body, timeout=timeout)
    origin, _, path = split_url(url)
    query = urlsplit(url).query
    target = f"{path or '/'}?{query}" if query else path or "/"
    fields = [
        b"POST " + target.encode("ascii") + b" HTTP/1.1",
        *[name + b": " + value for name, value in headers],
        b"Content-Length: %d" % len(body),
    ]
    message = _head(fields) + b"\r\n\r\n" + body
    timeouts = {"connect": timeout, "read": timeout, "write": timeout}
    head, content = direct.exchange(origin, message, keep_alive=True, timeouts=timeouts)
    return head.status, head.headers, content


def through_httpx(
    transport: httpx.BaseTransport | DeadlineTransport,
    url: str,
    *,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeout: float,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST through any httpx transport: status, headers (any case) and body.

    The one place httpx's errors become the adapter's (the nearest type by name).
    """
    import httpx

    request = httpx.Request(
        "POST",
        url,
        content=body,
        headers=headers,
        extensions={
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        },
    )
    try:
        response = transport.handle_request(request)
        try:
            content = response.read()
        finally:
            response.close()
    except httpx.HTTPError as exc:
        names = [kind.__name__ for kind in type(exc).__mro__]
        failure = next(
            (getattr(_exceptions, name) for name in names if name in _exceptions.__all__),
            TransportError,
        )
        raise failure(str(exc)) from exc
    return response.status_code, response.headers, content


def _bounded(timeout: float | None, expired: type[TimeoutException]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _Unanswered(Exception):
    """The connection closed before a byte of the response arrived."""


class DeadlineTransport:
    """HTTP/1.1 over keep-alive sockets, every socket wait bounded by the call's deadline.

    Timeouts come from the request's ``timeout`` extension (``connect``, ``read``, ``write``;
    ``pool`` has nothing to bound: a call never waits for a connection). Idle connections are
    kept per origin (at most 16, for 30 s) and reused newest first. HTTPS gateways use
    ``ssl_context``, or ``default_ssl_context()``, built at the first HTTPS connection.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        # Per origin, (expiry, socket) with the most recently used last: taking the freshest
        # connection leaves the oldest to expire.
        self._idle: dict[_Origin, list[tuple[float, socket.socket]]] = {}

    def __enter__(self) -> DeadlineTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """The ``httpx.BaseTransport`` method: this transport under an ``httpx.Client``."""
        import httpx

        url = request.url
        scheme, host = url.raw_scheme, url.raw_host
        try:
            if scheme not in _DEFAULT_PORTS or not host:
                raise UnsupportedProtocol(f"not an http:// or https:// URL: {url}")
            origin = (scheme, host, url.port or _DEFAULT_PORTS[scheme])
            message, keep_alive = _encode(request)
            head, body = self.exchange(
                origin,
                message,
                keep_alive=keep_alive,
                timeouts=request.extensions.get("timeout", {}),
                head_request=request.method == "HEAD",
            )
        except TransportError as exc:
            # Under httpx, httpx's own exception types: each of ours is named after one.
            raise getattr(httpx, type(exc).__name__)(str(exc)) from exc
        # A stream, not content=: httpx would add a Content-Length the server did not send.
        return httpx.Response(
            head.status,
            headers=[
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in head.fields
            ],
            stream=httpx.ByteStream(body),
            request=request,
            extensions={
                "http_version": head.version.encode(),
                "reason_phrase": head.reason.encode("latin-1"),
            },
        )

    def exchange(
        self,
        origin: _Origin,
        message: bytes,
        *,
        keep_alive: bool,
        timeouts: Mapping[str, float | None],
        head_request: bool = False,
    ) -> tuple[_ResponseHead, bytes]:
        """An encoded request sent to ``origin`` (scheme, host, port): the answer's head and body.

        ``handle_request`` without httpx's objects, for callers that encode their own requests.
        """
        pooled = self._take_idle(origin)
        if pooled is not None:
            try:
                return self._exchange(
                    origin, pooled, message, keep_alive, timeouts, head_request=head_request
                )
            except _Unanswered:
                pass  # the server closed the idle connection unread: sending again is safe
        return self._exchange(
            origin, None, message, keep_alive, timeouts, head_request=head_request
        )

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, sock in connections:
                sock.close()

    def _exchange(
        self,
        origin: _Origin,
        sock: socket.socket | None,
        message: bytes,
        keep_alive: bool,
        timeouts: Mapping[str, float | None],
        *,
        head_request: bool,
    ) -> tuple[_ResponseHead, bytes]:
        """One request and its response, on ``sock`` or (if None) a new connection.

        Raises ``_Unanswered`` only for a pooled ``sock``, and only when no byte came back.
        """
        pooled = sock is not None
        reader: _Reader | None = None
        phase = _CONNECT
        try:
            if sock is None:
                sock = self._connect(origin, timeouts.get("connect"))
            phase = _WRITE
            sock.settimeout(_bounded(timeouts.get("write"), WriteTimeout))
            sock.sendall(message)
            phase = _READ
            reader = _Reader(sock, timeouts.get("read"))
            head, body, reusable = _read_response(reader, head_request=head_request)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            answered = reader is not None and reader.received
            if pooled and not answered and isinstance(exc, _Unanswered | ConnectionError):
                # An end of stream or a reset before any answer: the server closed the idle
                # connection as it was taken, and never read the request.
                raise _Unanswered from exc
            if isinstance(exc, _Unanswered):
                raise RemoteProtocolError(
                    "the server closed the connection without answering"
                ) from exc
            if isinstance(exc, OSError):
                on_timeout, on_error = phase
                failure = on_timeout if isinstance(exc, TimeoutError) else on_error
                raise failure(str(exc)) from exc
            raise
        if reusable and keep_alive:
            self._put_idle(origin, sock)
        else:
            sock.close()
        return head, body

    def _connect(self, origin: _Origin, timeout: float | None) -> socket.socket:
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        # The name lookup cannot be bounded; an IP address or a local resolver keeps it short.
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        failure: OSError = OSError(f"{host} has no address")
        for family, kind, protocol, _, address in addresses:
            sock = socket.socket(family, kind, protocol)
            try:
                # Bounded again for each address, so a dead first one cannot use up the call.
                sock.settimeout(_bounded(timeout, ConnectTimeout))
                sock.connect(address)
                # The request leaves in one segment; Nagle would hold it for the previous ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if scheme == b"https":
                    if self._ssl_context is None:
                        self._ssl_context = default_ssl_context()
                    # The handshake runs under the connect timeout set above.
                    return self._ssl_context.wrap_socket(sock, server_hostname=host)
            except OSError as exc:
                sock.close()
                failure = exc
            except BaseException:
                sock.close()
                raise
            else:
                return sock
        raise failure

    def _take_idle(self, origin: _Origin) -> socket.socket | None:
        now = time.monotonic()
        while True:
            with self._lock:
                connections = self._idle.get(origin)
                if not connections:
                    return None
                expiry, sock = connections.pop()
            # Nothing is owed on an idle connection: if it is readable, the server closed it
            # (or sent something unasked for), and either way it cannot carry a request.
            if expiry > now and not _readable(sock):
                return sock
            sock.close()

    def _put_idle(self, origin: _Origin, sock: socket.socket) -> None:
        with self._lock:
            connections = self._idle.setdefault(origin, [])
            if len(connections) < _MAX_IDLE_PER_ORIGIN:
                connections.append((time.monotonic() + _IDLE_EXPIRY_S, sock))
                return
        sock.close()


def _readable(sock: socket.socket) -> bool:
    # poll takes any descriptor number, select only those below FD_SETSIZE (1024); Windows has
    # no poll.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _encode(request: httpx.Request) -> tuple[bytes, bool]:
    """The request in one buffer, and whether it lets its connection stay open.

    Request line, headers and body go in one send: one system call, one segment.
    """
    # httpx.Request has already added Host, and Content-Length or Transfer-Encoding.
    fields = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    chunked = False
    connection: list[bytes] = []
    for name, value in request.headers.raw:
        fields.append(name + b": " + value)
        field = name.lower()
        if field == b"transfer-encoding":
            chunked = True
        elif field == b"connection":
            connection.append(value)
    head = _head(fields)
    body = request.read()
    if chunked:
        # A streamed body of unknown length: httpx announced it chunked. It goes as one chunk.
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return head + b"\r\n\r\n" + body, b"close" not in _connection_options(connection)


def _head(fields: list[bytes]) -> bytes:
    """The request line and header fields, joined; a line break inside any of them is refused."""
    head = b"\r\n".join(fields)
    line_breaks = len(fields) - 1
    if head.count(b"\r") != line_breaks or head.count(b"\n") != line_breaks:
        raise LocalProtocolError("a line break inside the request line or a header")
    return head


def _connection_options(values: list[bytes]) -> set[bytes]:
    return {option.strip().lower() for value in values for option in value.split(b",")}


class _Reader:
    """The receiving side of one exchange: buffered receives, each bounded by the deadline."""

    __slots__ = ("_sock", "_timeout", "buffer", "received")

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout
        self.buffer = bytearray()
        self.received = False  # any byte at all: from then on, the request is never resent

    def receive(self) -> bool:
        """Append what arrives next to ``buffer``; False when the server closed the connection."""
        self._sock.settimeout(_bounded(self._timeout, ReadTimeout))
        data = self._sock.recv(_RECEIVE_SIZE)
        if not data:
            return False
        self.received = True
        self.buffer += data
        return True

    def until(self, delimiter: bytes) -> bytes:
        """The bytes before ``delimiter`` (consumed too), at most ``_MAX_HEAD_BYTES`` of them."""
        start = 0
        while (end := self.buffer.find(delimiter, start)) < 0 and start <= _MAX_HEAD_BYTES:
            start = max(0, len(self.buffer) - len(delimiter) + 1)
            if not self.receive():
                if not self.received:
                    raise _Unanswered
                raise RemoteProtocolError("the server closed the connection mid-response")
        if not 0 <= end <= _MAX_HEAD_BYTES:
            raise RemoteProtocolError(f"no {delimiter!r} in {_MAX_HEAD_BYTES} bytes")
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(delimiter)]
        return data

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self.receive():
                raise RemoteProtocolError("the server closed the connection mid-body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def to_close(self) -> bytes:
        while self.receive():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = self.until(b"\r\n").partition(b";")[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise RemoteProtocolError(f"malformed chunk size {size_text[:32]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            body += self.exactly(size)
            if self.exactly(2) != b"\r\n":
                raise RemoteProtocolError("a chunk does not end with CRLF")
        while self.until(b"\r\n"):
            pass  # trailer fields: nothing here reads them
        return bytes(body)


class _ResponseHead:
    """A response's status line and header fields, parsed strictly (RFC 9112 sections 4 and 5).

    Decoded as Latin-1, so every byte is one character and obs-text survives as it came.
    """

    __slots__ = (
        "chunked",
        "content_length",
        "fields",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(self, head: bytes) -> None:
        text = head.decode("latin-1")
        status_line, has_fields, block = text.partition("\r\n")
        status = _STATUS_LINE.fullmatch(status_line)
        if status is None:
            raise RemoteProtocolError(f"malformed status line {status_line[:100]!r}")
        self.version, code, self.reason = status.groups("")
        self.status = int(code)
        # Each match is one whole line ending at a line feed: as many matches as line feeds,
        # or some line (a bare CR or LF in it, a bad name or value) did not match.
        self.fields: list[tuple[str, str]] = (
            _FIELD_LINE.findall(block + "\r\n") if has_fields else []
        )
        if has_fields and len(self.fields) != block.count("\n") + 1:
            raise RemoteProtocolError(f"a malformed header line in {block[:100]!r}")
        # By lower-case name, the values of a repeated one joined with ", ", as HTTP allows.
        headers: dict[str, str] = {}
        for name, value in self.fields:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers = headers
        self.content_length = _content_length(headers.get("content-length"))
        encoding = headers.get("transfer-encoding")
        if encoding is not None and encoding.lower() != "chunked":
            raise RemoteProtocolError(f"unsupported Transfer-Encoding {encoding[:32]!r}")
        self.chunked = encoding is not None
        connection = headers.get("connection")
        options = _connection_options([connection.encode("latin-1")]) if connection else set()
        # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it unless told.
        self.keep_alive = b"close" not in options and (
            self.version == "HTTP/1.1" or b"keep-alive" in options
        )


def _content_length(value: str | None) -> int | None:
    """A Content-Length value as a number of bytes."""
    if value is None:
        return None
    length = value
    if "," in value:
        # Two Content-Length lines, joined: a list of one length repeated is that length
        # (RFC 9110 section 8.6).
        lengths = {part.strip(" \t") for part in value.split(",")}
        length = lengths.pop() if len(lengths) == 1 else ""
    if not _LENGTH.fullmatch(length):
        raise RemoteProtocolError(f"invalid Content-Length {value[:32]!r}")
    return int(length)


def _read_response(reader: _Reader, *, head_request: bool) -> tuple[_ResponseHead, bytes, bool]:
    """The final response (interim 1xx ones skipped), and whether its connection can be reused."""
    head = _ResponseHead(reader.until(b"\r\n\r\n"))
    while head.status < 200:
        head = _ResponseHead(reader.until(b"\r\n\r\n"))
    keep_alive = head.keep_alive
    if head_request or head.status in _NO_BODY_STATUSES:
        body = b""
    elif head.chunked:
        if head.content_length is not None:
            # Two framings for one body is how requests get smuggled: trust neither.
            raise RemoteProtocolError("both Content-Length and Transfer-Encoding")
        body = reader.chunked()
    elif head.content_length is not None:
        body = reader.exactly(head.content_length)
    else:
        body = reader.to_close()
        keep_alive = False
    # Bytes after the response were never asked for: the connection is out of step.
    return head, body, keep_alive and not reader.buffer
