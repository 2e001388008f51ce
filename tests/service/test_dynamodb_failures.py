"""How the gateway answers when DynamoDB fails, driven by a scripted fake DynamoDB endpoint.

A real gateway subprocess talks to ``FakeDynamoDB``, which plays each failure mode DynamoDB
Local never shows: throttling, 5xx, a reset mid-answer, an answer that never comes, a body
that does not match its ``x-amz-crc32``, an item that is not a record. Each test shows the
gateway's answer, how many attempts it made, and that it answered within the storage timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from idemgate.testing import GatewayServer

from .fake_dynamodb import HANG_UP, RESET, SILENT, Answer, FakeDynamoDB, Reply, dynamodb_error

TIMEOUT_MS = 1000
ATTEMPTS = 3
# What a busy 2-core box may add to the storage timeout before the answer reaches the test.
SLACK_S = 2.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDynamoDB]:
    with FakeDynamoDB() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeDynamoDB) -> Iterator[GatewayServer]:
    env = {
        "IDEMGATE_STORAGE_TIMEOUT_MS": str(TIMEOUT_MS),
        "IDEMGATE_STORAGE_MAX_ATTEMPTS": str(ATTEMPTS),
    }
    storage = f"dynamodb://records?region=us-east-1&endpoint_url={fake.url}"
    with GatewayServer(storage=storage, env=env) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer, fake: FakeDynamoDB) -> Iterator[httpx.Client]:
    fake.clear()
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def timed_get(client: httpx.Client) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = client.get("/v1/records/failures/k")
    return response, time.monotonic() - began


def assert_unavailable(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    problem = response.json()
    assert problem["code"] == "STORAGE_UNAVAILABLE"
    for fragment in fragments:
        assert fragment in problem["detail"]


FAILURES: dict[str, Reply] = {
    "ProvisionedThroughputExceededException": dynamodb_error(
        400, "ProvisionedThroughputExceededException"
    ),
    "ThrottlingException": dynamodb_error(400, "ThrottlingException"),
    "RequestLimitExceeded": dynamodb_error(400, "RequestLimitExceeded"),
    "500": dynamodb_error(500, "InternalServerError"),
    "503": Answer(503, {}),
    "reset-mid-answer": RESET,
    "crc32-mismatch": Answer(200, {"Item": {}}, crc32=12345),
    "no-answer": SILENT,
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_one_failure_is_retried_away(
    client: httpx.Client, fake: FakeDynamoDB, failure: Reply
) -> None:
    fake.script(failure)
    response, elapsed = timed_get(client)
    assert response.status_code == 404, response.text
    assert len(fake.requests) == 2
    assert elapsed < TIMEOUT_MS / 1000 + SLACK_S


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_failure_on_every_attempt_is_a_503(
    client: httpx.Client, fake: FakeDynamoDB, failure: Reply
) -> None:
    fake.script(*[failure] * ATTEMPTS)
    response, elapsed = timed_get(client)
    if failure == SILENT:
        expected = "no answer within"
    else:
        expected = "FAKE-" if isinstance(failure, Answer) else "closed"
    assert_unavailable(response, "GetItem", expected)
    assert 1 <= len(fake.requests) <= ATTEMPTS  # fewer when the backoff would pass the timeout
    assert elapsed < TIMEOUT_MS / 1000 + SLACK_S


def test_throttling_detail_names_the_error_and_request_id(
    client: httpx.Client, fake: FakeDynamoDB
) -> None:
    fake.script(
        *[Answer(400, dynamodb_error(400, "ThrottlingException").body, request_id="R1")] * 3
    )
    response, _ = timed_get(client)
    assert_unavailable(response, "ThrottlingException", "x-amzn-RequestId: R1")


def test_answers_that_never_come_end_at_the_storage_timeout(
    client: httpx.Client, fake: FakeDynamoDB
) -> None:
    """Each attempt waits its share of the budget, so a silent DynamoDB is asked three times."""
    fake.script(*[SILENT] * ATTEMPTS)
    response, elapsed = timed_get(client)
    assert_unavailable(response, "no answer within")
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + SLACK_S
    assert len(fake.requests) == ATTEMPTS


def test_a_refusal_is_not_retried(client: httpx.Client, fake: FakeDynamoDB) -> None:
    fake.script(dynamodb_error(400, "AccessDeniedException"))
    response, _ = timed_get(client)
    assert_unavailable(response, "AccessDeniedException")
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, {"Item": {"pk": {"S": "failures#k"}}}),
        Answer(200, {"Item": {"pk": {"S": "failures#k"}, "status": {"S": "lost"}}}),
        Answer(200, ["not", "an", "object"]),
    ],
    ids=["missing-attributes", "unknown-status", "not-an-object"],
)
def test_an_answer_that_is_not_a_record_is_a_503_never_a_500(
    client: httpx.Client, fake: FakeDynamoDB, answer: Answer
) -> None:
    fake.script(*[answer] * ATTEMPTS)
    response, _ = timed_get(client)
    assert_unavailable(response)


def test_a_claim_survives_throttling(client: httpx.Client, fake: FakeDynamoDB) -> None:
    """Writes are retried too: every write the gateway makes is conditional."""
    throttled = dynamodb_error(400, "ProvisionedThroughputExceededException")
    fake.script(throttled)
    claim = client.post("/v1/records/failures/claimed/claim", json={})
    assert claim.status_code == 201, claim.text
    assert [seen.operation for seen in fake.requests] == ["PutItem", "PutItem"]


def test_a_kept_alive_connection_closed_by_the_far_side_is_replaced_at_once(
    client: httpx.Client, fake: FakeDynamoDB
) -> None:
    """The far side drops the idle connection as the next request arrives on it."""
    assert timed_get(client)[0].status_code == 404
    fake.script(*[HANG_UP] * (ATTEMPTS + 1))  # the kept connection, then fresh ones
    response, elapsed = timed_get(client)
    assert_unavailable(response, "closed")
    kept, *fresh = fake.requests[1:]
    assert kept.connection == fake.requests[0].connection
    assert all(seen.connection != kept.connection for seen in fresh)
    # one resend on a fresh connection that is not an attempt, then ATTEMPTS - 1 more attempts
    assert len(fresh) == ATTEMPTS
    assert elapsed < TIMEOUT_MS / 1000 + SLACK_S
