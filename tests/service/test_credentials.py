"""Credentials from a container-credentials endpoint that answers slowly and rotates keys.

The gateway runs as a real subprocess whose only credentials source is
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (botocore accepts loopback hosts there), pointed at
``CredentialsEndpoint``; its storage is ``FakeDynamoDB``, which records the access key each
call was signed with (DynamoDB Local would accept any and show none).
"""

from __future__ import annotations

import datetime
import http.server
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from idemgate.testing import GatewayServer

from .fake_dynamodb import FakeDynamoDB, Seen, dynamodb_error

# Generous for a busy 2-core box; a stalled event loop would take the endpoint's whole hold
# plus botocore's 2 s fetch timeout.
QUICK_S = 1.0
HOLD_S = 30.0
LATER = datetime.timedelta(minutes=14)


class CredentialsEndpoint:
    """Serves new keys on every request; every request after the first waits for ``release``.

    The first keys enter botocore's 15-minute advisory refresh window two seconds after they
    are served; later ones expire in 14 minutes, inside it, so the gateway wants a refresh
    whenever it looks.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.refresh_arrived = threading.Event()
        self.served: list[str] = []
        self._lock = threading.Lock()
        self._count = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with endpoint._lock:
                    endpoint._count += 1
                    number = endpoint._count
                if number > 1:
                    endpoint.refresh_arrived.set()
                    endpoint.release.wait(HOLD_S)
                lifetime = datetime.timedelta(minutes=15, seconds=2) if number == 1 else LATER
                expires = datetime.datetime.now(datetime.UTC) + lifetime
                key = f"ASIAROTATED{number:04d}"
                body = json.dumps(
                    {
                        "AccessKeyId": key,
                        "SecretAccessKey": f"secret-{number}",
                        "Token": f"token-{number}",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                # Counted before it is sent: the gateway may use the key before this thread
                # runs again after the write.
                with endpoint._lock:
                    endpoint.served.append(key)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # botocore gave up waiting: never served
                    with endpoint._lock:
                        endpoint.served.remove(key)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/credentials"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CredentialsEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


def access_key(seen: Seen) -> str:
    return seen.headers["authorization"].split("Credential=")[1].split("/")[0]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[CredentialsEndpoint]:
    with CredentialsEndpoint() as server:
        yield server


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDynamoDB]:
    with FakeDynamoDB() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(endpoint: CredentialsEndpoint, fake: FakeDynamoDB) -> Iterator[GatewayServer]:
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url,
    }
    storage = f"dynamodb://records?region=us-east-1&endpoint_url={fake.url}"
    with GatewayServer(storage=storage, env=env) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def test_requests_keep_answering_while_a_refresh_hangs(
    client: httpx.Client, endpoint: CredentialsEndpoint, fake: FakeDynamoDB
) -> None:
    first = endpoint.served[0]
    deadline = time.monotonic() + 30
    while not endpoint.refresh_arrived.is_set():  # a request now and then lets the gateway look
        assert time.monotonic() < deadline, "the gateway never asked for fresh credentials"
        assert client.get("/v1/records/creds/absent").status_code == 404
        endpoint.refresh_arrived.wait(0.1)
    fake.clear()
    slowest = 0.0
    for n in range(10):
        for method, path, expected in [
            ("GET", "/healthz", 200),
            ("GET", f"/v1/records/creds/k-{n}", 404),
            ("POST", f"/v1/records/creds/k-{n}/claim", 201),
        ]:
            began = time.monotonic()
            response = client.request(method, path, json={} if method == "POST" else None)
            slowest = max(slowest, time.monotonic() - began)
            assert response.status_code == expected, response.text
    assert endpoint.served == [first], "no refresh may have completed during the batch"
    assert slowest < QUICK_S
    assert {access_key(seen) for seen in fake.requests} == {first}

    endpoint.release.set()
    deadline = time.monotonic() + 30
    while access_key(fake.requests[-1]) == first:
        assert time.monotonic() < deadline, "the refreshed credentials were never used"
        client.get("/v1/records/creds/absent")
    assert access_key(fake.requests[-1]) in endpoint.served[1:]


@pytest.mark.parametrize("error", ["ExpiredTokenException", "UnrecognizedClientException"])
def test_refused_credentials_are_refreshed_and_the_call_retried_once(
    client: httpx.Client, endpoint: CredentialsEndpoint, fake: FakeDynamoDB, error: str
) -> None:
    endpoint.release.set()
    fake.clear()
    fake.script(dynamodb_error(400, error))
    assert client.get("/v1/records/creds/absent").status_code == 404
    refused, retried = fake.wait_for_requests(2)
    assert access_key(refused) != access_key(retried)
    assert access_key(retried) in endpoint.served

    fake.clear()
    fake.script(dynamodb_error(400, error), dynamodb_error(400, error))
    response = client.get("/v1/records/creds/absent")
    assert response.status_code == 503
    assert response.json()["code"] == "STORAGE_UNAVAILABLE"
    assert error in response.json()["detail"]
    assert len(fake.requests) == 2
