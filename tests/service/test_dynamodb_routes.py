"""Where the DynamoDB client connects: botocore's endpoint rules, trusted CAs, HTTPS proxies.

TLS is checked against a real loopback HTTPS server whose certificate comes from a test CA
made here (``trustme``); the proxy is a small loopback ``CONNECT`` proxy that counts tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import botocore.session
import pytest
import trustme
import uvloop

from idemgate._exceptions import ConfigurationError, StorageUnavailableError
from idemgate._storage import DynamoDBLocation
from idemgate._storage._dynamodb import DynamoDBClient
from idemgate._storage._endpoints import resolve_route

from .fake_dynamodb import FakeDynamoDB

ENDPOINT_SETTINGS = [
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENDPOINT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")


@pytest.mark.parametrize(
    ("region", "settings", "endpoint"),
    [
        ("us-east-1", {}, "https://dynamodb.us-east-1.amazonaws.com"),
        ("eu-central-1", {}, "https://dynamodb.eu-central-1.amazonaws.com"),
        ("cn-north-1", {}, "https://dynamodb.cn-north-1.amazonaws.com.cn"),
        ("cn-northwest-1", {}, "https://dynamodb.cn-northwest-1.amazonaws.com.cn"),
        (
            "us-east-1",
            {"AWS_USE_FIPS_ENDPOINT": "true"},
            "https://dynamodb-fips.us-east-1.amazonaws.com",
        ),
        # GovCloud's ordinary endpoint is already FIPS-validated: the rules say so, not us.
        (
            "us-gov-west-1",
            {"AWS_USE_FIPS_ENDPOINT": "true"},
            "https://dynamodb.us-gov-west-1.amazonaws.com",
        ),
        (
            "us-east-1",
            {"AWS_USE_DUALSTACK_ENDPOINT": "true"},
            "https://dynamodb.us-east-1.api.aws",
        ),
        (
            "us-east-1",
            {"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:8000"},
            "http://127.0.0.1:8000",
        ),
        ("us-east-1", {"AWS_ENDPOINT_URL": "http://127.0.0.1:8001"}, "http://127.0.0.1:8001"),
    ],
)
def test_endpoint_is_botocores(
    monkeypatch: pytest.MonkeyPatch, region: str, settings: dict[str, str], endpoint: str
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    route = resolve_route(botocore.session.get_session(), region, None)
    assert route.endpoint == endpoint
    assert route.proxy is None


def test_storage_url_endpoint_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")
    route = resolve_route(botocore.session.get_session(), "us-east-1", "http://127.0.0.1:9")
    assert route.endpoint == "http://127.0.0.1:9"


def test_a_region_botocore_rejects_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no DynamoDB endpoint for region 'eu west'"):
        resolve_route(botocore.session.get_session(), "eu west", None)


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def https_fake(authority: trustme.CA) -> Iterator[FakeDynamoDB]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    with FakeDynamoDB(tls=context) as server:
        yield server


class ConnectProxy:
    """An HTTP proxy on loopback that only opens ``CONNECT`` tunnels; keeps each request head."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._tunnel, "127.0.0.1", 0), self._loop
        ).result()
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.heads.append(head)
        method, target, _ = head.split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as server:
        yield server


def get_item(endpoint: str, loop: str = "asyncio") -> dict[str, object]:
    async def call() -> dict[str, object]:
        location = DynamoDBLocation("records", "us-east-1", endpoint)
        client = DynamoDBClient(location, pool_size=1, timeout_ms=5000, max_attempts=1)
        try:
            return await client.call("GetItem", Key={"pk": {"S": "n#k"}})
        finally:
            await client.close()

    if loop == "uvloop":  # the gateway's loop
        return uvloop.run(call())
    return asyncio.run(call())


def test_https_is_verified_against_aws_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, https_fake: FakeDynamoDB, ca_file: Path
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    assert get_item(https_fake.url) == {}


def test_an_untrusted_certificate_is_refused(
    monkeypatch: pytest.MonkeyPatch, https_fake: FakeDynamoDB
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # the system store knows no test CA
    with pytest.raises(StorageUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        get_item(https_fake.url)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_https_goes_through_the_proxy_in_https_proxy(
    monkeypatch: pytest.MonkeyPatch,
    https_fake: FakeDynamoDB,
    ca_file: Path,
    proxy: ConnectProxy,
    loop: str,
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    user_proxy = proxy.url.replace("http://", "http://user:p%40ss@")
    monkeypatch.setenv("HTTPS_PROXY", user_proxy)
    https_fake.clear()
    assert get_item(https_fake.url, loop) == {}
    [head] = proxy.heads
    port = https_fake.url.rpartition(":")[2]
    assert head.startswith(f"CONNECT localhost:{port} HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss
    assert len(https_fake.requests) == 1


def test_no_proxy_bypasses_the_proxy(
    monkeypatch: pytest.MonkeyPatch, https_fake: FakeDynamoDB, ca_file: Path, proxy: ConnectProxy
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert get_item(https_fake.url) == {}
    assert proxy.heads == []
