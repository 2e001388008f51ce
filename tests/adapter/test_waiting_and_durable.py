"""Beyond Powertools: waiting for the holder's result, and durable functions' replays."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from idemgate.testing import GatewayServer
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    idempotent,
    idempotent_function,
)
from lambda_adapter._transport import DeadlineTransport
from lambda_adapter.testing import FakeLambdaContext


class _SeesWaitingClaims(DeadlineTransport):
    """The adapter's own transport, with an event set as a waiting claim is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting_claim_sent = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if b'"wait_ms"' in request.read():
            self.waiting_claim_sent.set()
        return super().handle_request(request)


def test_a_duplicate_waits_for_the_first_invocations_result(
    gateway: GatewayServer, namespace: str
) -> None:
    transport = _SeesWaitingClaims()
    store = GatewayPersistenceLayer(
        url=gateway.url, namespace=namespace, reserve_ms=100, transport=transport
    )
    config = IdempotencyConfig(wait_for_result_ms=20_000)
    entered, finish = threading.Event(), threading.Event()
    runs: list[int] = []

    @idempotent(persistence_store=store, config=config)
    def handler(event: Any, context: Any) -> dict[str, int]:
        runs.append(1)
        entered.set()
        assert finish.wait(timeout=20)
        return {"charged": 10}

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(handler, {"id": 1}, FakeLambdaContext())
        assert entered.wait(timeout=20)
        transport.waiting_claim_sent.clear()  # the first's own claim carried wait_ms too
        duplicate = pool.submit(handler, {"id": 1}, FakeLambdaContext())
        assert transport.waiting_claim_sent.wait(timeout=20)
        assert not duplicate.done()
        finish.set()
        assert first.result(timeout=20) == {"charged": 10}
        assert duplicate.result(timeout=20) == {"charged": 10}
    assert runs == [1]


def test_the_wait_ends_in_time_for_the_invocation_to_answer(
    gateway: GatewayServer, namespace: str
) -> None:
    store = GatewayPersistenceLayer(
        url=gateway.url, namespace=namespace, reserve_ms=100, max_call_ms=500
    )
    config = IdempotencyConfig(wait_for_result_ms=60_000)
    entered, finish = threading.Event(), threading.Event()

    @idempotent(persistence_store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        entered.set()
        assert finish.wait(timeout=20)
        return "done"

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(handler, {"id": 1}, FakeLambdaContext())
        assert entered.wait(timeout=20)
        context = FakeLambdaContext(remaining_ms=2000)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            handler({"id": 1}, context)
        # The wait stopped one call (500 ms) before the budget's end (reserve: 100 ms).
        assert context.get_remaining_time_in_millis() >= 100
        finish.set()
        assert first.result(timeout=20) == "done"


class SuspendExecution(BaseException):
    """As the durable execution SDK suspends a handler: not an Exception, so nothing catches it."""


def durable_context(*operations: str) -> SimpleNamespace:
    """A DurableContext's shape: the Lambda context, and the checkpoint log replayed."""
    return SimpleNamespace(
        lambda_context=FakeLambdaContext(),
        state=SimpleNamespace(operations=[{"Type": kind} for kind in operations]),
    )


def test_a_durable_replay_is_not_refused_by_its_own_earlier_claim(
    store: GatewayPersistenceLayer,
) -> None:
    runs: list[Any] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        runs.append(context)
        if len(runs) == 1:
            raise SuspendExecution  # the first invocation stops at a wait step
        return "done"

    first = durable_context("EXECUTION")
    with pytest.raises(SuspendExecution):
        handler({"id": 1}, first)
    replay = durable_context("EXECUTION", "WAIT")
    assert handler({"id": 1}, replay) == "done"
    assert runs == [first, replay]  # the handler gets the durable context itself
    # Another execution of the same event is still a duplicate: in progress.
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 1}, durable_context("EXECUTION"))
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 1}, FakeLambdaContext())


def test_a_durable_first_invocation_that_finishes_is_replayed(
    store: GatewayPersistenceLayer,
) -> None:
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        runs.append(1)
        return "done"

    assert handler({"id": 2}, durable_context("EXECUTION")) == "done"
    assert handler({"id": 2}, durable_context("EXECUTION", "STEP")) == "done"
    assert handler({"id": 2}, FakeLambdaContext()) == "done"
    assert runs == [1]


def test_a_registered_durable_context_gives_its_lambda_context(
    store: GatewayPersistenceLayer,
) -> None:
    config = IdempotencyConfig()
    durable = durable_context("EXECUTION")
    config.register_lambda_context(durable)  # type: ignore[arg-type]
    assert config.lambda_context is durable.lambda_context
    charge = idempotent_function(
        lambda order: {"charged": order["id"]},
        data_keyword_argument="order",
        config=config,
        persistence_store=store,
    )
    assert charge(order={"id": 1}) == charge(order={"id": 1}) == {"charged": 1}
