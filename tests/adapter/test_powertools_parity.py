"""Powertools' documented uses, run side by side on Powertools itself and on the adapter.

Each scenario is written once against a ``library``: Powertools' idempotency utility on a
DynamoDB Local table, or ``lambda_adapter`` on a live gateway (each backend), where the store
line is Powertools' own (``DynamoDBPersistenceLayer(table_name=...)``, the gateway's URL from
``IDEMGATE_URL``). Both must answer the same, except for the differences the migration guide
lists, which are asserted as differences.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
import warnings
from collections.abc import Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import boto3
import pydantic
import pytest
from aws_lambda_powertools.utilities import idempotency as powertools
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, event_source
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import exceptions as powertools_errors
from aws_lambda_powertools.utilities.idempotency.serialization.custom_dict import (
    CustomDictSerializer,
)
from aws_lambda_powertools.utilities.idempotency.serialization.dataclass import (
    DataclassSerializer,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import (
    PydanticSerializer,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

import lambda_adapter
from idemgate.testing import DynamoDBLocal, GatewayServer
from lambda_adapter.testing import FakeLambdaContext

Library = SimpleNamespace
Scenario = Callable[[Library], Any]


@pytest.fixture(scope="module")
def powertools_table(dynamodb_local: DynamoDBLocal) -> str:
    """A table laid out as Powertools' docs create it."""
    client = boto3.client(
        "dynamodb", endpoint_url=dynamodb_local.endpoint_url, region_name="us-east-1"
    )
    name = f"powertools-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=name)
    return name


@pytest.fixture
def libraries(
    powertools_table: str,
    dynamodb_local: DynamoDBLocal,
    gateway: GatewayServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Library, Library]:
    client = boto3.client(
        "dynamodb", endpoint_url=dynamodb_local.endpoint_url, region_name="us-east-1"
    )
    monkeypatch.setenv("IDEMGATE_URL", gateway.url)
    nonce = uuid.uuid4().hex  # Powertools' table outlives one test: keys must not repeat
    return (
        Library(
            name="powertools",
            idempotent=powertools.idempotent,
            idempotent_function=powertools.idempotent_function,
            IdempotencyConfig=powertools.IdempotencyConfig,
            DataclassSerializer=DataclassSerializer,
            PydanticSerializer=PydanticSerializer,
            CustomDictSerializer=CustomDictSerializer,
            errors=powertools_errors,
            LambdaContext=LambdaContext,
            nonce=nonce,
            store=lambda: powertools.DynamoDBPersistenceLayer(
                table_name=powertools_table, boto3_client=client
            ),
        ),
        Library(
            name="idemgate",
            idempotent=lambda_adapter.idempotent,
            idempotent_function=lambda_adapter.idempotent_function,
            IdempotencyConfig=lambda_adapter.IdempotencyConfig,
            DataclassSerializer=lambda_adapter.DataclassSerializer,
            PydanticSerializer=lambda_adapter.PydanticSerializer,
            CustomDictSerializer=lambda_adapter.CustomDictSerializer,
            errors=lambda_adapter,
            LambdaContext=lambda_adapter.LambdaContext,
            nonce=nonce,
            store=lambda: lambda_adapter.DynamoDBPersistenceLayer(table_name=namespace),
        ),
    )


def both(libraries: tuple[Library, Library], scenario: Scenario) -> tuple[Any, Any]:
    powertools_outcome, idemgate_outcome = (scenario(library) for library in libraries)
    return powertools_outcome, idemgate_outcome


def same(libraries: tuple[Library, Library], scenario: Scenario) -> Any:
    powertools_outcome, idemgate_outcome = both(libraries, scenario)
    assert idemgate_outcome == powertools_outcome
    return idemgate_outcome


def caught(call: Callable[[], Any], *errors: type[BaseException]) -> Any:
    """The call's result, or the name of the expected error it raised."""
    try:
        return call()
    except errors as error:
        return type(error).__name__


@dataclasses.dataclass
class Order:
    order_id: str
    amount: int


class Payment(pydantic.BaseModel):
    payment_id: str
    amount: Decimal
    at: datetime.datetime


