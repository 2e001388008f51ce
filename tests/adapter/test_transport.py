"""The adapter's HTTP/1.1 transport against small scripted servers on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from lambda_adapter import IdempotencyUnavailableError
from lambda_adapter import _exceptions as failures
from lambda_adapter._persistence import Claimed, GatewayPersistenceLayer, Invocation
from lambda_adapter._sigv4 import AwsCredentials
from lambda_adapter._sqs import QueueRef, SqsClient
from lambda_adapter._transport import DeadlineTransport, call_deadline, default_ssl_context

from .conftest import LoopbackServer, StallingServer

SLACK_S = 0.050


def ok(body: bytes = b"{}", *headers: bytes) -> bytes:
    """A 200 answer framed by Content-Length, with extra header lines."""
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class AndClose(bytes):
    """An answer after which the server closes the connection, whatever its headers said."""


class ScriptedServer(LoopbackServer):
    """An HTTP/1.1 server that answers each request with the next scripted answer.

    An answer of ``None`` closes the connection without sending a byte; an ``AndClose`` answer
    closes it after sending. Every connection closed releases ``closed``.
    """

    def __init__(self, *answers: bytes | None) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.closed = threading.Semaphore(0)

    def serve(self, connection: socket.socket) -> None:
        # The client may hang up first (e.g. on an answer it refuses): then this one is done.
        with connection, contextlib.suppress(OSError):
            connection.settimeout(5)
            received = b""
            while (exchange := self._next_answer(connection, received)) is not None:
                answer, received = exchange
                if answer is None:
                    break
                connection.sendall(answer)
                if isinstance(answer, AndClose):
                    break
        self.closed.release()

    def _next_answer(
        self, connection: socket.socket, received: bytes
    ) -> tuple[bytes | None, bytes] | None:
        """Read one request; its answer, and what arrived after it. None when the client left."""
        while b"\r\n\r\n" not in received:
            data = connection.recv(65536)
            if not data:
                return None
            received += data
        head, _, received = received.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields.get(b"content-length", b"0"))
        while len(received) < length:
            received += connection.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + received[:length])
        return self.answers.pop(0), received[length:]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(transport=DeadlineTransport(), timeout=5) as client:
        yield client


def test_a_content_length_answer_and_the_request_as_sent() -> None:
    with (
        ScriptedServer(ok(b'{"a": 1}', b"X-Request-Id: gw-1")) as server,
        DeadlineTransport() as transport,
    ):
        request = httpx.Request(
            "POST", f"{server.url}/v1/records?x=1", content=b'{"k": 2}', headers={"X-Trace": "t"}
        )
        response = transport.handle_request(request)
    assert response.status_code == 200
    assert response.read() == b'{"a": 1}'
    assert response.headers["x-request-id"] == "gw-1"
    assert (response.reason_phrase, response.http_version) == ("OK", "HTTP/1.1")
    (sent,) = server.requests
    head, _, body = sent.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    assert request_line == b"POST /v1/records?x=1 HTTP/1.1"
    assert dict(line.lower().split(b": ", 1) for line in lines) == {
        b"host": server.url.removeprefix("http://").encode(),
        b"x-trace": b"t",
        b"content-length": b"8",
    }
    assert body == b'{"k": 2}'


def test_a_chunked_answer_with_extensions_and_trailers(client: httpx.Client) -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    with ScriptedServer(chunked, ok()) as server:
        response = client.get(server.url)
        assert (response.status_code, response.content) == (201, b"hello world")
        assert client.get(server.url).status_code == 200
    assert server.connections == 1


def test_an_answer_read_to_close_ends_its_connection(client: httpx.Client) -> None:
    with ScriptedServer(AndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), ok()) as server:
        assert client.get(server.url).content == b"until the end"
        assert client.get(server.url).status_code == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [ok(b"{}", b"Connection: close"), b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_closes_is_not_reused(client: httpx.Client, answer: bytes) -> None:
    with ScriptedServer(answer, ok()) as server:  # the server keeps it open all the same
        assert client.get(server.url).status_code == 200
        assert client.get(server.url).status_code == 200
    assert server.connections == 2


def test_a_request_that_says_close_is_not_reused(client: httpx.Client) -> None:
    with ScriptedServer(ok(), ok()) as server:  # the server keeps it open all the same
        client.get(server.url, headers={"Connection": "close"})
        client.get(server.url)
    assert server.connections == 2


def test_keep_alive_reuses_one_connection_and_frames_bodiless_answers(
    client: httpx.Client,
) -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"  # HEAD: no body follows
    with ScriptedServer(ok(b"[1]"), no_content, head_answer, ok(b"[2]")) as server:
        assert client.get(server.url).content == b"[1]"
        assert client.get(server.url).status_code == 204
        assert client.head(server.url).content == b""
        assert client.get(server.url).content == b"[2]"
    assert server.connections == 1


def test_interim_answers_are_skipped(client: httpx.Client) -> None:
    with ScriptedServer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")) as server:
        response = client.post(server.url, content=b"x")
    assert (response.status_code, response.content) == (200, b"done")


def test_an_idle_connection_the_server_closed_is_replaced(client: httpx.Client) -> None:
    with ScriptedServer(AndClose(ok()), ok(b"[]")) as server:
        assert client.get(server.url).status_code == 200
        assert server.closed.acquire(timeout=5)
        assert client.get(server.url).content == b"[]"
    assert server.connections == 2


def test_a_reused_connection_closed_unanswered_is_retried_on_a_fresh_one(
    client: httpx.Client,
) -> None:
    with ScriptedServer(ok(), None, ok(b"[]")) as server:
        assert client.get(server.url).status_code == 200
        assert client.get(server.url).content == b"[]"
    assert server.connections == 2
    assert len(server.requests) == 3


def test_a_fresh_connection_closed_unanswered_is_not_retried(client: httpx.Client) -> None:
    with ScriptedServer(None, ok()) as server, pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url)
    assert server.connections == 1


def test_a_reused_connection_closed_mid_answer_is_not_retried(client: httpx.Client) -> None:
    with ScriptedServer(ok(), AndClose(b"HTTP/1.1 200 OK\r\nContent-Len"), ok()) as server:
        client.get(server.url)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(server.url)
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=[
        "no-status-code",
        "http-2",
        "no-version",
        "space-in-name",
        "two-lengths",
        "two-framings",
        "bad-chunk-size",
        "head-over-64k",
    ],
)
def test_a_malformed_answer_is_a_remote_protocol_error(client: httpx.Client, answer: bytes) -> None:
    with ScriptedServer(AndClose(answer)) as server, pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url)


def test_a_trickling_server_is_abandoned_at_the_deadline(
    trickling_server: StallingServer,
) -> None:
    timeouts = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    request = httpx.Request("GET", trickling_server.url, extensions={"timeout": timeouts})
    started = time.monotonic()
    with call_deadline(started + 0.3), pytest.raises(httpx.ReadTimeout):
        DeadlineTransport().handle_request(request)
    assert time.monotonic() - started <= 0.3 + SLACK_S


def test_a_silent_server_trips_the_read_timeout(silent_server: StallingServer) -> None:
    with httpx.Client(transport=DeadlineTransport(), timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get(silent_server.url)
    assert time.monotonic() - started <= 0.2 + SLACK_S


def test_threads_sharing_a_transport_keep_their_own_deadlines(
    silent_server: StallingServer,
) -> None:
    transport = DeadlineTransport()
    outcomes: dict[float, tuple[type[BaseException] | None, float]] = {}

    def call(budget: float) -> None:
        started = time.monotonic()
        failure: type[BaseException] | None = None
        try:
            with call_deadline(started + budget):
                transport.handle_request(httpx.Request("GET", silent_server.url))
        except httpx.HTTPError as exc:
            failure = type(exc)
        outcomes[budget] = (failure, time.monotonic() - started)

    threads = [threading.Thread(target=call, args=(budget,)) for budget in (0.1, 0.4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for budget, (failure, elapsed) in outcomes.items():
        assert failure is httpx.ReadTimeout
        assert budget <= elapsed <= budget + SLACK_S
    assert len(outcomes) == 2


def test_no_time_left_means_no_connection(silent_server: StallingServer) -> None:
    with call_deadline(time.monotonic() - 1), pytest.raises(httpx.ConnectTimeout):
        DeadlineTransport().handle_request(httpx.Request("GET", silent_server.url))
    assert silent_server.connections == 0


def test_a_refused_connection_is_a_connect_error(unreachable_url: str) -> None:
    with pytest.raises(httpx.ConnectError):
        DeadlineTransport().handle_request(httpx.Request("GET", unreachable_url))


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        DeadlineTransport().handle_request(httpx.Request("GET", "ftp://127.0.0.1/"))


class _ThroughHttpx(DeadlineTransport):
    """The same transport reached through ``handle_request``, as any custom transport is."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return super().handle_request(request)


