"""DynamoDB writes whose answers are lost, through real proxies between gateway and storage.

The first proxy forwards every request but swallows the answer to the next ``PutItem`` when
told to: the write is applied, the gateway times out waiting and retries it, and the retry
meets the gateway's own item. The second (``idemgate.testing.DelayingProxy``) holds requests
until the whole claim has answered 503, then lets them land: only a client that resends its own
lease token finds that claim again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Self

import httpx
import orjson

from idemgate._settings import Settings
from idemgate._storage import Record, open_storage
from idemgate.testing import LOOPBACK, DelayingProxy, DynamoDBLocal, GatewayServer, _Started
from lambda_adapter import GatewayPersistenceLayer, idempotent
from lambda_adapter.testing import FakeLambdaContext

_TARGET = re.compile(rb"x-amz-target:\s*DynamoDB_\d+\.(\w+)", re.IGNORECASE)


class AnswerDroppingProxy(_Started):
    """A TCP proxy to ``upstream_port`` that can swallow the answer to one chosen operation."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.operations: Counter[str] = Counter()
        self.dropped = 0
        self._drop: str | None = None
        self._skip = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []

    def drop_answer(self, operation: str, *, skip: int = 0) -> None:
        """Swallow the answer to the ``operation`` request after the next ``skip`` of them."""
        with self._lock:
            self._drop, self._skip = operation, skip

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            self._sockets += [client, upstream]
            swallow = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, swallow)).start()
            threading.Thread(target=self._answers, args=(upstream, client, swallow)).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, swallow: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                for match in _TARGET.finditer(data):
                    operation = match.group(1).decode()
                    with self._lock:
                        self.operations[operation] += 1
                        if operation == self._drop and self._skip:
                            self._skip -= 1
                        elif operation == self._drop:
                            self._drop = None
                            self.dropped += 1
                            swallow.set()  # before the request leaves: its answer is next
                upstream.sendall(data)
        self._close(client, upstream)

    def _answers(
        self, upstream: socket.socket, client: socket.socket, swallow: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not swallow.is_set():
                    client.sendall(data)
        self._close(client, upstream)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._listener.close()
        self._close(*self._sockets)


def stored(storage_url: str, namespace: str, key: str) -> Record | None:
    async def read() -> Record | None:
        storage = open_storage(Settings(storage=storage_url))
        try:
            return await storage.get(namespace, key)
        finally:
            await storage.close()

    return asyncio.run(read())


def test_claims_whose_put_answer_was_lost_are_201_with_the_stored_token(
    dynamodb_local: DynamoDBLocal, dynamodb_storage_url: str, namespace: str
) -> None:
    with AnswerDroppingProxy(dynamodb_local.port) as proxy:
        through_proxy = dynamodb_storage_url.replace(
            dynamodb_local.endpoint_url, f"http://{LOOPBACK}:{proxy.port}"
        )
        env = {"IDEMGATE_STORAGE_TIMEOUT_MS": "1000", "IDEMGATE_STORAGE_MAX_ATTEMPTS": "3"}
        with (
            GatewayServer(storage=through_proxy, env=env) as gateway,
            httpx.Client(base_url=gateway.url, timeout=30) as client,
        ):
            # A fresh key: the create's answer is lost, its retry meets the claim's own item.
            proxy.drop_answer("PutItem")
            fresh = client.post(f"/v1/records/{namespace}/fresh/claim", json={})
            assert proxy.dropped == 1
            assert fresh.status_code == 201, fresh.text
            token = fresh.json()["lease_token"]
            record = stored(dynamodb_storage_url, namespace, "fresh")
            assert record is not None
            assert record.lease_token == token
            done = client.post(
                f"/v1/records/{namespace}/fresh/complete", json={"lease_token": token, "result": 1}
            )
            assert done.status_code == 200

            # A take-over: the claim's create finds the expired lease, the take-over's answer
            # is lost, its retry fails on the claim's own item, and the read after it finds it.
            held = client.post(f"/v1/records/{namespace}/taken/claim", json={"lease_ms": 200})
            time.sleep(max(0.0, held.json()["lease_expires_at"] / 1000 - time.time()) + 0.05)
            before = proxy.operations["PutItem"]
            proxy.drop_answer("PutItem", skip=1)
            taken = client.post(f"/v1/records/{namespace}/taken/claim", json={})
            assert proxy.dropped == 2
            assert proxy.operations["PutItem"] - before == 4
            assert taken.status_code == 201, taken.text
            assert taken.json()["attempt"] == 2
            record = stored(dynamodb_storage_url, namespace, "taken")
            assert record is not None
            assert record.lease_token == taken.json()["lease_token"]


@contextlib.contextmanager
def _behind_a_proxy(
    dynamodb_local: DynamoDBLocal, storage_url: str
) -> Iterator[tuple[DelayingProxy, GatewayServer]]:
    """A gateway whose DynamoDB calls pass a proxy the test can hold, with a short timeout."""
    env = {"IDEMGATE_STORAGE_TIMEOUT_MS": "300", "IDEMGATE_STORAGE_MAX_ATTEMPTS": "2"}
    with (
        DelayingProxy(dynamodb_local.port) as proxy,
        GatewayServer(storage=proxy.routed(storage_url), env=env) as gateway,
    ):
        yield proxy, gateway


def test_a_claim_answered_503_then_applied_is_found_again_by_its_own_token(
    dynamodb_local: DynamoDBLocal, dynamodb_storage_url: str, namespace: str
) -> None:
    with (
        _behind_a_proxy(dynamodb_local, dynamodb_storage_url) as (proxy, gateway),
        httpx.Client(base_url=gateway.url, timeout=30) as client,
    ):
        own, other = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        proxy.hold()
        # Storage stalls past the timeout: both claims answer 503, their writes wait unsent.
        for key, token in (("resent", own), ("fresh", other)):
            paused = client.post(
                f"/v1/records/{namespace}/{key}/claim", json={"lease_token": token}
            )
            assert paused.status_code == 503, paused.text
            assert paused.json()["code"] == "STORAGE_UNAVAILABLE"
        proxy.release()
        deadline = time.monotonic() + 30
        while (resent := stored(dynamodb_storage_url, namespace, "resent")) is None or stored(
            dynamodb_storage_url, namespace, "fresh"
        ) is None:
            assert time.monotonic() < deadline, "the held writes never landed"
            time.sleep(0.05)
        # The writes landed after all: each key is held by the token its 503 claim sent.
        assert resent.lease_token == own

        # The client's retry resends its token: the claim is its own, run the work.
        retried = client.post(f"/v1/records/{namespace}/resent/claim", json={"lease_token": own})
        assert retried.status_code == 201, retried.text
        assert retried.json()["lease_token"] == own
        assert retried.json()["lease_expires_at"] == resent.lease_expires_at
        done = client.post(
            f"/v1/records/{namespace}/resent/complete", json={"lease_token": own, "result": 1}
        )
        assert done.status_code == 200, done.text

        # A retry with a new token (what every client did before) finds a holder nobody knows.
        stranded = client.post(
            f"/v1/records/{namespace}/fresh/claim", json={"lease_token": secrets.token_urlsafe(18)}
        )
        assert stranded.status_code == 409, stranded.text
        assert stranded.json()["code"] == "IN_PROGRESS"


class LandingAfter503(httpx.HTTPTransport):
    """The adapter's transport, which lets the held storage write land before it hands the
    adapter a claim's 503: the moment the adapter retries, its first try's write is stored."""

    def __init__(self, proxy: DelayingProxy, storage_url: str, namespace: str) -> None:
        super().__init__()
        self.proxy, self.storage_url, self.namespace = proxy, storage_url, namespace
        self.claims: list[tuple[int, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        key, action = request.url.path.split("/")[-2:]
        if action == "claim":
            self.claims.append(
                (response.status_code, orjson.loads(request.content).get("lease_token"))
            )
            if response.status_code == 503:
                self.proxy.release()
                deadline = time.monotonic() + 30
                while stored(self.storage_url, self.namespace, key) is None:
                    assert time.monotonic() < deadline, "the held write never landed"
                    time.sleep(0.05)
        return response


def test_the_adapter_retrying_a_claim_answered_503_then_applied_runs_the_work_once(
    dynamodb_local: DynamoDBLocal, dynamodb_storage_url: str, namespace: str
) -> None:
    with _behind_a_proxy(dynamodb_local, dynamodb_storage_url) as (proxy, gateway):
        transport = LandingAfter503(proxy, dynamodb_storage_url, namespace)
        store = GatewayPersistenceLayer(
            url=gateway.url, namespace=namespace, transport=transport, max_call_ms=10_000
        )
        runs: list[object] = []

        @idempotent(persistence_store=store)
        def charge(event: dict[str, object], context: object) -> dict[str, object]:
            runs.append(event)
            return {"charged": event["order"]}

        proxy.hold()
        assert charge({"order": 7}, FakeLambdaContext()) == {"charged": 7}
        # One claim, two tries with one token: the 503 whose write landed, then its own 201.
        assert [status for status, _ in transport.claims] == [503, 201]
        assert len({token for _, token in transport.claims}) == 1
        assert runs == [{"order": 7}]
        # The work's result is stored: a duplicate delivery replays it.
        assert charge({"order": 7}, FakeLambdaContext()) == {"charged": 7}
        assert len(runs) == 1
