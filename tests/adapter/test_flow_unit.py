"""The flow against scripted gateway answers (httpx.MockTransport): edge cases made exact."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyValidationError,
    idempotent,
    idempotent_function,
)
from lambda_adapter._persistence import Claimed, Invocation, _json_object
from lambda_adapter.testing import FakeLambdaContext

Answer = Callable[[httpx.Request], httpx.Response]

CLAIMED = httpx.Response(201, json={"outcome": "claimed", "lease_token": "t-1", "attempt": 1})
COMPLETED = httpx.Response(200, json={"outcome": "completed", "attempt": 1})
RELEASED = httpx.Response(204)


def replayed(result: Any) -> httpx.Response:
    return httpx.Response(
        200,
        json={"outcome": "completed", "result": result, "attempt": 1},
        headers={"Idempotent-Replayed": "true", "X-Request-Id": "gw-1"},
    )


def problem(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"type": "about:blank", "status": status, "code": code, "detail": code.lower()}
    return httpx.Response(
        status,
        json=body,
        headers={"Content-Type": "application/problem+json", "X-Request-Id": "gw-9", **headers},
    )


class Gateway:
    """Answers each (action) from a script, and records every request made."""

    def __init__(self, **script: list[httpx.Response]) -> None:
        self.script = script
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        action = request.url.path.rsplit("/", 1)[1]
        return self.script[action].pop(0)

    def actions(self) -> list[str]:
        return [request.url.path.rsplit("/", 1)[1] for request in self.requests]

    def body(self, index: int) -> Any:
        return json.loads(self.requests[index].content)

    def store(self, **options: Any) -> GatewayPersistenceLayer:
        return GatewayPersistenceLayer(
            url="http://gateway.test",
            namespace="orders",
            transport=httpx.MockTransport(self),
            **options,
        )


def handler_on(
    gateway: Gateway, result: Any = "ok", config: IdempotencyConfig | None = None, **options: Any
) -> tuple[Callable[..., Any], list[Any]]:
    runs: list[Any] = []

    def handler(event: Any, context: Any) -> Any:
        runs.append(event)
        if isinstance(result, Exception):
            raise result
        return result

    decorated = idempotent(persistence_store=gateway.store(**options), config=config)(handler)
    return decorated, runs


def test_the_claim_carries_key_lease_ttl_and_token() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    handler, _ = handler_on(
        gateway, config=IdempotencyConfig(expires_after_seconds=600), token="s3cret"
    )
    context = FakeLambdaContext(remaining_ms=5000, function_name="orders-fn")

    assert handler({"b": 1, "a": [True]}, context) == "ok"

    digest = hashlib.sha256(b'{"a":[true],"b":1}').hexdigest()
    key = f"orders-fn.{__name__}.handler_on._locals_.handler:{digest}"
    claim = gateway.requests[0]
    assert claim.url == f"http://gateway.test/v1/records/orders/{key}/claim"
    assert claim.headers["authorization"] == "Bearer s3cret"
    body = gateway.body(0)
    assert body["fingerprint"] is None
    assert body["ttl_s"] == 600
    assert 4900 <= body["lease_ms"] <= 5000
    assert gateway.body(1) == {"lease_token": "t-1", "result": "ok"}


def test_the_fingerprint_is_sha256_of_the_validated_payload() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="amount")
    handler, _ = handler_on(gateway, config=config)
    handler({"id": "o-1", "amount": 1.0}, FakeLambdaContext())
    assert gateway.body(0)["fingerprint"] == "sha256:" + hashlib.sha256(b"1").hexdigest()


def test_transient_failures_are_retried_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    bad_gateway = httpx.Response(502, text="<html>bad gateway</html>")
    gateway = Gateway(
        claim=[problem(503, "STORAGE_UNAVAILABLE", **{"Retry-After": "1"}), bad_gateway, CLAIMED],
        complete=[problem(429, "TOO_MANY"), COMPLETED],
    )
    handler, runs = handler_on(gateway)
    assert handler({"id": 1}, FakeLambdaContext()) == "ok"
    assert gateway.actions() == ["claim", "claim", "claim", "complete", "complete"]
    assert len(runs) == 1
    # Full jitter: each pause is drawn from [0, min(1 s, 50 ms * 2**n)].
    assert all(0 <= pause <= limit for pause, limit in zip(sleeps, [0.05, 0.1, 0.05], strict=True))


def test_every_try_of_a_claim_sends_one_token_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    unavailable = problem(503, "STORAGE_UNAVAILABLE", **{"Retry-After": "1"})
    busy = problem(409, "IN_PROGRESS", **{"Retry-After": "1"})
    gateway = Gateway(
        claim=[unavailable, httpx.Response(504), busy, CLAIMED, CLAIMED],
        complete=[COMPLETED, COMPLETED],
    )
    handler, runs = handler_on(gateway, config=IdempotencyConfig(wait_for_in_progress=True))

    assert handler({"id": 1}, FakeLambdaContext()) == "ok"
    assert handler({"id": 2}, FakeLambdaContext()) == "ok"

    assert gateway.actions() == ["claim"] * 4 + ["complete", "claim", "complete"]
    tokens = [gateway.body(index)["lease_token"] for index in (0, 1, 2, 3, 5)]
    # The tries after a 503, a 504 and an IN_PROGRESS all resend the first token; the next
    # invocation makes its own.
    assert len(set(tokens[:4])) == 1
    assert tokens[4] != tokens[0]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22,128}", token) for token in tokens)
    # Work and complete go by the token the gateway answered.
    assert gateway.body(4) == {"lease_token": "t-1", "result": "ok"}
    assert len(runs) == 2


def test_a_refused_request_is_not_retried() -> None:
    gateway = Gateway(claim=[problem(400, "INVALID_REQUEST")])
    handler, runs = handler_on(gateway)
    context = FakeLambdaContext()
    with pytest.raises(IdempotencyError) as caught:
        handler({"id": 1}, context)
    assert (caught.value.code, caught.value.gateway_request_id) == ("INVALID_REQUEST", "gw-9")
    assert caught.value.request_id == context.aws_request_id
    assert runs == []
    assert len(gateway.requests) == 1


def test_in_progress_raises_with_retry_after_for_other_events() -> None:
    gateway = Gateway(claim=[problem(409, "IN_PROGRESS", **{"Retry-After": "7"})])
    handler, runs = handler_on(gateway)
    with pytest.raises(IdempotencyAlreadyInProgressError) as caught:
        handler({"Records": [{"body": "{}"}]}, FakeLambdaContext())
    assert caught.value.retry_after == 7
    assert caught.value.gateway_request_id == "gw-9"
    assert runs == []


@pytest.mark.parametrize(
    ("event", "status_description"),
    [
        ({"requestContext": {"elb": {"targetGroupArn": "arn"}}, "httpMethod": "GET"}, True),
        ({"version": "2.0", "requestContext": {"http": {"method": "GET"}}}, False),
    ],
    ids=["alb", "function-url"],
)
def test_http_events_get_problem_responses(event: dict[str, Any], status_description: bool) -> None:
    gateway = Gateway(claim=[problem(409, "IN_PROGRESS", **{"Retry-After": "3"})])
    handler, _ = handler_on(gateway)
    response = handler(event, FakeLambdaContext())
    assert response["statusCode"] == 409
    assert response["headers"]["Retry-After"] == "3"
    assert ("statusDescription" in response) is status_description
    assert json.loads(response["body"])["gateway_request_id"] == "gw-9"


def test_a_failing_handler_releases_its_claim() -> None:
    gateway = Gateway(claim=[CLAIMED], release=[RELEASED])
    handler, _ = handler_on(gateway, result=ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        handler({"id": 1}, FakeLambdaContext())
    assert gateway.actions() == ["claim", "release"]
    assert gateway.body(1) == {"lease_token": "t-1"}


@pytest.mark.parametrize(
    ("result", "complete", "reason"),
    [
        ({"huge": "x"}, [problem(413, "PAYLOAD_TOO_LARGE"), COMPLETED], "PAYLOAD_TOO_LARGE"),
        ({1, 2}, [COMPLETED], "not JSON serializable"),
        (float("nan"), [COMPLETED], "Out of range float"),
        ("é" * 100, [COMPLETED], "more than 150"),
    ],
    ids=["refused-by-the-gateway", "not-json", "nan", "over-the-limit"],
)
def test_a_result_that_cannot_be_stored_completes_with_a_marker(
    result: Any,
    complete: list[httpx.Response],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway(claim=[CLAIMED], complete=complete)
    handler, _ = handler_on(gateway, result=result, max_result_bytes=150)
    context = FakeLambdaContext()
    assert handler({"id": 1}, context) is result
    marker = gateway.body(len(gateway.requests) - 1)["result"]
    assert list(marker) == ["idemgate:result_not_stored"]
    assert reason in marker["idemgate:result_not_stored"]["reason"]
    [record] = [r for r in caplog.records if r.name == "lambda_adapter"]
    incident = json.loads(record.message)
    assert (incident["incident"], incident["level"]) == ("result_not_stored", "ERROR")
    assert reason in incident["message"]
    assert incident["request_id"] == context.aws_request_id
    assert incident["key"].endswith(hashlib.sha256(b'{"id":1}').hexdigest())


def test_a_result_is_sent_as_utf8_and_measured_in_its_bytes() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    handler, _ = handler_on(gateway, result="é" * 70, max_result_bytes=150)
    handler({"id": 1}, FakeLambdaContext())
    # 142 bytes as UTF-8 JSON (under the limit); 422 had it been sent escaped.
    assert gateway.requests[1].content.endswith(('"result":"' + "é" * 70 + '"}').encode())


def test_a_result_the_gateway_cannot_take_at_all_is_an_incident(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[problem(409, "LEASE_LOST")])
    handler, _ = handler_on(gateway, result={"stale": True})
    assert handler({"id": 1}, FakeLambdaContext()) == {"stale": True}
    assert gateway.actions() == ["claim", "complete"]
    [record] = [r for r in caplog.records if r.name == "lambda_adapter"]
    incident = json.loads(record.message)
    assert (incident["incident"], incident["level"]) == ("complete_failed", "ERROR")
    assert "LEASE_LOST" in incident["message"]


def test_the_local_cache_replays_without_a_call_and_checks_the_fingerprint() -> None:
    gateway = Gateway(claim=[CLAIMED, CLAIMED], complete=[COMPLETED, COMPLETED])
    config = IdempotencyConfig(
        event_key_jmespath="id",
        payload_validation_jmespath="amount",
        use_local_cache=True,
        local_cache_max_items=1,
    )
    handler, runs = handler_on(gateway, result={"n": 1}, config=config)

    first = handler({"id": "a", "amount": 1}, FakeLambdaContext())
    first["n"] = 99  # callers own what they get back
    assert handler({"id": "a", "amount": 1}, FakeLambdaContext()) == {"n": 1}
    with pytest.raises(IdempotencyValidationError):
        handler({"id": "a", "amount": 2}, FakeLambdaContext())
    handler({"id": "b", "amount": 1}, FakeLambdaContext())  # evicts "a": one item only
    gateway.script["claim"].append(replayed({"n": 1}))
    assert handler({"id": "a", "amount": 1}, FakeLambdaContext()) == {"n": 1}

    assert gateway.actions() == ["claim", "complete", "claim", "complete", "claim"]
    assert len(runs) == 2


def test_an_in_progress_answer_is_never_cached() -> None:
    busy = problem(409, "IN_PROGRESS")
    gateway = Gateway(claim=[busy, busy])
    handler, _ = handler_on(gateway, config=IdempotencyConfig(use_local_cache=True))
    for _ in range(2):
        with pytest.raises(IdempotencyAlreadyInProgressError):
            handler({"id": 1}, FakeLambdaContext())
    assert len(gateway.requests) == 2


@pytest.mark.parametrize("event", [{}, {"order": None}, {"order": ""}, {"order": [None]}])
def test_missing_key_data_runs_unprotected_with_a_warning(event: dict[str, Any]) -> None:
    gateway = Gateway()
    handler, runs = handler_on(gateway, config=IdempotencyConfig(event_key_jmespath="order"))
    with pytest.warns(UserWarning, match="No idempotency key value found"):
        assert handler(event, FakeLambdaContext()) == "ok"
    assert runs == [event]
    assert gateway.requests == []


def test_missing_key_data_raises_when_asked() -> None:
    config = IdempotencyConfig(event_key_jmespath="order", raise_on_no_idempotency_key=True)
    handler, runs = handler_on(Gateway(), config=config)
    context = FakeLambdaContext()
    with pytest.raises(IdempotencyKeyError) as caught:
        handler({"other": 1}, context)
    assert (caught.value.code, caught.value.request_id) == (
        "IDEMPOTENCY_KEY_MISSING",
        context.aws_request_id,
    )
    assert runs == []


def test_key_data_that_is_not_json_is_refused() -> None:
    handler, runs = handler_on(Gateway())
    with pytest.raises(IdempotencyKeyError, match="not JSON") as caught:
        handler({"amount": float("inf")}, FakeLambdaContext())
    assert isinstance(caught.value.__cause__, ValueError)
    assert runs == []


def test_powertools_jmespath_functions_select_the_key() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    config = IdempotencyConfig(event_key_jmespath="powertools_json(powertools_base64(body)).id")
    handler, _ = handler_on(gateway, config=config)
    handler({"body": "eyJpZCI6ICJvLTEifQ=="}, FakeLambdaContext())  # {"id": "o-1"}
    assert (
        gateway.requests[0].url.path.split(":")[-1].startswith(hashlib.sha256(b'"o-1"').hexdigest())
    )


def test_emf_lines_count_replays_and_in_progress(capsys: pytest.CaptureFixture[str]) -> None:
    gateway = Gateway(claim=[replayed("r"), problem(409, "IN_PROGRESS")])
    handler, _ = handler_on(gateway, metrics_namespace="Orders")
    context = FakeLambdaContext(function_name="orders-fn")
    assert handler({"id": 1}, context) == "r"
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"id": 1}, context)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] for line in lines] == [
        "Replay",
        "InProgress",
    ]
    assert all(line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Orders" for line in lines)
    assert lines[0]["FunctionName"] == "orders-fn"
    assert lines[0]["Replay"] == 1


@dataclasses.dataclass
class Order:
    order_id: str
    amount: int


def test_idempotent_function_keys_on_a_dataclass_and_leases_by_default() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    config = IdempotencyConfig(event_key_jmespath="order_id", default_lease_ms=12_345)

    @idempotent_function(
        data_keyword_argument="order", config=config, persistence_store=gateway.store()
    )
    def charge(order: Order) -> dict[str, int]:
        return {"charged": order.amount}

    assert charge(order=Order("o-1", 10)) == {"charged": 10}
    assert gateway.body(0)["lease_ms"] == 12_345
    assert (
        gateway.requests[0].url.path.split(":")[-1].startswith(hashlib.sha256(b'"o-1"').hexdigest())
    )
    with pytest.raises(RuntimeError, match="order="):
        charge(Order("o-1", 10))  # type: ignore[call-arg]


def test_idempotent_function_leases_the_registered_invocation_time() -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED])
    config = IdempotencyConfig()
    charge = idempotent_function(
        lambda order: order,
        data_keyword_argument="order",
        config=config,
        persistence_store=gateway.store(),
    )
    config.register_lambda_context(FakeLambdaContext(remaining_ms=2000, function_name="fn"))
    charge(order={"id": 1})
    assert 1900 <= gateway.body(0)["lease_ms"] <= 2000
    assert gateway.requests[0].url.path.split("/")[-2].startswith(f"fn.{__name__}.")


@pytest.mark.parametrize("fingerprint", [None, 'é\u2028"\\' * 3])
@pytest.mark.parametrize("wait_ms", [0, 250])
def test_request_bodies_are_the_compact_json_of_json_dumps(
    fingerprint: str | None, wait_ms: int
) -> None:
    gateway = Gateway(claim=[CLAIMED], complete=[COMPLETED], release=[RELEASED])
    store = gateway.store()
    invocation = Invocation(None, reserve_ms=0, default_lease_ms=1000)
    claimed = store.claim(
        "k-1",
        fingerprint=fingerprint,
        lease_ms=60_000,
        ttl_s=86_400,
        invocation=invocation,
        wait_ms=wait_ms,
    )
    assert isinstance(claimed, Claimed)
    token = claimed.lease_token
    # A result goes as the JSON the caller made of it (the local cache keeps the same bytes).
    result = json.dumps({"nested": [1, 2.5, None, True, "\u2028"]}, separators=(",", ":"))
    store.complete("k-1", lease_token=token, result_json=result.encode(), invocation=invocation)
    store.release("k-1", lease_token=token, invocation=invocation)
    claim = {"fingerprint": fingerprint, "lease_ms": 60_000, "ttl_s": 86_400, "lease_token": None}
    sent = [request.content for request in gateway.requests]
    claim["lease_token"] = json.loads(sent[0])["lease_token"]
    if wait_ms:
        claim["wait_ms"] = wait_ms
    expected = [claim, {"lease_token": token, "result": json.loads(result)}, {"lease_token": token}]
    assert sent == [json.dumps(body, separators=(",", ":")).encode() for body in expected]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"outcome":"claimed","attempt":2}', {"outcome": "claimed", "attempt": 2}),
        ('{"result":"é€"}'.encode(), {"result": "é€"}),
        (b"[1,2]", {}),
        (b"<html>502 Bad Gateway</html>", {}),
        ('{"result":"é"}'.encode("latin-1"), {}),
        (b"", {}),
    ],
    ids=["object", "utf-8", "not-an-object", "html", "not-utf-8", "empty"],
)
def test_answers_are_read_as_a_json_object_or_nothing(
    content: bytes, expected: dict[str, Any]
) -> None:
    assert _json_object(content) == expected
