"""The HTTP API v1, status by status and code by code, through a real gateway per backend."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_MEMBERS
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def claim(client: httpx.Client, path: str, **body: Any) -> httpx.Response:
    return client.post(f"{path}/claim", json=body)


def test_claim_of_a_new_key_is_201_with_a_fencing_token(
    client: httpx.Client, record_path: str
) -> None:
    response = claim(client, record_path, lease_ms=5000)
    assert response.status_code == 201
    body = response.json()
    assert body.keys() == {"outcome", "lease_token", "attempt", "lease_expires_at"}
    assert (body["outcome"], body["attempt"]) == ("claimed", 1)
    assert len(body["lease_token"]) >= 20


def test_claim_accepts_an_empty_body(client: httpx.Client, record_path: str) -> None:
    assert client.post(f"{record_path}/claim").status_code == 201


def test_claim_while_held_is_409_in_progress_with_retry_after(
    client: httpx.Client, record_path: str
) -> None:
    first = claim(client, record_path, lease_ms=30_000).json()
    body = assert_problem(claim(client, record_path), 409, "IN_PROGRESS")
    assert body["lease_expires_at"] == first["lease_expires_at"]
    retry_after = int(claim(client, record_path).headers["retry-after"])
    assert 1 <= retry_after <= 30


def test_retry_after_is_at_least_one_second(client: httpx.Client, record_path: str) -> None:
    claim(client, record_path, lease_ms=50)
    response = claim(client, record_path)
    if response.status_code == 409:
        assert response.headers["retry-after"] == "1"
    else:
        assert response.json()["attempt"] == 2


def test_a_claim_resent_with_its_own_token_is_201_with_the_same_lease(
    client: httpx.Client, record_path: str
) -> None:
    token = secrets.token_urlsafe(18)
    first = claim(client, record_path, lease_token=token, lease_ms=30_000, fingerprint="sha256:a")
    assert first.status_code == 201, first.text
    assert first.json()["lease_token"] == token
    # Its answer was lost, say: the same claim again finds its own lease, unchanged.
    again = claim(client, record_path, lease_token=token, lease_ms=5_000, fingerprint="sha256:a")
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    # Anyone else's claim, with a token of its own or none, still finds the key held.
    another = claim(client, record_path, lease_token=secrets.token_urlsafe(18))
    assert_problem(another, 409, "IN_PROGRESS")
    assert_problem(claim(client, record_path), 409, "IN_PROGRESS")
    # The same token with another payload is not the same claim.
    other_payload = claim(client, record_path, lease_token=token, fingerprint="sha256:b")
    assert_problem(other_payload, 422, "FINGERPRINT_MISMATCH")


def test_an_ended_lease_under_the_same_token_is_taken_over_afresh(
    client: httpx.Client, record_path: str
) -> None:
    token = secrets.token_urlsafe(18)
    assert claim(client, record_path, lease_token=token, lease_ms=30_000).status_code == 201
    ended = client.post(f"{record_path}/expire").json()["lease_expires_at"]
    again = claim(client, record_path, lease_token=token, lease_ms=30_000)
    assert again.status_code == 201, again.text
    assert (again.json()["lease_token"], again.json()["attempt"]) == (token, 2)
    assert again.json()["lease_expires_at"] > ended


def test_a_completed_record_replays_to_its_own_token_never_claimed(
    client: httpx.Client, record_path: str
) -> None:
    token = secrets.token_urlsafe(18)
    assert claim(client, record_path, lease_token=token).status_code == 201
    done = client.post(f"{record_path}/complete", json={"lease_token": token, "result": [7]})
    assert done.status_code == 200
    replay = claim(client, record_path, lease_token=token)
    assert replay.status_code == 200, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["result"] == [7]
    assert token not in replay.text


@pytest.mark.parametrize(
    "lease_token",
    ["a" * 21, "a" * 129, "a" * 21 + "+", "a" * 21 + "=", "a" * 22 + "\n", "", 12345, ["a" * 24]],
)
def test_a_bad_proposed_token_is_400_and_claims_nothing(
    client: httpx.Client, record_path: str, lease_token: object
) -> None:
    response = claim(client, record_path, lease_token=lease_token)
    body = assert_problem(response, 400, "INVALID_REQUEST")
    assert body["errors"][0]["location"] == "body.lease_token"
    assert_problem(client.get(record_path), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "result",
    [None, {}, 0, "", [], False, {"order": {"id": "o-1", "lines": [1, 2.5, None, "x", True]}}],
    ids=["null", "empty-object", "zero", "empty-string", "empty-list", "false", "nested"],
)
def test_completed_results_are_replayed_exactly(
    client: httpx.Client, record_path: str, result: Any
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    completed = client.post(
        f"{record_path}/complete", json={"lease_token": token, "result": result}
    )
    assert completed.status_code == 200
    assert completed.json()["outcome"] == "completed"

    replay = claim(client, record_path)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == {
        "outcome": "completed",
        "result": result,
        "attempt": 1,
        "completed_at": completed.json()["completed_at"],
        "expires_at": completed.json()["expires_at"],
    }
    assert completed.json()["expires_at"] == client.get(record_path).json()["expires_at"]
    assert client.get(record_path).json()["result"] == result


def test_replay_keeps_numbers_and_text_byte_exact(client: httpx.Client, record_path: str) -> None:
    token = claim(client, record_path).json()["lease_token"]
    result = '{"big":123456789012345678901234567890,"f":0.1,"e":1.5e-300,"s":"\u00e9\U0001f600"}'
    raw = f'{{"lease_token":"{token}","result":{result}}}'
    client.post(f"{record_path}/complete", content=raw.encode())
    replay = claim(client, record_path)
    assert (
        '"result":{"big":123456789012345678901234567890,"f":0.1,"e":1.5e-300,"s":"\u00e9\U0001f600"}'
        in replay.text
    )

    token = claim(client, record_path + "-lone").json()["lease_token"]
    lone = f'{{"lease_token":"{token}","result":"\\ud800"}}'
    assert client.post(f"{record_path}-lone/complete", content=lone.encode()).status_code == 200
    assert '"result":"\\ud800"' in claim(client, record_path + "-lone").text


def test_complete_again_with_the_same_token_keeps_the_first_result(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    first = client.post(f"{record_path}/complete", json={"lease_token": token, "result": 1})
    again = client.post(f"{record_path}/complete", json={"lease_token": token, "result": 2})
    assert again.status_code == 200
    assert again.json() == first.json()
    assert claim(client, record_path).json()["result"] == 1


def test_complete_with_a_foreign_token_is_409_lease_lost_and_changes_nothing(
    client: httpx.Client, record_path: str
) -> None:
    claim(client, record_path)
    before = client.get(record_path).json()
    response = client.post(f"{record_path}/complete", json={"lease_token": "forged", "result": 1})
    assert_problem(response, 409, "LEASE_LOST")
    assert client.get(record_path).json() == before


def test_complete_of_an_absent_key_is_409_lease_lost(
    client: httpx.Client, record_path: str
) -> None:
    response = client.post(f"{record_path}/complete", json={"lease_token": "t", "result": 1})
    assert_problem(response, 409, "LEASE_LOST")


def test_complete_ttl_overrides_the_claims(client: httpx.Client, record_path: str) -> None:
    token = claim(client, record_path, ttl_s=86_400).json()["lease_token"]
    done = client.post(
        f"{record_path}/complete", json={"lease_token": token, "result": 1, "ttl_s": 60}
    ).json()
    expires_at = client.get(record_path).json()["expires_at"]
    assert done["completed_at"] + 60_000 <= expires_at <= done["completed_at"] + 61_000


def test_fingerprint_mismatch_is_422_for_in_progress_and_completed_keys(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path, fingerprint="sha256:aa").json()["lease_token"]
    assert_problem(claim(client, record_path, fingerprint="sha256:bb"), 422, "FINGERPRINT_MISMATCH")
    client.post(f"{record_path}/complete", json={"lease_token": token, "result": "ok"})
    assert_problem(claim(client, record_path, fingerprint="sha256:bb"), 422, "FINGERPRINT_MISMATCH")
    assert claim(client, record_path, fingerprint="sha256:aa").status_code == 200


def test_a_missing_fingerprint_on_either_side_never_mismatches(
    client: httpx.Client, namespace: str
) -> None:
    stored_none = f"/v1/records/{namespace}/a"
    token = claim(client, stored_none).json()["lease_token"]
    client.post(f"{stored_none}/complete", json={"lease_token": token, "result": 1})
    assert claim(client, stored_none, fingerprint="sha256:aa").status_code == 200

    sent_none = f"/v1/records/{namespace}/b"
    token = claim(client, sent_none, fingerprint="sha256:aa").json()["lease_token"]
    client.post(f"{sent_none}/complete", json={"lease_token": token, "result": 1})
    assert claim(client, sent_none, fingerprint=None).status_code == 200


def test_release_lets_a_retry_claim_at_once_and_repeats_harmlessly(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    release = client.post(f"{record_path}/release", json={"lease_token": token})
    assert (release.status_code, release.content) == (204, b"")
    assert client.post(f"{record_path}/release", json={"lease_token": token}).status_code == 204
    assert claim(client, record_path).status_code == 201


def test_release_by_a_token_that_holds_nothing_changes_nothing_and_is_204(
    client: httpx.Client, record_path: str
) -> None:
    claim(client, record_path)
    response = client.post(f"{record_path}/release", json={"lease_token": "other"})
    assert response.status_code == 204
    assert_problem(claim(client, record_path), 409, "IN_PROGRESS")


def test_release_is_409_when_the_holder_completed_it(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    client.post(f"{record_path}/complete", json={"lease_token": token, "result": 1})
    response = client.post(f"{record_path}/release", json={"lease_token": token})
    assert_problem(response, 409, "LEASE_LOST")
    assert claim(client, record_path).status_code == 200


def test_extend_moves_the_lease_end(client: httpx.Client, record_path: str) -> None:
    first = claim(client, record_path, lease_ms=1000).json()
    extended = client.post(
        f"{record_path}/extend", json={"lease_token": first["lease_token"], "lease_ms": 600_000}
    )
    assert extended.status_code == 200
    lease_expires_at = extended.json()["lease_expires_at"]
    assert lease_expires_at >= first["lease_expires_at"] + 598_000
    assert client.get(record_path).json()["lease_expires_at"] == lease_expires_at
    in_progress = assert_problem(claim(client, record_path), 409, "IN_PROGRESS")
    assert in_progress["lease_expires_at"] == lease_expires_at


def test_extend_with_a_foreign_token_is_409(client: httpx.Client, record_path: str) -> None:
    claim(client, record_path)
    response = client.post(f"{record_path}/extend", json={"lease_token": "x", "lease_ms": 10})
    assert_problem(response, 409, "LEASE_LOST")


def test_get_shows_the_record_without_its_token(client: httpx.Client, record_path: str) -> None:
    claimed = claim(client, record_path, fingerprint="sha256:aa", lease_ms=9000).json()
    body = client.get(record_path).json()
    assert body == {
        "namespace": record_path.split("/")[3],
        "key": "order-1",
        "status": "in_progress",
        "fingerprint": "sha256:aa",
        "attempt": 1,
        "lease_expires_at": claimed["lease_expires_at"],
        "expires_at": body["expires_at"],
        "completed_at": None,
        "result": None,
    }
    assert body["expires_at"] >= claimed["lease_expires_at"] + 86_400_000
    assert claimed["lease_token"] not in client.get(record_path).text


def test_get_of_an_absent_key_is_404(client: httpx.Client, record_path: str) -> None:
    assert_problem(client.get(record_path), 404, "NOT_FOUND")


def test_delete_forces_a_rerun_and_is_204_when_absent(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    client.post(f"{record_path}/complete", json={"lease_token": token, "result": 1})
    assert client.delete(record_path).status_code == 204
    assert client.delete(record_path).status_code == 204
    assert_problem(client.get(record_path), 404, "NOT_FOUND")
    response = client.post(f"{record_path}/complete", json={"lease_token": token, "result": 2})
    assert_problem(response, 409, "LEASE_LOST")
    assert claim(client, record_path).json()["attempt"] == 1


def test_an_expired_completed_record_is_gone(client: httpx.Client, record_path: str) -> None:
    token = claim(client, record_path).json()["lease_token"]
    client.post(f"{record_path}/complete", json={"lease_token": token, "result": 1, "ttl_s": 1})
    import time

    time.sleep(2.1)
    assert_problem(client.get(record_path), 404, "NOT_FOUND")
    assert claim(client, record_path).json()["attempt"] == 1


@pytest.mark.parametrize(
    ("path_suffix", "body"),
    [
        ("/claim", b"{not json"),
        ("/claim", b"[]"),
        ("/claim", b'{"lease_ms": "5"}'),
        ("/claim", b'{"lease_ms": 0}'),
        ("/claim", b'{"lease_ms": 900001}'),
        ("/claim", b'{"lease_ms": 1.5}'),
        ("/claim", b'{"lease_ms": true}'),
        ("/claim", b'{"ttl_s": 2592001}'),
        ("/claim", b'{"fingerprint": 7}'),
        ("/claim", b'{"fingerprint": "' + b"x" * 129 + b'"}'),
        ("/claim", b'{"unknown": 1}'),
        ("/claim", b'{"fingerprint": "\\ud800"}'),
        ("/claim", b"\xff\xfe"),
        ("/complete", b"{}"),
        ("/complete", b'{"lease_token": "t"}'),
        ("/complete", b'{"result": 1}'),
        ("/complete", b'{"lease_token": 5, "result": 1}'),
        ("/complete", b'{"lease_token": "t", "result": 1, "ttl_s": 0}'),
        ("/complete", b'{"lease_token": "t", "result": NaN}'),
        ("/complete", b'{"lease_token": "t", "result": 1e400}'),
        ("/complete", b'{"lease_token": "t", "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("/release", b"{}"),
        ("/release", b'{"lease_token": ""}'),
        ("/extend", b'{"lease_token": "t"}'),
        ("/extend", b'{"lease_token": "t", "lease_ms": -1}'),
    ],
)
def test_bad_bodies_are_400_invalid_request_and_change_nothing(
    client: httpx.Client, record_path: str, path_suffix: str, body: bytes
) -> None:
    claimed = claim(client, record_path, fingerprint="sha256:aa").json()
    before = client.get(record_path).json()
    response = client.post(f"{record_path}{path_suffix}", content=body)
    assert_problem(response, 400, "INVALID_REQUEST")
    assert client.get(record_path).json() == before
    assert claimed["lease_token"] not in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/records/-starts-with-dash/k",
        "/v1/records/has%20space/k",
        "/v1/records/has%23hash/k",
        "/v1/records/" + "n" * 129 + "/k",
        "/v1/records/ns/has%23hash",
        "/v1/records/ns/" + "k" * 256,
        "/v1/records/ns/%C3%A9",
        "/v1/records/ns/ends-in-a-newline%0A",
    ],
)
def test_bad_names_are_400_invalid_request(client: httpx.Client, path: str) -> None:
    assert_problem(client.post(f"{path}/claim", json={}), 400, "INVALID_REQUEST")
    assert_problem(client.get(path), 400, "INVALID_REQUEST")


def test_a_slash_in_a_key_names_no_endpoint(client: httpx.Client) -> None:
    assert_problem(client.post("/v1/records/ns/has%2Fslash/claim", json={}), 404, "NOT_FOUND")


def test_names_use_the_whole_allowed_alphabet(client: httpx.Client) -> None:
    path = "/v1/records/A1._-z/" + "aZ09._~:@=+-"
    assert claim(client, path).status_code == 201
    assert client.get(path).json()["key"] == "aZ09._~:@=+-"
    client.delete(path)


def test_oversized_results_are_413_and_change_nothing(
    client: httpx.Client, record_path: str
) -> None:
    token = claim(client, record_path).json()["lease_token"]
    before = client.get(record_path).json()
    too_big = "x" * 262_144
    response = client.post(
        f"{record_path}/complete", json={"lease_token": token, "result": too_big}
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert client.get(record_path).json() == before
    just_fits = "x" * (262_144 - 2)
    response = client.post(
        f"{record_path}/complete", json={"lease_token": token, "result": just_fits}
    )
    assert response.status_code == 200
    assert claim(client, record_path).json()["result"] == just_fits


def test_bodies_far_too_large_are_refused_before_reading(
    client: httpx.Client, record_path: str
) -> None:
    response = client.post(f"{record_path}/complete", content=b" " * 1_000_000)
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def test_unknown_routes_and_methods_are_problems(client: httpx.Client, record_path: str) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "NOT_FOUND")
    assert_problem(client.put(record_path), 405, "METHOD_NOT_ALLOWED")
    assert_problem(client.get(f"{record_path}/claim"), 405, "METHOD_NOT_ALLOWED")
    assert_problem(client.post(f"{record_path}/claim/again", json={}), 404, "NOT_FOUND")
    assert_problem(client.post(f"{record_path}/renew", json={}), 404, "NOT_FOUND")
    assert_problem(client.post("/v1/records//k/claim", json={}), 404, "NOT_FOUND")


def test_a_sane_caller_request_id_is_echoed(client: httpx.Client, record_path: str) -> None:
    response = claim(client, record_path)
    assert len(response.headers["x-request-id"]) == 32
    sent = "lambda-9f1c2d7e/attempt 1"
    response = client.post(f"{record_path}/claim", json={}, headers={"X-Request-Id": sent})
    assert response.headers["x-request-id"] == sent
    assert response.json()["request_id"] == sent


@pytest.mark.parametrize("bad_id", ["x" * 129, "tab\there", "caf\u00e9"])
def test_an_insane_request_id_is_replaced(
    client: httpx.Client, record_path: str, bad_id: str
) -> None:
    response = client.get(record_path, headers={"X-Request-Id": bad_id.encode()})
    assert response.headers["x-request-id"] != bad_id
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_health_readiness_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    openapi = client.get("/openapi.json").json()
    assert "/v1/records/{namespace}/{key}/claim" in openapi["paths"]
    claim = openapi["paths"]["/v1/records/{namespace}/{key}/claim"]["post"]
    body_ref = claim["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = openapi["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert "lease_ms" in body_schema["properties"]
    assert "FINGERPRINT_MISMATCH" in claim["responses"]["422"]["description"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_by_route_and_outcome(
    client: httpx.Client, record_path: str
) -> None:
    claim(client, record_path)
    claim(client, record_path)
    text = client.get("/metrics").text
    route = 'route="/v1/records/{namespace}/{key}/claim"'
    assert any(route in line and 'outcome="claimed"' in line for line in text.splitlines())
    assert any(route in line and 'outcome="IN_PROGRESS"' in line for line in text.splitlines())
    assert "idemgate_request_duration_seconds_bucket" in text
    assert "idemgate_storage_errors_total" in text
