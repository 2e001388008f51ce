"""Listing a namespace's records and expiring a lease, on a real gateway over each backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from idemgate._app import create_app
from idemgate._routers.records import RecordsLane
from idemgate._settings import Settings


def claim(client: httpx.Client, namespace: str, key: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/records/{namespace}/{key}/claim", json=body)


def complete(client: httpx.Client, namespace: str, key: str, token: str) -> httpx.Response:
    return client.post(
        f"/v1/records/{namespace}/{key}/complete", json={"lease_token": token, "result": key}
    )


def fill(client: httpx.Client, namespace: str) -> None:
    """Three completed records and two in progress, claimed with growing leases."""
    for index in range(5):
        answer = claim(client, namespace, f"k{index}", lease_ms=60_000 + index * 1000)
        assert answer.status_code == 201
        if index < 3:
            assert complete(client, namespace, f"k{index}", answer.json()["lease_token"]).is_success


def listing(client: httpx.Client, namespace: str, **params: Any) -> dict[str, Any]:
    answer = client.get(f"/v1/records/{namespace}", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_list_filters_by_status_and_never_shows_lease_tokens(
    client: httpx.Client, namespace: str
) -> None:
    fill(client, namespace)
    running = listing(client, namespace, status="in_progress")
    assert [item["key"] for item in running["items"]] == ["k4", "k3"]
    assert running["cursor"] is None
    done = listing(client, namespace, status="completed")
    assert [item["key"] for item in done["items"]] == ["k2", "k1", "k0"]
    assert done["items"][0] == client.get(f"/v1/records/{namespace}/k2").json()
    everything = listing(client, namespace)
    assert len(everything["items"]) == 5
    assert all("lease_token" not in item for item in everything["items"])


def test_list_pages_with_a_cursor_newest_lease_first(client: httpx.Client, namespace: str) -> None:
    fill(client, namespace)
    keys, cursor = [], None
    for _ in range(5):
        page = listing(client, namespace, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        keys += [item["key"] for item in page["items"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert keys == ["k4", "k3", "k2", "k1", "k0"]
    assert listing(client, "t-nothing-here") == {"items": [], "cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "stuck"},
        {"limit": 0},
        {"limit": 101},
        {"cursor": "not-a-cursor"},
        {"cursor": "WzEsMl0"},  # [1,2]: valid base64 JSON, not a position
        {"cursor": "x" * 600},
    ],
    ids=["status", "limit-0", "limit-101", "cursor-garbage", "cursor-shape", "cursor-long"],
)
def test_list_refuses_bad_parameters_with_a_problem(
    client: httpx.Client, namespace: str, params: dict[str, Any]
) -> None:
    answer = client.get(f"/v1/records/{namespace}", params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "INVALID_REQUEST"
    assert answer.json()["request_id"]


def test_list_refuses_a_bad_namespace(client: httpx.Client) -> None:
    answer = client.get("/v1/records/-bad")
    assert answer.status_code == 400
    assert answer.json()["code"] == "INVALID_REQUEST"


def test_expire_lets_the_next_claim_take_over_and_fences_the_old_holder(
    client: httpx.Client, namespace: str
) -> None:
    stale = claim(client, namespace, "stuck", lease_ms=600_000).json()["lease_token"]
    assert claim(client, namespace, "stuck").status_code == 409
    expired = client.post(f"/v1/records/{namespace}/stuck/expire")
    assert expired.status_code == 200
    assert expired.json()["status"] == "in_progress"
    assert "lease_token" not in expired.json()
    taken = claim(client, namespace, "stuck")
    assert taken.status_code == 201
    assert taken.json()["attempt"] == 2
    lost = complete(client, namespace, "stuck", stale)
    assert lost.status_code == 409
    assert lost.json()["code"] == "LEASE_LOST"


def test_expire_keeps_a_completed_result_and_404s_when_absent(
    client: httpx.Client, namespace: str
) -> None:
    token = claim(client, namespace, "done").json()["lease_token"]
    complete(client, namespace, "done", token)
    before = client.get(f"/v1/records/{namespace}/done").json()
    assert client.post(f"/v1/records/{namespace}/done/expire").json() == before
    replay = claim(client, namespace, "done")
    assert replay.status_code == 200
    assert replay.json()["result"] == "done"
    absent = client.post(f"/v1/records/{namespace}/absent/expire")
    assert absent.status_code == 404
    assert absent.json()["code"] == "NOT_FOUND"


def test_the_lane_serves_expire_and_leaves_the_listing_to_fastapi() -> None:
    app = create_app(Settings(storage="sqlite:///unused.db"))
    lane = RecordsLane(app)

    def matched(method: str, path: str) -> str | None:
        found = lane._match({"type": "http", "method": method, "path": path})
        return None if found is None else found[0].path

    assert matched("POST", "/v1/records/ns/k/expire") == "/v1/records/{namespace}/{key}/expire"
    assert matched("GET", "/v1/records/ns") is None
    assert matched("GET", "/v1/records/ns/k") == "/v1/records/{namespace}/{key}"
