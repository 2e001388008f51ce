"""The HTTP layer under a hostile client: malformed requests, huge heads, slow and idle senders.

One gateway with short time limits, spoken to over raw sockets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from idemgate.testing import LOOPBACK, GatewayServer

from .test_bounded_inputs import read_answer

KEEP_ALIVE_S = 1
HEAD_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path: Path = tmp_path_factory.mktemp("limits") / "idemgate.db"
    env = {
        "IDEMGATE_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "IDEMGATE_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "IDEMGATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with GatewayServer(storage=f"sqlite:///{path}", env=env) as server:
        yield server


def assert_closed(sock: socket.socket) -> None:
    # A reset (we sent bytes the gateway never read) is closed all the same.
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b"", "the connection stayed open"


def exchange(
    gateway: GatewayServer, request: bytes
) -> tuple[int, dict[str, str], dict[str, object]]:
    """Send ``request`` whole (as far as the gateway reads it) and parse the problem answer."""
    with socket.create_connection((LOOPBACK, gateway.port), timeout=30) as sock:
        with contextlib.suppress(OSError):  # refused and closed before everything was sent
            sock.sendall(request)
        status, headers, body = read_answer(sock)
        assert_closed(sock)
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["request_id"] == headers["x-request-id"]
    return status, headers, problem


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            "GET /v1/records/ns/caf\u00e9 HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
            400,
            "INVALID_REQUEST",
        ),
        (
            b"POST /v1/records/ns/k/claim HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "INVALID_REQUEST",
        ),
        (
            b"POST /v1/records/ns/k/claim HTTP/1.1\r\nHost: gw\r\nContent-Length: -5\r\n\r\n",
            400,
            "INVALID_REQUEST",
        ),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "URI_TOO_LONG"),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-H%d: v\r\n" % index for index in range(200))
            + b"\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"v" * (1 << 20) + b"\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
    ],
    ids=[
        "non-ascii-path",
        "length-and-chunked",
        "negative-length",
        "100kb-url",
        "200-headers",
        "1mb-header",
    ],
)
def test_malformed_and_oversized_requests_get_problem_answers(
    strict_gateway: GatewayServer, request_bytes: bytes, status: int, code: str
) -> None:
    answered, _, problem = exchange(strict_gateway, request_bytes)
    assert (answered, problem["code"]) == (status, code)


def test_sixteen_megabytes_of_headers_are_cut_off(strict_gateway: GatewayServer) -> None:
    with socket.create_connection((LOOPBACK, strict_gateway.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sent = 0
        try:
            while sent < 16 << 20:
                sock.sendall(b"X-Filler-%08d: %s\r\n" % (sent, b"v" * 1000))
                sent += 1024
        except OSError:
            pass
        status, _, _ = read_answer(sock)
    assert status == 431
    assert sent < 16 << 20


def trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time, a fifth of a second apart, until stopped or refused."""
    for byte in data:
        if stop.wait(0.2):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


@pytest.mark.parametrize(
    ("opening", "trickled", "what"),
    [
        (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"s" * 1000, "request head"),
        (
            b"POST /v1/records/ns/slow/claim HTTP/1.1\r\nHost: gw\r\nContent-Length: 500\r\n\r\n",
            b" " * 500,
            "request body",
        ),
    ],
    ids=["trickled-head", "trickled-body"],
)
def test_slow_and_idle_senders_are_answered_408_and_closed(
    strict_gateway: GatewayServer, opening: bytes, trickled: bytes, what: str
) -> None:
    stop = threading.Event()
    with socket.create_connection((LOOPBACK, strict_gateway.port), timeout=60) as sock:
        sock.sendall(opening)
        sender = threading.Thread(target=trickle, args=(sock, trickled, stop))
        sender.start()
        try:
            status, headers, body = read_answer(sock)
        finally:
            stop.set()
            sender.join()
        assert_closed(sock)
    problem = json.loads(body)
    assert (status, problem["code"], headers["connection"]) == (408, "REQUEST_TIMEOUT", "close")
    assert what in problem["detail"]


def test_a_request_within_the_limits_is_served(strict_gateway: GatewayServer) -> None:
    request = (
        b"POST /v1/records/ns/fine/claim HTTP/1.1\r\nHost: gw\r\n"
        + b"".join(b"X-H%d: v\r\n" % index for index in range(50))
        + b"Content-Length: 2\r\n\r\n{}"
    )
    with socket.create_connection((LOOPBACK, strict_gateway.port), timeout=30) as sock:
        sock.sendall(request)
        status, _, _ = read_answer(sock)
    assert status == 201


def test_a_connection_that_never_sends_is_closed_after_keep_alive(
    strict_gateway: GatewayServer,
) -> None:
    with socket.create_connection((LOOPBACK, strict_gateway.port), timeout=60) as sock:
        assert sock.recv(1) == b""
