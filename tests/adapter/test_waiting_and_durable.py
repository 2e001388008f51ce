"""Beyond Powertools: waiting for the holder's result, and durable functions' replays."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from idemgate._routers.records import PROPOSED_TOKEN_PATTERN
from idemgate.testing import GatewayServer
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    idempotent,
    idempotent_function,
)
from lambda_adapter._canonical import sha256_hex
from lambda_adapter._persistence import durable_lease_token
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


def execution_arn(name: str) -> str:
    """A durable execution's ARN, as Lambda makes them: one per execution, unguessable."""
    return (
        "arn:aws:lambda:us-east-1:123456789012:function:test-function:$LATEST"
        f"/durable-execution/{name}/{uuid.uuid4()}"
    )


def durable_context(arn: str, *, remaining_ms: int = 30_000) -> SimpleNamespace:
    """A DurableContext's shape: the Lambda context, and the state that keeps the ARN."""
    return SimpleNamespace(
        lambda_context=FakeLambdaContext(remaining_ms=remaining_ms),
        state=SimpleNamespace(durable_execution_arn=arn, operations={}),
    )


def _record(gateway: GatewayServer, namespace: str, data: Any) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/v1/records/{namespace}/orders:{sha256_hex(data)}")
    assert response.status_code == 200
    record: dict[str, Any] = response.json()
    return record


def test_every_invocation_of_an_execution_proposes_its_own_token_for_a_key() -> None:
    arn = execution_arn("order-0")
    token = durable_lease_token(arn, "orders", "orders:1")
    assert token == durable_lease_token(arn, "orders", "orders:1")
    assert re.fullmatch(PROPOSED_TOKEN_PATTERN, token)
    others = {
        durable_lease_token(execution_arn("order-0"), "orders", "orders:1"),
        durable_lease_token(arn, "payments", "orders:1"),
        durable_lease_token(arn, "orders", "orders:2"),
    }
    assert len(others) == 3
    assert token not in others


def test_a_durable_replay_completes_its_own_executions_claim(
    store: GatewayPersistenceLayer, gateway: GatewayServer, namespace: str
) -> None:
    runs: list[Any] = []

    @idempotent(persistence_store=store, key_prefix="orders")
    def handler(event: Any, context: Any) -> dict[str, int]:
        runs.append(context)
        if len(runs) == 1:
            raise SuspendExecution  # the first invocation stops at a wait step
        return {"charged": 10}

    arn = execution_arn("order-1")
    first = durable_context(arn)
    with pytest.raises(SuspendExecution):
        handler({"id": 1}, first)
    # Another execution of the same event, or a plain invocation, is a duplicate: in progress.
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 1}, durable_context(execution_arn("order-1")))
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 1}, FakeLambdaContext())
    replay = durable_context(arn)
    assert handler({"id": 1}, replay) == {"charged": 10}
    assert runs == [first, replay]  # the handler gets the durable context itself
    record = _record(gateway, namespace, {"id": 1})
    assert (record["status"], record["attempt"]) == ("completed", 1)
    assert record["result"] == {"charged": 10}
    # Later invocations of the execution, other executions and plain duplicates replay it.
    assert handler({"id": 1}, durable_context(arn)) == {"charged": 10}
    assert handler({"id": 1}, durable_context(execution_arn("order-1"))) == {"charged": 10}
    assert handler({"id": 1}, FakeLambdaContext()) == {"charged": 10}
    assert len(runs) == 2


def test_a_durable_replay_that_fails_releases_its_executions_claim(
    store: GatewayPersistenceLayer,
) -> None:
    outcomes = iter([SuspendExecution(), ValueError("card declined"), "charged"])

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    arn = execution_arn("order-2")
    with pytest.raises(SuspendExecution):
        handler({"id": 2}, durable_context(arn))
    with pytest.raises(ValueError, match="card declined"):
        handler({"id": 2}, durable_context(arn))
    # Released: a retry runs at once, without waiting for the first invocation's lease to end.
    assert handler({"id": 2}, FakeLambdaContext()) == "charged"


