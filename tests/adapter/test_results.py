"""Results that must never be lost, against a real gateway on each backend.

Powertools' own encoder is the reference for what a result is stored as.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from aws_lambda_powertools.shared.json_encoder import Encoder

from idemgate.testing import GatewayServer
from lambda_adapter import (
    CustomDictSerializer,
    DataclassSerializer,
    GatewayPersistenceLayer,
    IdempotencyConfig,
    IdempotencyResultNotStoredError,
    PydanticSerializer,
    idempotent,
    idempotent_function,
)
from lambda_adapter.testing import FakeLambdaContext

from .conftest import StallingServer
from .test_gateway_flows import HTTP_API_EVENT


@dataclasses.dataclass
class Receipt:
    order_id: str
    amount: Decimal
    lines: list[int]


class Charge(pydantic.BaseModel):
    charge_id: str
    amount: Decimal
    at: datetime.datetime


RECEIPT = Receipt("o-1", Decimal("10.50"), [1, 2])
CHARGE = Charge(charge_id="c-1", amount=Decimal("3.10"), at=datetime.datetime(2026, 1, 2, 3, 4, 5))


def _powertools_stored(result: Any) -> Any:
    """What Powertools replays: its encoder's JSON, parsed back."""
    return json.loads(json.dumps(result, cls=Encoder, sort_keys=True))


def _run_twice(store: GatewayPersistenceLayer, result: Any) -> tuple[Any, Any, int]:
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> Any:
        runs.append(1)
        return result

    first = handler({"id": 1}, FakeLambdaContext())
    return first, handler({"id": 1}, FakeLambdaContext()), len(runs)


@pytest.mark.parametrize(
    "result",
    [
        {"amount": Decimal("10.50"), "count": Decimal(3), "nan": None},
        RECEIPT,
        CHARGE,
        [Decimal("-0.001"), {"nested": RECEIPT}],
    ],
    ids=["decimal", "dataclass", "pydantic", "nested"],
)
def test_what_powertools_stores_is_stored_and_replayed_as_powertools_does(
    store: GatewayPersistenceLayer, result: Any
) -> None:
    first, replayed, runs = _run_twice(store, result)
    assert first is result
    assert runs == 1
    assert replayed == _powertools_stored(result)


def test_a_datetime_is_stored_as_iso_8601(store: GatewayPersistenceLayer) -> None:
    # Powertools' encoder refuses a bare datetime (TypeError after the work ran): stored here.
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    result = {"at": at, "day": at.date(), "time": at.time()}
    _, replayed, runs = _run_twice(store, result)
    assert (runs, replayed) == (1, {"at": at.isoformat(), "day": "2026-01-02", "time": "03:04:05"})


class Totals:
    def __init__(self, total: int) -> None:
        self.total = total

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Totals) and other.total == self.total

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("serializer", "result"),
    [
        (DataclassSerializer, RECEIPT),
        (PydanticSerializer, CHARGE),
        (
            CustomDictSerializer(
                to_dict=lambda totals: {"total": totals.total},
                from_dict=lambda data: Totals(data["total"]),
            ),
            Totals(7),
        ),
    ],
    ids=["dataclass", "pydantic", "custom"],
)
def test_an_output_serializer_replays_the_object(
    store: GatewayPersistenceLayer, serializer: Any, result: Any
) -> None:
    runs: list[int] = []

    def make(order: dict[str, Any]) -> Any:
        runs.append(1)
        return result

    # The class serializers build themselves from the return annotation, as in Powertools.
    make.__annotations__["return"] = type(result)
    process = idempotent_function(
        make, data_keyword_argument="order", persistence_store=store, output_serializer=serializer
    )
    assert process(order={"id": 1}) is result
    replayed = process(order={"id": 1})
    assert type(replayed) is type(result)
    assert replayed == (
        Receipt("o-1", "10.50", [1, 2])  # type: ignore[arg-type]
        if isinstance(result, Receipt)  # asdict + Receipt(**data): the Decimal comes back a str
        else result
    )
    assert runs == [1]


def test_200_kb_of_non_ascii_text_is_stored_as_utf8(store: GatewayPersistenceLayer) -> None:
    text = "é" * 100_000  # 200,002 bytes of UTF-8 JSON; 600,002 if escaped
    _, replayed, runs = _run_twice(store, {"text": text})
    assert (runs, replayed) == (1, {"text": text})


@pytest.mark.parametrize(
    "result",
    [{"text": "x" * 300_000}, {1, 2}, float("inf")],
    ids=["over-the-gateways-limit", "not-json", "infinity"],
)
def test_a_result_that_cannot_be_stored_never_runs_the_work_again(
    store: GatewayPersistenceLayer, result: Any
) -> None:
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> Any:
        runs.append(1)
        return result

    assert handler({"id": 1}, FakeLambdaContext()) is result
    for _ in range(2):
        with pytest.raises(IdempotencyResultNotStoredError) as caught:
            handler({"id": 1}, FakeLambdaContext())
    assert runs == [1]
    assert caught.value.code == "RESULT_NOT_STORED"
    assert caught.value.reason


def test_the_gateway_refusing_a_result_also_leaves_the_marker(
    gateway: GatewayServer, namespace: str
) -> None:
    # The adapter believes the gateway takes more than it does: the gateway's 413 decides.
    store = GatewayPersistenceLayer(url=gateway.url, namespace=namespace, max_result_bytes=10**6)
    runs_seen: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> Any:
        runs_seen.append(1)
        return "x" * 300_000

    handler({"id": 1}, FakeLambdaContext())
    with pytest.raises(IdempotencyResultNotStoredError, match="PAYLOAD_TOO_LARGE"):
        handler({"id": 1}, FakeLambdaContext())
    assert runs_seen == [1]


def test_an_http_duplicate_of_a_result_not_stored_gets_a_409(
    store: GatewayPersistenceLayer,
) -> None:
    @idempotent(persistence_store=store)
    def handler(event: Any, context: Any) -> Any:
        return {"statusCode": 200, "body": "x" * 300_000}

    assert handler(HTTP_API_EVENT, FakeLambdaContext())["statusCode"] == 200
    response = handler(HTTP_API_EVENT, FakeLambdaContext())
    assert response["statusCode"] == 409
    assert "Retry-After" not in response["headers"]
    assert json.loads(response["body"])["code"] == "RESULT_NOT_STORED"


@pytest.mark.parametrize(("share", "at_least_ms"), [(None, 2500), (0.5, 1500)])
def test_fail_open_with_a_silent_gateway_leaves_the_work_its_time(
    silent_server: StallingServer, share: float | None, at_least_ms: int
) -> None:
    """Defaults: 3 attempts of 3 s each. The claim may take a quarter of 4 s (or a half)."""
    store = GatewayPersistenceLayer(url=silent_server.url, namespace="n")
    options = {} if share is None else {"claim_time_share": share}
    config = IdempotencyConfig(on_unavailable="fail_open", **options)  # type: ignore[arg-type]
    left_for_the_work: list[int] = []

    @idempotent(persistence_store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        left_for_the_work.append(context.get_remaining_time_in_millis())
        return "ran"

    assert handler({"id": 1}, FakeLambdaContext(remaining_ms=4000)) == "ran"
    assert silent_server.connections >= 1  # the claim did wait on the gateway
    assert left_for_the_work[0] >= at_least_ms
