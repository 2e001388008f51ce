"""What the handler does when the gateway cannot answer: the three fallbacks."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from idemgate.testing import GatewayServer, free_port
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyConfig,
    IdempotencyUnavailableError,
    idempotent,
)
from lambda_adapter.testing import FakeLambdaContext

API_GATEWAY_V1_EVENT = {
    "resource": "/orders",
    "httpMethod": "POST",
    "requestContext": {"stage": "prod"},
    "multiValueHeaders": {},
    "body": "{}",
}


@pytest.fixture(scope="module")
def storage_down_gateway() -> Any:
    """A real gateway whose DynamoDB endpoint refuses connections: it answers 503."""
    storage = f"dynamodb://nowhere?region=us-east-1&endpoint_url=http://127.0.0.1:{free_port()}"
    with GatewayServer(storage=storage, ready_path="/healthz") as server:
        yield server


@pytest.fixture(params=["unreachable", "storage_down"])
def down_url(request: pytest.FixtureRequest, unreachable_url: str) -> str:
    if request.param == "unreachable":
        return unreachable_url
    server: GatewayServer = request.getfixturevalue("storage_down_gateway")
    return server.url


def _handler(url: str, on_unavailable: Any) -> tuple[Any, list[Any]]:
    store = GatewayPersistenceLayer(url=url, namespace="orders", reserve_ms=100)
    runs: list[Any] = []

    @idempotent(persistence_store=store, config=IdempotencyConfig(on_unavailable=on_unavailable))
    def handler(event: Any, context: Any) -> str:
        runs.append(event)
        return "ran"

    return handler, runs


def _incidents(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    logged = [json.loads(r.message) for r in caplog.records if r.name == "lambda_adapter"]
    return [incident for incident in logged if incident["incident"] == name]


def test_fail_closed_raises_for_other_events(
    down_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler, runs = _handler(down_url, "fail_closed")
    context = FakeLambdaContext(remaining_ms=3000)
    with pytest.raises(IdempotencyUnavailableError) as caught:
        handler({"id": 1}, context)
    assert runs == []
    assert caught.value.code == "IDEMPOTENCY_UNAVAILABLE"
    assert caught.value.request_id == context.aws_request_id
    [incident] = _incidents(caplog, "gateway_unavailable")
    assert incident["level"] == "ERROR"
    assert incident["url"] == down_url
    assert incident["request_id"] == context.aws_request_id
    assert incident["key"].startswith("test-function.")


def test_fail_closed_answers_http_events_with_a_503(down_url: str) -> None:
    handler, runs = _handler(down_url, "fail_closed")
    context = FakeLambdaContext(remaining_ms=3000)
    response = handler(API_GATEWAY_V1_EVENT, context)
    assert runs == []
    assert response["statusCode"] == 503
    headers = {name: values[0] for name, values in response["multiValueHeaders"].items()}
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Request-Id"] == context.aws_request_id
    assert int(headers["Retry-After"]) >= 1
    body = json.loads(response["body"])
    assert body["code"] == "IDEMPOTENCY_UNAVAILABLE"
    assert body["status"] == 503
    assert body["request_id"] == context.aws_request_id
    assert "gateway_request_id" in body


def test_fail_open_runs_unprotected_and_warns(
    down_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler, runs = _handler(down_url, "fail_open")
    assert handler({"id": 1}, FakeLambdaContext(remaining_ms=3000)) == "ran"
    assert handler({"id": 1}, FakeLambdaContext(remaining_ms=3000)) == "ran"
    assert len(runs) == 2
    incidents = _incidents(caplog, "gateway_unavailable")
    assert [incident["level"] for incident in incidents] == ["WARNING", "WARNING"]


def test_a_callable_fallback_supplies_the_result(down_url: str) -> None:
    seen: list[Any] = []

    def queue_for_later(event: Any, context: Any, error: IdempotencyUnavailableError) -> str:
        seen.append((event, context, error))
        return "queued"

    handler, runs = _handler(down_url, queue_for_later)
    context = FakeLambdaContext(remaining_ms=3000)
    assert handler({"id": 1}, context) == "queued"
    assert runs == []
    [(event, given_context, error)] = seen
    assert (event, given_context) == ({"id": 1}, context)
    assert isinstance(error, IdempotencyUnavailableError)


def test_a_storage_outage_is_retried_before_falling_back(
    storage_down_gateway: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lambda_adapter")
    handler, _ = _handler(storage_down_gateway.url, "fail_closed")
    with pytest.raises(IdempotencyUnavailableError) as caught:
        handler({"id": 1}, FakeLambdaContext(remaining_ms=10_000))
    failed_calls = _incidents(caplog, "gateway_call_failed")
    assert [incident["attempt"] for incident in failed_calls] == [1, 2, 3]
    assert "STORAGE_UNAVAILABLE" in failed_calls[0]["message"]
    assert caught.value.gateway_request_id == failed_calls[-1]["gateway_request_id"]