@pytest.mark.parametrize("key", ["fn.handler:" + "ab" * 32, "a key/../with escapes", ".."])
def test_the_store_writes_its_requests_as_httpx_would(key: str) -> None:
    """The default transport gets each call encoded by the store: byte for byte httpx's request."""
    body = b'{"lease_token":"t"}'
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with ScriptedServer(answer, answer) as server:
        for transport in (None, _ThroughHttpx()):
            store = GatewayPersistenceLayer(
                url=server.url, namespace="n", token="secret", transport=transport
            )
            invocation = Invocation(None, reserve_ms=0, default_lease_ms=1000)
            claimed = store.claim(
                key, fingerprint=None, lease_ms=1000, ttl_s=60, invocation=invocation,
                lease_token="own",
            )  # fmt: skip
            assert claimed == Claimed("t")
        sent = server.requests
    direct, through_httpx = sent
    assert direct == through_httpx
    assert direct.startswith(b"POST /v1/records/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://Gateway.Internal:80/",
        "https://gw.example:443/prod/",
        "https://gw.example:8443/stage name/",
        "http://[::1]:8080/x",
        "http://bücher.example/",
    ],
)
def test_the_store_reads_its_url_as_httpx_does(url: str) -> None:
    store = GatewayPersistenceLayer(url=url, namespace="n", transport=httpx.MockTransport(ok))
    reference = httpx.URL(url)
    request = httpx.Request("POST", f"{store.url}/v1/records/n/")
    assert store.url == str(reference).rstrip("/")
    assert store._host_line == f"Host: {request.headers['host']}\r\n".encode()
    assert store._records_path == request.url.raw_path
    default_port = 443 if reference.scheme == "https" else 80
    assert store._origin == (
        reference.raw_scheme,
        reference.raw_host,
        reference.port or default_port,
    )


