"""Gateway crashes (SIGKILL under load) and graceful shutdown (SIGTERM) against real processes."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from idemgate.testing import LOOPBACK, DelayingProxy, DynamoDBLocal, GatewayServer

from .conftest import CLIENT_TIMEOUT_S, FAULT_ENV, RECOVERY_TIMEOUT_S

LOAD_THREADS = 6
COMPLETES_BEFORE_CRASH = 25
COMPLETES_AFTER_RESTART = 10
IN_FLIGHT = 5


class _Load:
    """Threads that claim and complete fresh keys until stopped, keeping what answered 200."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.namespace = url, namespace
        self.completed: dict[str, dict[str, str]] = {}
        self.failures = 0
        # What each call met ("claim 201", "complete ReadTimeout", ...): a failed wait says
        # whether the gateway answered (and what) or answered nothing.
        self.outcomes: Counter[str] = Counter()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(LOAD_THREADS)]

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=f"{self.url}/v1/records/{self.namespace}", timeout=5) as http:
            while not self._stop.is_set():
                key = uuid.uuid4().hex
                result = {"done": key}
                call = "claim"
                try:
                    claimed = http.post(f"/{key}/claim", json={"lease_ms": 60_000})
                    self._met(f"claim {claimed.status_code}")
                    if claimed.status_code != 201:
                        continue
                    token = claimed.json()["lease_token"]
                    call = "complete"
                    answer = http.post(
                        f"/{key}/complete", json={"lease_token": token, "result": result}
                    )
                    self._met(f"complete {answer.status_code}")
                except httpx.TransportError as exc:
                    with self._changed:
                        self.failures += 1
                        self.outcomes[f"{call} {type(exc).__name__}"] += 1
                        self._changed.notify_all()
                    continue
                if answer.status_code == 200:
                    with self._changed:
                        self.completed[key] = result
                        self._changed.notify_all()

    def _met(self, outcome: str) -> None:
        with self._changed:
            self.outcomes[outcome] += 1

    def wait_for(self, completes: int = 0, failures: int = 0) -> None:
        with self._changed:
            assert self._changed.wait_for(
                lambda: len(self.completed) >= completes and self.failures >= failures,
                timeout=RECOVERY_TIMEOUT_S,
            ), f"{len(self.completed)} completes, {self.failures} failures; {dict(self.outcomes)}"


@pytest.fixture(params=["sqlite", "dynamodb"])
def crash_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'idemgate.db'}"
    url: str = request.getfixturevalue("dynamodb_storage_url")
    return url


def test_every_complete_answered_200_survives_a_sigkill_under_load(
    crash_storage: str, namespace: str
) -> None:
    workers = 2 if crash_storage.startswith("sqlite") else 1
    # What is tested is durability, not promptness: a loaded box's storage gets time to answer.
    env = {**FAULT_ENV, "IDEMGATE_STORAGE_TIMEOUT_MS": str(int(RECOVERY_TIMEOUT_S * 1000 / 4))}
    # Up is enough: serving the load again after the restart is what shows it is back.
    gateway = GatewayServer(
        storage=crash_storage, workers=workers, env=env, ready_path="/healthz"
    ).start()
    try:
        with _Load(gateway.url, namespace) as load:
            load.wait_for(completes=COMPLETES_BEFORE_CRASH)
            gateway.kill()
            load.wait_for(failures=LOAD_THREADS)
            gateway.start()  # same port, same storage
            load.wait_for(completes=len(load.completed) + COMPLETES_AFTER_RESTART)
        with httpx.Client(base_url=f"{gateway.url}/v1/records/{namespace}") as http:
            for key, result in load.completed.items():
                record = _read_through_busy_storage(http, key)
                assert record.status_code == 200, key
                assert record.json()["status"] == "completed"
                assert record.json()["result"] == result
    finally:
        gateway.stop()
    if crash_storage.startswith("sqlite"):
        path = crash_storage.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as database:
            assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _read_through_busy_storage(http: httpx.Client, key: str) -> httpx.Response:
    """GET a record, asking again while a loaded box's storage answers 503: what is checked
    here is that the record survived, not how fast the storage is."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while (record := http.get(f"/{key}", timeout=CLIENT_TIMEOUT_S)).status_code == 503:
        assert time.monotonic() < deadline, record.text
    return record


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) != 0


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits(
    dynamodb_local: DynamoDBLocal, dynamodb_storage_url: str, namespace: str
) -> None:
    with DelayingProxy(dynamodb_local.port) as proxy:
        storage = proxy.routed(dynamodb_storage_url)
        # Long enough that the held requests wait for the test, not for the storage timeout.
        env = {**FAULT_ENV, "IDEMGATE_STORAGE_TIMEOUT_MS": str(int(RECOVERY_TIMEOUT_S * 1000))}
        gateway = GatewayServer(storage=storage, env=env).start()
        try:
            proxy.hold()

            def claim(index: int) -> httpx.Response:
                url = f"{gateway.url}/v1/records/{namespace}/k-{index}/claim"
                return httpx.post(url, json={}, timeout=CLIENT_TIMEOUT_S)

            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                in_flight = [pool.submit(claim, index) for index in range(IN_FLIGHT)]
                deadline = time.monotonic() + RECOVERY_TIMEOUT_S
                while proxy.held_requests < IN_FLIGHT:
                    assert time.monotonic() < deadline, "the claims never reached storage"
                    time.sleep(0.02)

                gateway.send_signal(signal.SIGTERM)
                while not _refuses_connections(gateway.port):
                    assert time.monotonic() < deadline, "the gateway kept accepting connections"
                    time.sleep(0.02)
                assert all(not request.done() for request in in_flight)

                proxy.release()
                assert [request.result().status_code for request in in_flight] == [201] * 5
            # uvicorn shuts down, then re-raises the signal it caught, as its exit status.
            assert gateway.wait(RECOVERY_TIMEOUT_S) in (0, -signal.SIGTERM)
        finally:
            proxy.release()
            gateway.stop()
