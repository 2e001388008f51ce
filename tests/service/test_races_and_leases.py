"""Concurrency, lease expiry and durability, with real processes on both backends."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from idemgate.testing import GatewayServer

CONCURRENT_CLAIMS = 50


def claim_all_at_once(urls: list[str], path: str) -> Counter[int]:
    """``CONCURRENT_CLAIMS`` claims of one key, released together, spread over ``urls``.

    A client per claim, so the claims share no connection pool: one pool shared by all the
    threads once failed a read on its own side ("Bad file descriptor") under a full run's load.
    """
    start = threading.Barrier(CONCURRENT_CLAIMS)
    clients = [
        httpx.Client(base_url=urls[index % len(urls)], timeout=30)
        for index in range(CONCURRENT_CLAIMS)
    ]

    def one(index: int) -> int:
        client = clients[index]
        start.wait()
        return client.post(f"{path}/claim", json={"lease_ms": 60_000}).status_code

    with ThreadPoolExecutor(CONCURRENT_CLAIMS) as pool:
        statuses = Counter(pool.map(one, range(CONCURRENT_CLAIMS)))
    for client in clients:
        client.close()
    return statuses


def test_fifty_concurrent_claims_give_exactly_one_201(
    gateway: GatewayServer, namespace: str
) -> None:
    statuses = claim_all_at_once([gateway.url], f"/v1/records/{namespace}/hot")
    assert statuses == {201: 1, 409: CONCURRENT_CLAIMS - 1}


def test_two_gateways_sharing_dynamodb_give_exactly_one_201(
    dynamodb_storage_url: str, namespace: str
) -> None:
    with (
        GatewayServer(storage=dynamodb_storage_url) as first,
        GatewayServer(storage=dynamodb_storage_url) as second,
    ):
        for round_ in range(3):
            path = f"/v1/records/{namespace}/hot-{round_}"
            statuses = claim_all_at_once([first.url, second.url], path)
            assert statuses == {201: 1, 409: CONCURRENT_CLAIMS - 1}


def test_two_workers_sharing_one_sqlite_file_give_exactly_one_201(
    sqlite_storage_url: str, namespace: str
) -> None:
    with GatewayServer(storage=sqlite_storage_url, workers=2) as gateway:
        statuses = claim_all_at_once([gateway.url], f"/v1/records/{namespace}/hot")
    assert statuses == {201: 1, 409: CONCURRENT_CLAIMS - 1}


def test_an_expired_lease_is_taken_over_and_fences_the_stale_holder(
    gateway: GatewayServer, namespace: str
) -> None:
    path = f"/v1/records/{namespace}/slow-job"
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        stale = client.post(f"{path}/claim", json={"lease_ms": 300}).json()
        assert client.post(f"{path}/claim").status_code == 409
        time.sleep(0.45)

        takeover = client.post(f"{path}/claim", json={"lease_ms": 60_000})
        assert takeover.status_code == 201
        fresh = takeover.json()
        assert fresh["attempt"] == 2
        assert fresh["lease_token"] != stale["lease_token"]

        stale_complete = client.post(
            f"{path}/complete", json={"lease_token": stale["lease_token"], "result": "stale"}
        )
        assert stale_complete.status_code == 409
        assert stale_complete.json()["code"] == "LEASE_LOST"
        stale_extend = client.post(
            f"{path}/extend", json={"lease_token": stale["lease_token"], "lease_ms": 1000}
        )
        assert stale_extend.json()["code"] == "LEASE_LOST"

        done = client.post(
            f"{path}/complete", json={"lease_token": fresh["lease_token"], "result": "fresh"}
        )
        assert done.json()["attempt"] == 2
        replay = client.post(f"{path}/claim").json()
        assert (replay["result"], replay["attempt"]) == ("fresh", 2)


def test_a_holder_whose_lease_expired_unclaimed_may_still_complete(
    gateway: GatewayServer, namespace: str
) -> None:
    path = f"/v1/records/{namespace}/late"
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        token = client.post(f"{path}/claim", json={"lease_ms": 100}).json()["lease_token"]
        time.sleep(0.2)
        done = client.post(f"{path}/complete", json={"lease_token": token, "result": [1]})
        assert done.status_code == 200
        assert client.post(f"{path}/claim").json()["result"] == [1]


def test_completed_records_survive_a_gateway_restart(storage_url: str, namespace: str) -> None:
    path = f"/v1/records/{namespace}/durable"
    with GatewayServer(storage=storage_url) as gateway:
        token = httpx.post(f"{gateway.url}{path}/claim").json()["lease_token"]
        body = {"lease_token": token, "result": {"invoice": 42}}
        assert httpx.post(f"{gateway.url}{path}/complete", json=body).status_code == 200
    with GatewayServer(storage=storage_url) as restarted:
        replay = httpx.post(f"{restarted.url}{path}/claim")
    assert replay.status_code == 200
    assert replay.json()["result"] == {"invoice": 42}
