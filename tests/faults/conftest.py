"""What the fault tests share: bounded bursts of claims, and a gateway's storage settings."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

# Small, so an outage costs the tests little time; several attempts per call, as in production.
STORAGE_TIMEOUT_MS = 400
STORAGE_MAX_ATTEMPTS = 2
FAULT_ENV = {
    "IDEMGATE_STORAGE_TIMEOUT_MS": str(STORAGE_TIMEOUT_MS),
    "IDEMGATE_STORAGE_MAX_ATTEMPTS": str(STORAGE_MAX_ATTEMPTS),
    "IDEMGATE_ACCESS_LOG": "false",
}
# The longest a request may take while storage is down: every attempt's timeout, plus room for
# a busy machine to schedule the gateway. A hung request would take the client's whole timeout.
ANSWER_BOUND_S = STORAGE_MAX_ATTEMPTS * STORAGE_TIMEOUT_MS / 1000 + 3.0
CLIENT_TIMEOUT_S = 30.0
BURST_THREADS = 8
RECOVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    headers: httpx.Headers
    body: dict[str, object]


def claim_burst(url: str, count: int, *, namespace: str = "faults") -> list[Answer]:
    """``count`` claims of fresh keys, ``BURST_THREADS`` at a time, each timed."""
    with ThreadPoolExecutor(BURST_THREADS) as pool:
        return list(pool.map(lambda _: _claim(url, namespace), range(count)))


def _claim(url: str, namespace: str) -> Answer:
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        started = time.monotonic()
        response = client.post(
            f"/v1/records/{namespace}/{uuid.uuid4().hex}/claim", json={"lease_ms": 60_000}
        )
        return Answer(
            response.status_code, time.monotonic() - started, response.headers, response.json()
        )


def assert_unavailable(answer: Answer) -> None:
    """A 503 STORAGE_UNAVAILABLE problem with Retry-After, answered within the bound."""
    assert answer.status == 503, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.body["code"] == "STORAGE_UNAVAILABLE"
    assert answer.body["request_id"]
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.seconds < ANSWER_BOUND_S, answer


def readyz(url: str) -> Answer:
    started = time.monotonic()
    response = httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT_S)
    return Answer(
        response.status_code, time.monotonic() - started, response.headers, response.json()
    )


def wait_until_ready(url: str) -> None:
    """Until /readyz answers 200 by itself; fails the test after ``RECOVERY_TIMEOUT_S``."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while readyz(url).status != 200:
        assert time.monotonic() < deadline, "the gateway did not recover by itself"
        time.sleep(0.1)


def wait_until_serving(url: str, burst: int) -> None:
    """Until each of a burst of claims is served; fails the test after ``RECOVERY_TIMEOUT_S``.

    Storage that has just come back (a restarted DynamoDB Local is a cold JVM) can still answer
    some writes slower than the small storage timeout these tests set, more so on a busy box:
    such a claim is a correct 503, and its caller's retry (a fresh key) is what must succeed.
    """
    wait_until_ready(url)
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S

    def served(_: int) -> None:
        while (answer := _claim(url, "faults")).status != 201:
            assert answer.status == 503, answer
            assert time.monotonic() < deadline, "the gateway did not serve again by itself"
            time.sleep(0.05)

    with ThreadPoolExecutor(BURST_THREADS) as pool:
        list(pool.map(served, range(burst)))