def test_a_durable_replay_cannot_complete_a_key_taken_over_by_another_caller(
    store: GatewayPersistenceLayer,
    gateway: GatewayServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease of a suspended execution runs out; whoever takes the key over holds it alone."""
    replay_entered, replay_may_finish = threading.Event(), threading.Event()
    taker_entered, taker_may_finish = threading.Event(), threading.Event()
    runs: list[str] = []

    @idempotent(persistence_store=store, key_prefix="orders")
    def handler(event: Any, context: Any) -> str:
        if getattr(context, "state", None) is None:
            runs.append("taker")
            taker_entered.set()
            assert taker_may_finish.wait(timeout=20)
            return "taker's"
        runs.append("durable")
        if len(runs) == 1:
            raise SuspendExecution
        replay_entered.set()
        assert replay_may_finish.wait(timeout=20)
        return "replay's"

    def take_over() -> str:
        """A plain duplicate, retried until the execution's lease has run out."""
        deadline = time.monotonic() + 20
        while True:
            try:
                return handler({"id": 3}, FakeLambdaContext())
            except IdempotencyAlreadyInProgressError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

    arn = execution_arn("order-3")
    with pytest.raises(SuspendExecution):
        handler({"id": 3}, durable_context(arn, remaining_ms=3000))  # a lease of 3 s
    with ThreadPoolExecutor(max_workers=2) as pool:
        # The replay comes within that lease: the claim is its own, with the lease as it is.
        replay = pool.submit(handler, {"id": 3}, durable_context(arn))
        assert replay_entered.wait(timeout=20)
        assert _record(gateway, namespace, {"id": 3})["attempt"] == 1
        taker = pool.submit(take_over)
        assert taker_entered.wait(timeout=20)
        # A later invocation of the execution is refused: the key is no longer the execution's.
        with pytest.raises(IdempotencyAlreadyInProgressError):
            handler({"id": 3}, durable_context(arn))
        replay_may_finish.set()
        assert replay.result(timeout=20) == "replay's"  # the work was done: its caller gets it
        # Fenced: the replay's complete was refused; the key is still the taker's.
        assert _record(gateway, namespace, {"id": 3})["status"] == "in_progress"
        taker_may_finish.set()
        assert taker.result(timeout=20) == "taker's"
    incident = json.loads(next(r.message for r in caplog.records if "complete_failed" in r.message))
    assert "LEASE_LOST" in incident["message"]
    record = _record(gateway, namespace, {"id": 3})
    assert (record["status"], record["attempt"], record["result"]) == ("completed", 2, "taker's")
    assert handler({"id": 3}, durable_context(arn)) == "taker's"
    assert runs == ["durable", "durable", "taker"]


def test_a_durable_first_invocation_that_finishes_is_replayed(
    store: GatewayPersistenceLayer,
) -> None:
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        runs.append(1)
        return "done"

    arn = execution_arn("order-4")
    assert handler({"id": 4}, durable_context(arn)) == "done"
    assert handler({"id": 4}, durable_context(arn)) == "done"
    assert handler({"id": 4}, FakeLambdaContext()) == "done"
    assert runs == [1]


def test_an_idempotent_function_that_suspends_is_in_progress_on_the_replay(
    store: GatewayPersistenceLayer,
) -> None:
    """A limit (see the docs): its calls keep random tokens, as parallel branches may share one."""
    config = IdempotencyConfig()
    runs: list[int] = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store, config=config)
    def charge(order: dict[str, int]) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise SuspendExecution
        return "charged"

    def handler(event: Any, context: Any) -> str:
        config.register_lambda_context(context)
        return charge(order=event)

    arn = execution_arn("order-6")
    with pytest.raises(SuspendExecution):
        handler({"id": 6}, durable_context(arn))
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 6}, durable_context(arn))
    assert runs == [1]


def test_a_registered_durable_context_gives_its_lambda_context(
    store: GatewayPersistenceLayer,
) -> None:
    config = IdempotencyConfig()
    durable = durable_context(execution_arn("order-5"))
    config.register_lambda_context(durable)  # type: ignore[arg-type]
    assert config.lambda_context is durable.lambda_context
    charge = idempotent_function(
        lambda order: {"charged": order["id"]},
        data_keyword_argument="order",
        config=config,
        persistence_store=store,
    )
    assert charge(order={"id": 1}) == charge(order={"id": 1}) == {"charged": 1}
