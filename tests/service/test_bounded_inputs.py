"""Hostile input through a real gateway: bodies, JSON, paths and disconnects, on both backends.

Bodies are sent over raw sockets where the test must control how they stream.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from idemgate.testing import GatewayServer

from .test_api import assert_problem

CHUNK = 64 * 1024


def connect(gateway: GatewayServer) -> socket.socket:
    address = urlsplit(gateway.url)
    return socket.create_connection((address.hostname, address.port), timeout=30)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer from ``sock``: status, lower-cased headers and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the connection closed before an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


def chunked_upload(
    gateway: GatewayServer, path: str, total_bytes: int
) -> tuple[int, int, dict[str, str], bytes]:
    """POST ``total_bytes`` of body in chunks, stopping as soon as an answer arrives.

    Returns the bytes sent before the answer, and the answer's status, headers and body.
    """
    sock = connect(gateway)
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock.sendall(head.encode())
    payload = b'{"lease_token":"t","result":"' + b"x" * total_bytes
    chunk = f"{CHUNK:x}\r\n".encode()
    sent = 0
    try:
        while sent < total_bytes:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk + payload[sent : sent + CHUNK] + b"\r\n")
            sent += CHUNK
        else:
            sock.sendall(b"0\r\n\r\n")
    except OSError:  # the gateway closed the connection while we were still sending
        pass
    try:
        status, headers, body = read_answer(sock)
    finally:
        sock.close()
    return sent, status, headers, body


def test_a_chunked_body_past_the_limit_is_413_at_once_and_the_connection_closed(
    gateway: GatewayServer, record_path: str
) -> None:
    sent, status, headers, body = chunked_upload(gateway, f"{record_path}/complete", 64 << 20)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert json.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
    # The answer came while the body was streaming, long before its 64 MB end (what was sent
    # beyond the limit sits in the sockets' buffers, which loopback lets grow to a few MB).
    assert sent < 32 << 20


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


UPLOADS = 50
UPLOAD_BYTES = 50 << 20


def test_memory_stays_bounded_under_fifty_concurrent_50_mb_uploads(
    gateway: GatewayServer, namespace: str
) -> None:
    assert gateway.pid is not None
    baseline = rss_kb(gateway.pid)
    peak = baseline
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(gateway.pid or 0))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = threading.Barrier(UPLOADS)

    def upload(index: int) -> int:
        start.wait()
        path = f"/v1/records/{namespace}/big-{index}/complete"
        sent, status, _, _ = chunked_upload(gateway, path, UPLOAD_BYTES)
        assert sent < UPLOAD_BYTES
        return status

    try:
        with ThreadPoolExecutor(UPLOADS) as pool:
            statuses = list(pool.map(upload, range(UPLOADS)))
    finally:
        done.set()
        watcher.join()
    assert statuses == [413] * UPLOADS
    # 50 uploads read whole would be 2.5 GB; each is cut at its limit (under 1 MB) instead.
    assert peak - baseline < 128 * 1024, f"RSS grew from {baseline} kB to {peak} kB"


def complete_body(result_json: str) -> str:
    return '{"lease_token": "t", "result": ' + result_json + "}"


def test_json_nested_too_deep_is_a_clear_400(client: httpx.Client, record_path: str) -> None:
    response = client.post(
        f"{record_path}/complete", content=complete_body("[" * 5000 + "]" * 5000)
    )
    body = assert_problem(response, 400, "INVALID_REQUEST")
    assert "deeper than 64" in body["detail"]
    assert "recursion" not in body["detail"]


def test_json_nesting_up_to_64_levels_is_accepted(client: httpx.Client, record_path: str) -> None:
    token = client.post(f"{record_path}/claim").json()["lease_token"]
    deepest = "[" * 63 + '"[{\\"]"' + "]" * 63  # brackets inside a string do not count
    body = complete_body(deepest).replace('"t"', json.dumps(token))
    assert client.post(f"{record_path}/complete", content=body).status_code == 200
    too_deep = complete_body("[" * 64 + "]" * 64)
    assert_problem(client.post(f"{record_path}/complete", content=too_deep), 400, "INVALID_REQUEST")


def test_deep_json_with_an_unterminated_string_is_refused_at_once(
    client: httpx.Client, record_path: str
) -> None:
    body = b"[" * 70 + b'"' + b"a" * 100_000
    response = client.post(f"{record_path}/complete", content=body, timeout=30)
    assert_problem(response, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"lease_ms": 1000, "lease_ms": 2000}', "'lease_ms' appears more than once"),
        (b'{"fingerprint": {"a": 1, "a": 2}}', "'a' appears more than once"),
        (b'{"lease_ms": \xff}', "not UTF-8"),
        (b'{"lease_ms": ' + b"9" * 5000 + b"}", "beyond what JSON parsing allows"),
        (b'{"lease_ms": NaN}', "NaN is not JSON"),
        (b'{"lease_ms": ', "line 1 column 14"),
    ],
)
def test_bad_json_is_400_in_the_callers_terms(
    client: httpx.Client, record_path: str, body: bytes, said: str
) -> None:
    answer = assert_problem(
        client.post(f"{record_path}/claim", content=body), 400, "INVALID_REQUEST"
    )
    assert said in answer["detail"]
    for internal in ("codec", "sys.set_int_max_str_digits", "Traceback", "Exceeds the limit"):
        assert internal not in answer["detail"]
    assert client.get(record_path).status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "/claim/"),
        ("POST", "/claim%0A"),
        ("POST", "/claim%0a"),
        ("GET", "/"),
        ("DELETE", "/"),
        ("POST", "/release/"),
    ],
)
def test_trailing_slash_and_newline_paths_are_404_problems_and_change_nothing(
    client: httpx.Client, record_path: str, method: str, suffix: str
) -> None:
    response = client.request(method, record_path + suffix, json={})
    assert_problem(response, 404, "NOT_FOUND")
    assert "location" not in response.headers
    assert client.get(record_path).status_code == 404


@pytest.mark.parametrize("path", ["/healthz%0A", "/readyz/", "/metrics%0a", "/openapi.json/"])
def test_operation_paths_match_whole(client: httpx.Client, path: str) -> None:
    assert_problem(client.get(path), 404, "NOT_FOUND")


def requests_counted(client: httpx.Client, status: str) -> float:
    """How many requests to the complete route the gateway counted with ``status``."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if (
            line.startswith("idemgate_requests_total{")
            and f'status="{status}"' in line
            and 'route="/v1/records/{namespace}/{key}/complete"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_leaving_mid_body_is_counted_499_not_500(
    client: httpx.Client, gateway: GatewayServer, record_path: str
) -> None:
    errors_before = requests_counted(client, "500")
    left_before = requests_counted(client, "499")
    sock = connect(gateway)
    sock.sendall(
        f"POST {record_path}/complete HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n"
        '{"lease_token": "t", '.encode()
    )
    sock.close()
    deadline = time.monotonic() + 30
    while requests_counted(client, "499") == left_before:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert requests_counted(client, "500") == errors_before


def test_whole_numbers_written_with_a_fraction_count_as_integers(
    client: httpx.Client, record_path: str
) -> None:
    claimed = client.post(f"{record_path}/claim", content=b'{"lease_ms": 9683.0, "ttl_s": 60.0}')
    assert claimed.status_code == 201, claimed.text
    body = {"lease_token": claimed.json()["lease_token"], "lease_ms": 9683.5}
    assert_problem(client.post(f"{record_path}/extend", json=body), 400, "INVALID_REQUEST")


def test_405_names_the_allowed_methods(client: httpx.Client) -> None:
    response = client.post("/healthz")
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "GET"
