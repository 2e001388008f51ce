"""The deadline: whatever the gateway does, the handler regains control on time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyConfig,
    IdempotencyUnavailableError,
    idempotent,
)
from lambda_adapter.testing import FakeLambdaContext

from .conftest import StallingServer

TRIALS = 3
REMAINING_MS = 2000
RESERVE_MS = 800
# The adapter gives up at its budget, the remaining time less the reserve, which is the
# handler's to answer before Lambda's deadline. Control must come back before half the reserve
# is spent: room for a busy machine to schedule the thread late, none for ignoring the budget,
# whose calls would stall for their whole timeouts.
ON_TIME_S = (REMAINING_MS - RESERVE_MS / 2) / 1000
API_GATEWAY_EVENT = {
    "version": "2.0",
    "requestContext": {"http": {"method": "POST"}},
    "body": '{"order": "o-1"}',
}


def _handler(url: str, **store_options: Any) -> Callable[..., Any]:
    store = GatewayPersistenceLayer(
        url=url, namespace="deadline", reserve_ms=RESERVE_MS, **store_options
    )

    @idempotent(persistence_store=store, config=IdempotencyConfig())
    def handler(event: object, context: object) -> str:
        raise AssertionError("fail_closed must not run the handler")

    return handler


@pytest.fixture(params=["silent", "trickling"])
def stalling_server(request: pytest.FixtureRequest) -> StallingServer:
    server: StallingServer = request.getfixturevalue(f"{request.param}_server")
    return server


def test_a_stalling_gateway_is_abandoned_at_the_budget_every_time(
    stalling_server: StallingServer,
) -> None:
    handler = _handler(stalling_server.url)
    for trial in range(TRIALS):
        context = FakeLambdaContext(remaining_ms=REMAINING_MS)
        started = time.monotonic()
        with pytest.raises(IdempotencyUnavailableError) as caught:
            handler({"order": f"o-{trial}"}, context)
        elapsed = time.monotonic() - started
        assert elapsed <= ON_TIME_S
        assert caught.value.request_id == context.aws_request_id
    assert stalling_server.connections >= 1


def test_retries_and_backoff_stay_within_the_budget(stalling_server: StallingServer) -> None:
    handler = _handler(stalling_server.url, max_call_ms=150, max_attempts=50)
    for _ in range(TRIALS):
        started = time.monotonic()
        with pytest.raises(IdempotencyUnavailableError):
            handler({"order": "o-1"}, FakeLambdaContext(remaining_ms=REMAINING_MS))
        assert time.monotonic() - started <= ON_TIME_S


def test_an_http_event_gets_its_503_on_time(stalling_server: StallingServer) -> None:
    handler = _handler(stalling_server.url)
    started = time.monotonic()
    response = handler(API_GATEWAY_EVENT, FakeLambdaContext(remaining_ms=REMAINING_MS))
    assert time.monotonic() - started <= ON_TIME_S
    assert isinstance(response, dict)
    assert response["statusCode"] == 503


def test_no_call_is_made_without_budget(silent_server: StallingServer) -> None:
    handler = _handler(silent_server.url)
    started = time.monotonic()
    with pytest.raises(IdempotencyUnavailableError, match="no time was left"):
        handler({"order": "o-1"}, FakeLambdaContext(remaining_ms=RESERVE_MS - 1))
    assert time.monotonic() - started < RESERVE_MS / 1000
    assert silent_server.connections == 0