@pytest.mark.parametrize("variable", [None, "SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_https_trusts_what_httpx_trusts(
    variable: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    if variable is not None:
        monkeypatch.setenv(variable, str(bundle if variable == "SSL_CERT_FILE" else tmp_path))
    ours, theirs = default_ssl_context(), httpx.create_ssl_context()
    assert ours.get_ca_certs() == theirs.get_ca_certs()
    assert (ours.verify_mode, ours.check_hostname) == (theirs.verify_mode, theirs.check_hostname)


@pytest.mark.parametrize(
    ("raised", "translated"),
    [
        (httpx.ConnectTimeout, failures.ConnectTimeout),
        (httpx.ReadTimeout, failures.ReadTimeout),
        (httpx.PoolTimeout, failures.TimeoutException),
        (httpx.ConnectError, failures.ConnectError),
        (httpx.RemoteProtocolError, failures.RemoteProtocolError),
        (httpx.ProxyError, failures.TransportError),
    ],
)
def test_a_user_transport_fails_as_the_adapter_transport_does(
    raised: type[httpx.TransportError], translated: type[failures.TransportError]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised("refused", request=request)

    store = GatewayPersistenceLayer(
        url="http://gateway.test",
        namespace="n",
        max_attempts=1,
        transport=httpx.MockTransport(fail),
    )
    invocation = Invocation(None, reserve_ms=0, default_lease_ms=1000)
    with pytest.raises(IdempotencyUnavailableError) as caught:
        store.claim("k", fingerprint=None, lease_ms=1000, ttl_s=60, invocation=invocation)
    cause = caught.value.__cause__
    assert type(cause) is translated
    assert isinstance(cause.__cause__, raised)
    assert str(caught.value).endswith(f"{translated.__name__}: refused")


def test_the_sqs_client_writes_its_requests_as_httpx_would() -> None:
    answer = ok(b'{"MessageId":"m-1"}')
    queue = QueueRef.from_arn("arn:aws:sqs:eu-west-1:123456789012:dead-letters")
    credentials = AwsCredentials(access_key="AKIDEXAMPLE", secret_key="s", session_token="t")
    with ScriptedServer(answer, answer) as server:
        for transport in (None, _ThroughHttpx()):
            client = SqsClient(
                endpoint_url=server.url, credentials=credentials, transport=transport
            )
            message_id = client.send_message(
                queue,
                body="lost",
                attributes={},
                group_id=None,
                deduplication_id="d-1",
                invocation=Invocation(None, reserve_ms=0, default_lease_ms=1000),
            )
            assert message_id == "m-1"
        sent = server.requests
    # Signed a moment apart: the date and the signature may differ, nothing else.
    timed = (b"x-amz-date:", b"authorization:")
    direct, through_httpx = (
        [line for line in request.split(b"\r\n") if not line.lower().startswith(timed)]
        for request in sent
    )
    assert direct == through_httpx
    assert direct[0] == b"POST / HTTP/1.1"
    assert all(request.count(b"authorization: AWS4-HMAC-SHA256") == 1 for request in sent)