def test_the_getting_started_example(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        runs: list[int] = []
        persistence_layer = lib.store()

        @lib.idempotent(persistence_store=persistence_layer)
        def lambda_handler(event: dict[str, Any], context: lib.LambdaContext) -> dict[str, Any]:  # type: ignore[name-defined]
            runs.append(1)
            return {"payment_id": "p-1", "message": "success", "statusCode": 200}

        event = {"user_id": "u-1", "product_id": lib.nonce}
        return [lambda_handler(event, FakeLambdaContext()) for _ in range(2)], len(runs)

    assert same(libraries, scenario)[1] == 1


def test_key_and_payload_validation_expressions_and_the_errors_users_catch(
    libraries: tuple[Library, Library],
) -> None:
    def scenario(lib: Library) -> Any:
        config = lib.IdempotencyConfig(
            event_key_jmespath='["user_id", "product_id"]',
            payload_validation_jmespath="amount",
        )

        @lib.idempotent(config=config, persistence_store=lib.store())
        def handler(event: Any, context: Any) -> dict[str, Any]:
            return {"charged": event["amount"]}

        event = {"user_id": "u-1", "product_id": lib.nonce, "amount": 10}
        return [
            handler(event, FakeLambdaContext()),
            handler({**event, "note": "retry"}, FakeLambdaContext()),
            caught(
                lambda: handler({**event, "amount": 99}, FakeLambdaContext()),
                lib.errors.IdempotencyValidationError,
            ),
        ]

    assert same(libraries, scenario)[2] == "IdempotencyValidationError"


def test_positional_and_default_configs(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        runs: list[int] = []
        by_order = lib.IdempotencyConfig("order_id", "", None, False, 600)
        whole_event = lib.IdempotencyConfig()

        def handler(event: Any, context: Any) -> int:
            runs.append(1)
            return len(runs)

        on_order = lib.idempotent(config=by_order, persistence_store=lib.store())(handler)
        on_event = lib.idempotent(config=whole_event, persistence_store=lib.store())(handler)
        event = {"order_id": lib.nonce, "attempt": 1}
        return [
            on_order(event, FakeLambdaContext()),
            on_order({**event, "attempt": 2}, FakeLambdaContext()),  # same order: replayed
            on_event(event, FakeLambdaContext()),
            on_event({**event, "attempt": 2}, FakeLambdaContext()),  # another event: runs
        ]

    assert same(libraries, scenario) == [1, 1, 2, 3]


def test_a_missing_key_raises_when_asked_to(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        config = lib.IdempotencyConfig(
            event_key_jmespath="order_id", raise_on_no_idempotency_key=True
        )
        handler = lib.idempotent(config=config, persistence_store=lib.store())(
            lambda event, context: "ran"
        )
        return caught(
            lambda: handler({"other": lib.nonce}, FakeLambdaContext()),
            lib.errors.IdempotencyKeyError,
        )

    assert same(libraries, scenario) == "IdempotencyKeyError"


@pytest.mark.parametrize(
    "result",
    [
        {"amount": Decimal("10.50"), "count": Decimal(2)},
        Order("o-1", 3),
        Payment(payment_id="p-1", amount=Decimal("1.5"), at=datetime.datetime(2026, 1, 2)),
    ],
    ids=["decimal", "dataclass", "pydantic"],
)
def test_results_powertools_encodes_replay_alike(
    libraries: tuple[Library, Library], result: Any
) -> None:
    def scenario(lib: Library) -> Any:
        handler = lib.idempotent(persistence_store=lib.store())(lambda event, context: result)
        event = {"id": lib.nonce}
        return [handler(event, FakeLambdaContext()) for _ in range(2)]

    first, replayed = same(libraries, scenario)
    assert first is result
    assert replayed != result  # both replay the stored JSON, not the object


def _order_output(data: dict[str, Any]) -> Order:
    return Order(**data)


@pytest.mark.parametrize("serializer_name", ["dataclass", "pydantic", "custom"])
def test_output_serializers_rebuild_the_returned_object(
    libraries: tuple[Library, Library], serializer_name: str
) -> None:
    def scenario(lib: Library) -> Any:
        runs: list[int] = []
        config = lib.IdempotencyConfig(event_key_jmespath="order_id")
        serializer, result = {
            "dataclass": (lib.DataclassSerializer, Order("o-1", 3)),
            "pydantic": (
                lib.PydanticSerializer,
                Payment(payment_id="p-1", amount=Decimal("1.5"), at=datetime.datetime(2026, 1, 2)),
            ),
            "custom": (
                lib.CustomDictSerializer(to_dict=dataclasses.asdict, from_dict=_order_output),
                Order("o-2", 4),
            ),
        }[serializer_name]

        def process_order(order: dict[str, Any]) -> Any:
            runs.append(1)
            return result

        process_order.__annotations__["return"] = type(result)
        process = lib.idempotent_function(
            data_keyword_argument="order",
            config=config,
            persistence_store=lib.store(),
            output_serializer=serializer,
        )(process_order)
        order = {"order_id": lib.nonce}
        outcomes = [process(order=order) for _ in range(2)]
        return outcomes, [type(outcome) for outcome in outcomes], len(runs)

    _, types, runs = same(libraries, scenario)
    assert runs == 1
    assert types[0] is types[1]


def test_the_response_hook_gets_the_record(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        seen: list[Any] = []

        def mark_replay(response: Any, record: Any) -> Any:
            expires = record.get_expiration_datetime()
            seen.append((record.status, bool(record.idempotency_key)))
            seen.append(datetime.datetime.now() < expires < datetime.datetime.now() + _TWO_DAYS)
            return {**response, "headers": {"x-idempotent-replay": "true"}}

        config = lib.IdempotencyConfig(response_hook=mark_replay)
        handler = lib.idempotent(config=config, persistence_store=lib.store())(
            lambda event, context: {"statusCode": 200}
        )
        event = {"id": lib.nonce}
        return [handler(event, FakeLambdaContext()) for _ in range(2)], seen

    outcomes, seen = same(libraries, scenario)
    assert outcomes[1]["headers"] == {"x-idempotent-replay": "true"}
    assert seen == [("COMPLETED", True), True]


_TWO_DAYS = datetime.timedelta(days=2)


def test_a_key_prefix_names_the_record_across_functions(
    libraries: tuple[Library, Library],
) -> None:
    def scenario(lib: Library) -> Any:
        store = lib.store()
        config = lib.IdempotencyConfig(event_key_jmespath="order_id")

        @lib.idempotent_function(
            data_keyword_argument="order",
            config=config,
            persistence_store=store,
            key_prefix="orders-v1",
        )
        def before_the_refactor(order: dict[str, Any]) -> str:
            return "before"

        @lib.idempotent_function(
            data_keyword_argument="order",
            config=config,
            persistence_store=store,
            key_prefix="orders-v1",
        )
        def after_the_refactor(order: dict[str, Any]) -> str:
            return "after"

        handler = lib.idempotent(config=config, persistence_store=store, key_prefix="handler-v1")(
            lambda event, context: "handled"
        )
        order = {"order_id": lib.nonce}
        return [
            before_the_refactor(order=order),
            after_the_refactor(order=order),
            handler(order, FakeLambdaContext()),
        ]

    assert same(libraries, scenario) == ["before", "before", "handled"]


@pytest.mark.parametrize(
    "variable", ["POWERTOOLS_IDEMPOTENCY_DISABLED", "IDEMGATE_IDEMPOTENCY_DISABLED"]
)
def test_idempotency_can_be_disabled_for_tests(
    libraries: tuple[Library, Library], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "true")

    def scenario(lib: Library) -> Any:
        runs: list[int] = []

        @lib.idempotent(persistence_store=lib.store())
        def handler(event: Any, context: Any) -> int:
            runs.append(1)
            return len(runs)

        with warnings.catch_warnings(record=True) as caught_warnings:
            warnings.simplefilter("always")
            outcome = [handler({"id": lib.nonce}, FakeLambdaContext()) for _ in range(2)]
        production = [w for w in caught_warnings if "production" in str(w.message)]
        return outcome, len(production)

    powertools_outcome, idemgate_outcome = both(libraries, scenario)
    assert idemgate_outcome == ([1, 2], 2)  # each run unprotected, each with a warning
    # Powertools reads only its own variable.
    assert powertools_outcome == (([1, 2], 2) if variable.startswith("POWERTOOLS") else ([1, 1], 0))


def test_an_event_source_data_class_is_keyed_on_its_raw_event(
    libraries: tuple[Library, Library],
) -> None:
    def scenario(lib: Library) -> Any:
        runs: list[int] = []
        config = lib.IdempotencyConfig(event_key_jmespath="powertools_json(body).order_id")

        @event_source(data_class=APIGatewayProxyEventV2)
        @lib.idempotent(config=config, persistence_store=lib.store())
        def handler(event: APIGatewayProxyEventV2, context: Any) -> dict[str, Any]:
            runs.append(1)
            return {"statusCode": 201, "body": event.json_body["order_id"]}

        event = {
            "version": "2.0",
            "routeKey": "POST /orders",
            "requestContext": {"http": {"method": "POST", "path": "/orders"}},
            "body": f'{{"order_id": "{lib.nonce}"}}',
        }
        return [handler(event, FakeLambdaContext()) for _ in range(2)], len(runs)

    assert same(libraries, scenario)[1] == 1


def test_decimal_key_data(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        runs: list[int] = []

        @lib.idempotent_function(data_keyword_argument="item", persistence_store=lib.store())
        def store_item(item: dict[str, Any]) -> int:
            runs.append(1)
            return len(runs)

        item = {"id": lib.nonce, "price": Decimal("19.99"), "quantity": Decimal(2)}
        return [
            store_item(item=item),
            store_item(item=dict(item)),
            store_item(item={**item, "quantity": Decimal(3)}),
        ]

    assert same(libraries, scenario) == [1, 1, 2]


def test_the_data_argument_must_be_a_keyword(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        @lib.idempotent_function(data_keyword_argument="order", persistence_store=lib.store())
        def process(order: dict[str, Any]) -> str:
            return "ran"

        return [
            caught(lambda: process({"id": lib.nonce}), RuntimeError),
            caught(process, RuntimeError),
        ]

    assert same(libraries, scenario) == ["RuntimeError", "RuntimeError"]


def test_a_duplicate_while_the_first_runs_is_in_progress(
    libraries: tuple[Library, Library],
) -> None:
    def scenario(lib: Library) -> Any:
        inner: list[Any] = []

        @lib.idempotent(persistence_store=lib.store())
        def handler(event: Any, context: Any) -> str:
            if not inner:  # the duplicate arrives while this invocation still runs
                inner.append(
                    caught(
                        lambda: handler(event, FakeLambdaContext()),
                        lib.errors.IdempotencyAlreadyInProgressError,
                    )
                )
            return "done"

        return handler({"id": lib.nonce}, FakeLambdaContext()), inner

    assert same(libraries, scenario) == ("done", ["IdempotencyAlreadyInProgressError"])


@pytest.mark.parametrize("result", [{}, [], 0, "", False])
def test_difference_falsy_results_replay_exactly(
    libraries: tuple[Library, Library], result: Any
) -> None:
    """Powertools replays every falsy result as None; the adapter replays what was returned."""

    def scenario(lib: Library) -> Any:
        handler = lib.idempotent(persistence_store=lib.store())(lambda event, context: result)
        return [handler({"id": lib.nonce}, FakeLambdaContext()) for _ in range(2)]

    powertools_outcome, idemgate_outcome = both(libraries, scenario)
    assert powertools_outcome == [result, None]
    assert idemgate_outcome == [result, result]


def _sqs_record(message_id: str, body: str) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000000"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
        "awsRegion": "us-east-1",
    }


def test_the_sqs_batch_integration(libraries: tuple[Library, Library]) -> None:
    def scenario(lib: Library) -> Any:
        processor = BatchProcessor(event_type=EventType.SQS)
        config = lib.IdempotencyConfig(event_key_jmespath="messageId")
        runs: list[str] = []

        @lib.idempotent_function(
            data_keyword_argument="record", config=config, persistence_store=lib.store()
        )
        def record_handler(record: SQSRecord) -> dict[str, str]:
            runs.append(record.body)
            return {"message": record.body}

        def lambda_handler(event: dict[str, Any], context: Any) -> Any:
            config.register_lambda_context(context)
            return process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )

        event = {
            "Records": [_sqs_record(f"{lib.nonce}-{n}", f"order {n}") for n in (1, 2)],
        }
        outcomes = [lambda_handler(event, FakeLambdaContext()) for _ in range(2)]
        return outcomes, sorted(runs)

    assert same(libraries, scenario) == (
        [{"batchItemFailures": []}] * 2,
        ["order 1", "order 2"],
    )
