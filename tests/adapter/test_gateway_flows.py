"""The adapter against a real gateway on loopback, on each storage backend."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from idemgate.testing import GatewayServer
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyValidationError,
    idempotent,
    idempotent_function,
)
from lambda_adapter.testing import FakeLambdaContext

HTTP_API_EVENT = {
    "version": "2.0",
    "routeKey": "POST /orders",
    "requestContext": {"http": {"method": "POST", "path": "/orders"}},
    "body": '{"order_id": "o-1", "amount": 10}',
}


def _counting(result: Any) -> tuple[Callable[[Any, Any], Any], list[Any]]:
    runs: list[Any] = []

    def handler(event: Any, context: Any) -> Any:
        runs.append(event)
        return result

    return handler, runs


def _record(gateway: GatewayServer, namespace: str, key: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/v1/records/{namespace}/{key}")
    assert response.status_code == 200
    record: dict[str, Any] = response.json()
    return record


def test_twenty_concurrent_invocations_run_the_work_once(
    store: GatewayPersistenceLayer,
) -> None:
    lock = threading.Lock()
    runs = 0

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> dict[str, int]:
        nonlocal runs
        with lock:
            runs += 1
        time.sleep(0.2)  # long enough for every other invocation to arrive while this runs
        return {"charged": event["amount"]}

    def invoke(_: int) -> Any:
        try:
            return handler({"order_id": "o-1", "amount": 10}, FakeLambdaContext())
        except IdempotencyAlreadyInProgressError as error:
            return error

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(invoke, range(20)))

    assert runs == 1
    assert outcomes.count({"charged": 10}) >= 1
    in_progress = [o for o in outcomes if isinstance(o, IdempotencyAlreadyInProgressError)]
    assert len(in_progress) + outcomes.count({"charged": 10}) == 20
    assert all(error.retry_after >= 1 for error in in_progress)
    assert handler({"order_id": "o-1", "amount": 10}, FakeLambdaContext()) == {"charged": 10}


def test_waiting_invocations_all_get_the_one_result(store: GatewayPersistenceLayer) -> None:
    runs: list[int] = []
    config = IdempotencyConfig(wait_for_in_progress=True)

    @idempotent(persistence_store=store, config=config)
    def handler(event: Any, context: Any) -> dict[str, int]:
        runs.append(1)
        time.sleep(0.3)
        return {"charged": 10}

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(
            pool.map(lambda _: handler({"order_id": "o-1"}, FakeLambdaContext()), range(20))
        )

    assert len(runs) == 1
    assert outcomes == [{"charged": 10}] * 20


@pytest.mark.parametrize(
    "result",
    [None, {}, 0, "", [], False, {"a": [1, {"b": None}], "é": "ü", "n": 1.5, "big": 2**60}],
    ids=repr,
)
def test_a_replay_returns_the_stored_result_exactly(
    store: GatewayPersistenceLayer, result: Any
) -> None:
    handler, runs = _counting(result)
    handler = idempotent(persistence_store=store)(handler)

    first = handler({"id": 1}, FakeLambdaContext())
    replayed = handler({"id": 1}, FakeLambdaContext())

    assert len(runs) == 1
    assert json.dumps(first) == json.dumps(replayed) == json.dumps(result)
    assert type(replayed) is type(result)


def test_a_failed_run_releases_the_key_so_a_retry_runs_at_once(
    store: GatewayPersistenceLayer,
) -> None:
    attempts: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("downstream failed")
        return "done"

    with pytest.raises(RuntimeError, match="downstream failed"):
        handler({"id": 1}, FakeLambdaContext())
    assert handler({"id": 1}, FakeLambdaContext()) == "done"
    assert handler({"id": 1}, FakeLambdaContext()) == "done"
    assert len(attempts) == 2


def test_a_timed_out_holder_is_taken_over_when_its_lease_expires(
    store: GatewayPersistenceLayer,
    gateway: GatewayServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first invocation outlives its Lambda deadline (its lease); a retry takes over."""
    first_may_finish = threading.Event()
    results = iter(["stale", "fresh"])

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> str:
        result = next(results)
        if result == "stale":
            first_may_finish.wait(timeout=10)
        return result

    with ThreadPoolExecutor(max_workers=1) as pool:
        stale = pool.submit(handler, {"id": 1}, FakeLambdaContext(remaining_ms=600))
        time.sleep(0.1)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            handler({"id": 1}, FakeLambdaContext())
        time.sleep(0.6)  # Lambda would have ended the first invocation by now
        assert handler({"id": 1}, FakeLambdaContext()) == "fresh"
        first_may_finish.set()
        assert stale.result() == "stale"  # the work was done: its caller still gets it

    assert handler({"id": 1}, FakeLambdaContext()) == "fresh"
    # Past its deadline, the stale holder makes no call; the new holder's result stands.
    incident = json.loads(next(r.message for r in caplog.records if "complete_failed" in r.message))
    assert incident["level"] == "ERROR"
    assert "no time was left" in incident["message"]
    record = _record(gateway, namespace, incident["key"])
    assert (record["attempt"], record["result"]) == (2, "fresh")


def test_a_different_payload_under_the_same_key_is_refused(
    store: GatewayPersistenceLayer,
) -> None:
    config = IdempotencyConfig(
        event_key_jmespath="powertools_json(body).order_id",
        payload_validation_jmespath="powertools_json(body).amount",
    )
    handler, runs = _counting({"statusCode": 201})
    handler = idempotent(persistence_store=store, config=config)(handler)
    changed = {**HTTP_API_EVENT, "body": '{"order_id": "o-1", "amount": 99}'}

    assert handler(HTTP_API_EVENT, FakeLambdaContext()) == {"statusCode": 201}
    response = handler(changed, FakeLambdaContext())
    with pytest.raises(IdempotencyValidationError) as caught:
        handler({"body": changed["body"]}, FakeLambdaContext())

    assert len(runs) == 1
    assert response["statusCode"] == 422
    assert response["headers"]["Content-Type"] == "application/problem+json"
    assert json.loads(response["body"])["code"] == "FINGERPRINT_MISMATCH"
    assert caught.value.code == "FINGERPRINT_MISMATCH"
    assert caught.value.gateway_request_id


def test_an_http_event_in_progress_gets_a_409(store: GatewayPersistenceLayer) -> None:
    entered, release = threading.Event(), threading.Event()

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> dict[str, int]:
        entered.set()
        release.wait(timeout=10)
        return {"statusCode": 200}

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(handler, HTTP_API_EVENT, FakeLambdaContext())
        assert entered.wait(timeout=10)
        context = FakeLambdaContext()
        response = handler(HTTP_API_EVENT, context)
        release.set()
        assert first.result() == {"statusCode": 200}

    assert response["statusCode"] == 409
    assert int(response["headers"]["Retry-After"]) >= 1
    body = json.loads(response["body"])
    assert body["code"] == "IN_PROGRESS"
    assert body["request_id"] == context.aws_request_id


def test_an_inner_function_is_idempotent_on_its_data(store: GatewayPersistenceLayer) -> None:
    config = IdempotencyConfig(event_key_jmespath="order_id")
    charges: list[str] = []

    @idempotent_function(data_keyword_argument="order", config=config, persistence_store=store)
    def charge(order: dict[str, Any]) -> dict[str, str]:
        charges.append(order["order_id"])
        return {"charged": order["order_id"]}

    config.register_lambda_context(FakeLambdaContext())
    for order_id in ["o-1", "o-2", "o-1"]:
        assert charge(order={"order_id": order_id, "retry": True}) == {"charged": order_id}
    assert charges == ["o-1", "o-2"]
