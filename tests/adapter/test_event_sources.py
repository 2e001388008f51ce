"""Batches and multi-record events: SQS through a real SQS-protocol server, against live gateways.

The queues live in moto's server (signatures checked); the poller in ``sqs_poller`` plays
Lambda's part. Side effects go to a ledger, which must list each piece of work once.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from typing import Any

import pytest
from sqs_poller import Poller, create_queue, create_queue_with_redrive, queue_size, visible_at_ms

from idemgate.testing import GatewayServer
from lambda_adapter import (
    DeadLetterHandoff,
    EventKey,
    GatewayPersistenceLayer,
    IdempotencyConfig,
    SqsBackoff,
    idempotent,
    process_records,
    process_sqs_batch,
)
from lambda_adapter.testing import FakeLambdaContext

# A failed message comes back after one second: min(1, 0.01 * 2**n) rounded up, no jitter.
QUICK = SqsBackoff(base_s=0.01, cap_s=1, jitter_s=0)


# ---------------------------------------------------------------- the backoff function, alone


def test_backoff_doubles_with_each_receive_until_the_cap() -> None:
    backoff = SqsBackoff(base_s=1, cap_s=60, jitter_s=0)
    assert [backoff.visibility_timeout_s(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff.visibility_timeout_s(10**9) == 60  # no overflow on absurd counts


def test_backoff_never_exceeds_sqs_twelve_hours_even_with_jitter() -> None:
    backoff = SqsBackoff(base_s=3600, cap_s=43_200, jitter_s=900)
    rng = random.Random(1)
    assert {backoff.visibility_timeout_s(20, rng=rng) for _ in range(100)} == {43_200}


def test_backoff_jitter_spreads_uniformly_over_its_range() -> None:
    backoff = SqsBackoff(base_s=1, cap_s=900, jitter_s=10)
    rng = random.Random(7)
    draws = [backoff.visibility_timeout_s(3, rng=rng) for _ in range(2000)]
    # 8 s, plus a jitter in [0, 10], rounded up to whole seconds.
    assert min(draws) >= 8
    assert max(draws) <= 18
    assert set(range(9, 19)) <= set(draws) <= set(range(8, 19))
    mean = sum(draws) / len(draws)
    assert 13 < mean < 14  # 8 + 5 + about 0.5 for rounding up


@pytest.mark.parametrize(
    "options",
    [{"base_s": 0}, {"cap_s": 43_201}, {"cap_s": -1}, {"jitter_s": -0.5}],
)
def test_backoff_refuses_settings_sqs_cannot_honour(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="base_s"):
        SqsBackoff(**options)


def test_a_dead_letter_hand_off_needs_a_queue_arn() -> None:
    with pytest.raises(Exception, match="not an SQS queue ARN"):
        DeadLetterHandoff(queue_arn="https://sqs.us-east-1.amazonaws.com/1/dlq")
    with pytest.raises(ValueError, match="after_receives"):
        DeadLetterHandoff(queue_arn="arn:aws:sqs:us-east-1:123456789012:dlq", after_receives=0)


@pytest.mark.parametrize("event", [{}, {"Records": "x"}, {"Records": [{"body": "no id"}]}])
def test_an_event_that_is_not_an_sqs_batch_is_refused_whole(event: dict[str, Any]) -> None:
    store = GatewayPersistenceLayer(url="http://127.0.0.1:9", namespace="n")
    with pytest.raises(ValueError, match=r"Records|messageId"):
        process_sqs_batch(event, None, lambda record: None, persistence_store=store)


# ---------------------------------------------------------------- SQS against moto and a gateway


@pytest.fixture
def sqs(moto_server: Any, monkeypatch: pytest.MonkeyPatch, gateway: GatewayServer) -> Any:
    """A boto3 SQS client, and the function's role credentials in the environment.

    The adapter signs its SQS calls with the credentials Lambda puts in the environment: here,
    STS temporary credentials of a role allowed SQS only. (``gateway`` first: it must not
    inherit them.)
    """
    credentials = moto_server.temporary_credentials(f"fn-{uuid.uuid4().hex[:8]}", actions=["sqs:*"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["aws_secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", credentials["aws_session_token"])
    return moto_server.client("sqs", **credentials)


@pytest.fixture
def queue_name() -> str:
    return f"orders-{uuid.uuid4().hex[:10]}"


class Ledger:
    """The side effects, in order: what must happen exactly once."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.fail: set[str] = set()  # bodies whose handler raises while they are listed here

    def handler(self, record: dict[str, Any]) -> dict[str, Any]:
        order = json.loads(record["body"])["order"]
        if order in self.fail:
            raise RuntimeError(f"the payment service refused {order}")
        self.entries.append(order)
        return {"charged": order}


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def _send(sqs: Any, url: str, *orders: str, **extra: Any) -> None:
    for order in orders:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"order": order}), **extra)


def _invoke(
    ledger: Ledger,
    store: GatewayPersistenceLayer,
    moto_server: Any,
    remaining_ms: int = 10_000,
    **options: Any,
) -> Any:
    def invoke(event: dict[str, Any]) -> Any:
        return process_sqs_batch(
            event,
            FakeLambdaContext(remaining_ms=remaining_ms, function_name="orders-fn"),
            ledger.handler,
            persistence_store=store,
            sqs_endpoint_url=moto_server.endpoint_url,
            **options,
        )

    return invoke


def test_every_record_runs_once_despite_duplicates_and_failures(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
) -> None:
    queue, dead_letters = create_queue_with_redrive(sqs, queue_name, max_receive_count=5)
    # o-2 is sent twice (two message IDs, one business order); o-4 fails on its first delivery.
    _send(sqs, queue.url, "o-1", "o-2", "o-2", "o-3", "o-4", "o-5")
    ledger.fail.add("o-4")
    keyed_on_order = IdempotencyConfig(event_key_jmespath="powertools_json(body).order")
    invoke = _invoke(ledger, store, moto_server, config=keyed_on_order, backoff=QUICK)
    poller = Poller(sqs, queue)

    first = poller.poll_once(invoke)
    assert len(first) == 6  # one batch: every record is handled, not only Records[0]
    [response] = poller.responses
    o4 = next(m["MessageId"] for m in first if json.loads(m["Body"])["order"] == "o-4")
    assert response == {"batchItemFailures": [{"itemIdentifier": o4}]}
    assert sorted(ledger.entries) == ["o-1", "o-2", "o-3", "o-5"]

    # Redelivering the processed messages (as a lost response would) runs nothing again.
    replay = poller.event([m for m in first if m["MessageId"] != o4])
    assert invoke(replay) == {"batchItemFailures": []}
    ledger.fail.clear()
    poller.drain(invoke, until=lambda: queue_size(sqs, queue) == 0)
    assert sorted(ledger.entries) == ["o-1", "o-2", "o-3", "o-4", "o-5"]
    assert queue_size(sqs, dead_letters) == 0


def test_a_failed_message_is_hidden_for_the_computed_backoff(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    queue = create_queue(sqs, queue_name)
    _send(sqs, queue.url, "o-1", "o-2")
    ledger.fail.update({"o-1", "o-2"})
    backoff = SqsBackoff(base_s=10, cap_s=600, jitter_s=30)
    poller = Poller(sqs, queue)
    messages = poller.receive()
    assert len(messages) == 2
    caplog.set_level(logging.WARNING, logger="lambda_adapter")
    before_ms = time.time() * 1000
    poller.deliver(messages, _invoke(ledger, store, moto_server, backoff=backoff))
    after_ms = time.time() * 1000

    incidents = [json.loads(r.getMessage()) for r in caplog.records]
    timeouts = {
        i["message_id"]: i["visibility_timeout_s"]
        for i in incidents
        if i["incident"] == "record_failed"
    }
    assert set(timeouts) == {m["MessageId"] for m in messages}
    for message_id, seconds in timeouts.items():
        # First receive: 10 * 2**1 = 20 s, plus up to 30 s of jitter.
        assert 20 <= seconds <= 50
        visible_at = visible_at_ms(moto_server.endpoint_url, message_id)
        assert before_ms + seconds * 1000 <= visible_at <= after_ms + seconds * 1000
    assert poller.receive() == []  # hidden, not back after the queue's default


def test_messages_reach_the_dead_letter_queue_after_max_receives(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
) -> None:
    queue, dead_letters = create_queue_with_redrive(sqs, queue_name, max_receive_count=2)
    _send(sqs, queue.url, "poison", "fine")
    ledger.fail.add("poison")
    attempts: list[str] = []

    def counting(record: dict[str, Any]) -> Any:
        attempts.append(record["attributes"]["ApproximateReceiveCount"])
        return ledger.handler(record)

    def invoke(event: dict[str, Any]) -> Any:
        return process_sqs_batch(
            event,
            FakeLambdaContext(remaining_ms=10_000),
            counting,
            persistence_store=store,
            backoff=QUICK,
            sqs_endpoint_url=moto_server.endpoint_url,
        )

    poller = Poller(sqs, queue)
    poller.drain(invoke, until=lambda: queue_size(sqs, dead_letters) == 1)
    assert queue_size(sqs, queue) == 0
    assert ledger.entries == ["fine"]
    assert attempts.count("1") == 2  # both tried once; the poison once more, then moved
    assert attempts.count("2") == 1
    [dead] = Poller(sqs, dead_letters).receive()
    assert json.loads(dead["Body"]) == {"order": "poison"}


def test_an_explicit_hand_off_carries_the_failure_to_the_dead_letter_queue(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
) -> None:
    queue, redrive_target = create_queue_with_redrive(sqs, queue_name, max_receive_count=10)
    explicit = create_queue(sqs, f"{queue_name}-failures")
    _send(
        sqs,
        queue.url,
        "poison",
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    ledger.fail.add("poison")
    hand_off = DeadLetterHandoff(queue_arn=explicit.arn, after_receives=2)
    invoke = _invoke(ledger, store, moto_server, backoff=QUICK, dead_letter=hand_off)
    poller = Poller(sqs, queue)
    poller.drain(invoke, until=lambda: queue_size(sqs, explicit) == 1)

    # Handed off on its second receive, then reported processed, so the poller deleted it.
    assert poller.responses[-1] == {"batchItemFailures": []}
    assert queue_size(sqs, queue) == 0
    assert queue_size(sqs, redrive_target) == 0
    [dead] = Poller(sqs, explicit).receive()
    attributes = {name: value["StringValue"] for name, value in dead["MessageAttributes"].items()}
    assert attributes["idemgate.failure"] == "RuntimeError: the payment service refused poison"
    assert attributes["idemgate.receive-count"] == "2"
    assert attributes["idemgate.source-queue-arn"] == queue.arn
    assert attributes["tenant"] == "acme"
    assert json.loads(dead["Body"]) == {"order": "poison"}


def test_records_are_not_started_once_the_deadline_is_near(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
) -> None:
    queue = create_queue(sqs, queue_name)
    _send(sqs, queue.url, "slow", "o-2", "o-3")

    def slow_first(record: dict[str, Any]) -> Any:
        if json.loads(record["body"])["order"] == "slow":
            time.sleep(1.5)
        return ledger.handler(record)

    poller = Poller(sqs, queue)
    messages = poller.receive()
    ids = [m["MessageId"] for m in messages]
    assert len(ids) == 3
    # 2.5 s to run; records stop starting below 0.1 + 1 s: the slow one leaves less than that.
    response = poller.deliver(
        messages,
        lambda event: process_sqs_batch(
            event,
            FakeLambdaContext(remaining_ms=2500),
            slow_first,
            persistence_store=store,
            backoff=QUICK,
            sqs_endpoint_url=moto_server.endpoint_url,
        ),
    )
    assert ledger.entries == ["slow"]
    assert response == {"batchItemFailures": [{"itemIdentifier": i} for i in ids[1:]]}
    # The unstarted records are visible again at once, for the next invocation.
    assert sorted(m["MessageId"] for m in poller.receive()) == sorted(ids[1:])


def test_a_fifo_group_stops_at_its_first_failure_and_keeps_its_order(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
) -> None:
    queue, _ = create_queue_with_redrive(sqs, queue_name, max_receive_count=5, fifo=True)
    for order, group in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A")]:
        _send(sqs, queue.url, order, MessageGroupId=group, MessageDeduplicationId=order)
    ledger.fail.add("a2")
    invoke = _invoke(ledger, store, moto_server, backoff=QUICK)
    poller = Poller(sqs, queue)

    messages = poller.poll_once(invoke)
    assert len(messages) == 5
    by_order = {json.loads(m["Body"])["order"]: m["MessageId"] for m in messages}
    assert poller.responses[0] == {
        "batchItemFailures": [{"itemIdentifier": by_order[o]} for o in ("a2", "a3")]
    }
    assert ledger.entries == ["a1", "b1", "b2"]  # a3 did not run after a2 failed

    ledger.fail.clear()
    poller.drain(invoke, until=lambda: queue_size(sqs, queue) == 0)
    assert ledger.entries == ["a1", "b1", "b2", "a2", "a3"]


def test_held_elsewhere_and_changed_payloads_are_failures(
    sqs: Any,
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = create_queue(sqs, queue_name)
    sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps({"order": "o-1", "amount": 5}))
    sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps({"order": "o-1", "amount": 9}))
    _send(sqs, queue.url, "o-2")
    config = IdempotencyConfig(
        event_key_jmespath="powertools_json(body).order", payload_validation_jmespath="body"
    )
    poller = Poller(sqs, queue)
    messages = poller.receive()
    ids = [m["MessageId"] for m in messages]
    event = poller.event(messages)
    nested: list[Any] = []

    def handler(record: dict[str, Any]) -> Any:
        if json.loads(record["body"])["order"] == "o-2" and not nested:
            # A second consumer gets the same message while this one works on it.
            nested.append(
                process_sqs_batch(
                    {"Records": [record]},
                    FakeLambdaContext(),
                    handler,
                    persistence_store=store,
                    config=config,
                )
            )
        return ledger.handler(record)

    caplog.set_level(logging.WARNING, logger="lambda_adapter")
    response = process_sqs_batch(
        event, FakeLambdaContext(), handler, persistence_store=store, config=config
    )
    assert nested == [{"batchItemFailures": [{"itemIdentifier": ids[2]}]}]
    assert response == {"batchItemFailures": [{"itemIdentifier": ids[1]}]}
    assert ledger.entries == ["o-1", "o-2"]
    incidents = [json.loads(record.getMessage()) for record in caplog.records]
    [mismatch] = [i for i in incidents if i["incident"] == "fingerprint_mismatch"]
    assert mismatch["message_id"] == ids[1]
    assert "client bug" in mismatch["message"]
    assert [i["incident"] for i in incidents].count("record_failed") == 1  # the nested one


# ---------------------------------------------------------------- async invokes and streams


def _sns_event(*messages: tuple[str, str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "Sns": {"Type": "Notification", "MessageId": message_id, "Message": body},
            }
            for message_id, body in messages
        ]
    }


def _s3_record(bucket: str, key: str, sequencer: str) -> dict[str, Any]:
    return {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "sequencer": sequencer}},
    }


def test_sns_records_run_one_by_one_and_a_retry_runs_only_what_failed(
    store: GatewayPersistenceLayer,
) -> None:
    ran: list[str] = []
    failing = {"m-2"}

    def handler(record: dict[str, Any]) -> str:
        message_id = record["Sns"]["MessageId"]
        if message_id in failing:
            raise RuntimeError(f"{message_id} failed")
        ran.append(message_id)
        return message_id

    event = _sns_event(("m-1", "a"), ("m-2", "b"), ("m-3", "c"))
    with pytest.raises(ExceptionGroup) as failed:
        process_records(event, FakeLambdaContext(), handler, persistence_store=store)
    assert [str(e) for e in failed.value.exceptions] == ["m-2 failed"]
    assert ran == ["m-1", "m-3"]

    failing.clear()  # Lambda's retry of the same event
    results = process_records(event, FakeLambdaContext(), handler, persistence_store=store)
    assert results == ["m-1", "m-2", "m-3"]
    assert ran == ["m-1", "m-3", "m-2"]


def test_s3_records_are_keyed_on_bucket_key_and_sequencer(
    store: GatewayPersistenceLayer,
) -> None:
    ran: list[str] = []

    def handler(record: dict[str, Any]) -> None:
        ran.append(record["s3"]["object"]["sequencer"])

    # The same object written twice (two sequencers), and one event delivered twice.
    first = {"Records": [_s3_record("b", "k", "0A1"), _s3_record("b", "k", "0A2")]}
    again = {"Records": [_s3_record("b", "k", "0A2"), _s3_record("b", "other", "0A2")]}
    process_records(first, FakeLambdaContext(), handler, persistence_store=store)
    process_records(again, FakeLambdaContext(), handler, persistence_store=store)
    assert ran == ["0A1", "0A2", "0A2"]  # the last for the other key


@pytest.mark.parametrize(
    ("record", "same_id", "other_id"),
    [
        pytest.param(
            {"eventSource": "aws:dynamodb", "eventID": "e-1", "dynamodb": {"Keys": {}}},
            {"eventID": "e-1"},
            {"eventID": "e-2"},
            id="dynamodb-streams",
        ),
        pytest.param(
            {
                "eventSource": "aws:kinesis",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s",
                "eventID": "shardId-000000000000:4959",
                "kinesis": {"sequenceNumber": "4959", "data": "e30="},
            },
            {"eventID": "shardId-000000000000:4959"},
            {"eventID": "shardId-000000000001:4959"},
            id="kinesis",
        ),
    ],
)
def test_stream_records_are_keyed_on_their_event_id(
    store: GatewayPersistenceLayer,
    record: dict[str, Any],
    same_id: dict[str, Any],
    other_id: dict[str, Any],
) -> None:
    ran: list[dict[str, Any]] = []
    # A replay with a changed body but the same id is the same record; another id is not.
    event = {"Records": [record, {**record, **same_id, "body": "x"}, {**record, **other_id}]}
    process_records(event, FakeLambdaContext(), ran.append, persistence_store=store)
    assert [r["eventID"] for r in ran] == [record["eventID"], other_id["eventID"]]


def test_a_stream_batch_stops_at_its_first_failure_and_resumes_there(
    store: GatewayPersistenceLayer,
) -> None:
    ran: list[str] = []
    failing = {"e-2"}

    def handler(record: dict[str, Any]) -> None:
        if record["eventID"] in failing:
            raise RuntimeError("the index is down")
        ran.append(record["eventID"])

    event = {"Records": [{"eventSource": "aws:dynamodb", "eventID": f"e-{n}"} for n in (1, 2, 3)]}
    with pytest.raises(ExceptionGroup):
        process_records(event, FakeLambdaContext(), handler, persistence_store=store)
    assert ran == ["e-1"]  # e-3 did not overtake e-2
    failing.clear()
    process_records(event, FakeLambdaContext(), handler, persistence_store=store)
    assert ran == ["e-1", "e-2", "e-3"]


def test_an_eventbridge_event_is_keyed_on_its_id(store: GatewayPersistenceLayer) -> None:
    ran: list[str] = []

    @idempotent(
        persistence_store=store,
        config=IdempotencyConfig(event_key_jmespath=EventKey.EVENTBRIDGE),
    )
    def handler(event: dict[str, Any], context: Any) -> str:
        ran.append(event["detail"]["order"])
        return "done"

    event = {"id": "7bf73129", "source": "orders", "detail-type": "Paid", "detail": {"order": 1}}
    # Redelivered by EventBridge, with another time field: the same event.
    assert handler(event, FakeLambdaContext()) == "done"
    assert handler({**event, "time": "later"}, FakeLambdaContext()) == "done"
    assert ran == [1]


def test_records_of_an_unknown_source_need_a_key_expression(
    store: GatewayPersistenceLayer,
) -> None:
    with pytest.raises(ValueError, match="event_key_jmespath"):
        process_records({"Records": [{"id": 1}]}, None, print, persistence_store=store)


# ---------------------------------------------------------------- when SQS itself fails


def _failing_batch(queue_arn: str) -> dict[str, Any]:
    record = {
        "messageId": "m-1",
        "receiptHandle": "handle-1",
        "body": json.dumps({"order": "o-1"}),
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
    }
    return {"Records": [record]}


def test_a_refused_visibility_change_is_logged_and_the_failure_still_reported(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    queue = create_queue(sqs, f"orders-{uuid.uuid4().hex[:10]}")
    _send(sqs, queue.url, "o-1")
    ledger.fail.add("o-1")
    [message] = Poller(sqs, queue).receive()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    caplog.set_level(logging.WARNING, logger="lambda_adapter")
    response = _invoke(ledger, store, moto_server, backoff=QUICK)(
        Poller(sqs, queue).event([message])
    )
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    incidents = [json.loads(record.getMessage()) for record in caplog.records]
    [refused] = [i for i in incidents if i["incident"] == "sqs_call_failed"]
    assert "HTTP 403" in refused["message"]
    [failed] = [i for i in incidents if i["incident"] == "record_failed"]
    assert failed["visibility_timeout_s"] is None  # not set, so not claimed to be


def test_a_visibility_change_refused_for_one_message_is_logged_for_that_one(
    sqs: Any,
    moto_server: Any,
    store: GatewayPersistenceLayer,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    queue = create_queue(sqs, queue_name)
    _send(sqs, queue.url, "gone", "kept")
    ledger.fail.update({"gone", "kept"})
    poller = Poller(sqs, queue)
    messages = poller.receive()
    by_order = {json.loads(m["Body"])["order"]: m for m in messages}
    # Deleted meanwhile (say, by an operator): its receipt handle is no longer valid.
    sqs.delete_message(QueueUrl=queue.url, ReceiptHandle=by_order["gone"]["ReceiptHandle"])
    caplog.set_level(logging.WARNING, logger="lambda_adapter")
    response = _invoke(ledger, store, moto_server, backoff=SqsBackoff(base_s=10, jitter_s=0))(
        poller.event(messages)
    )
    assert len(response["batchItemFailures"]) == 2
    incidents = [json.loads(record.getMessage()) for record in caplog.records]
    [refused] = [i for i in incidents if i["incident"] == "sqs_call_failed"]
    assert refused["message_id"] == by_order["gone"]["MessageId"]
    assert "ReceiptHandleIsInvalid" in refused["message"]
    timeouts = {
        i["message_id"]: i["visibility_timeout_s"]
        for i in incidents
        if i["incident"] == "record_failed"
    }
    assert timeouts[refused["message_id"]] is None
    assert timeouts[by_order["kept"]["MessageId"]] == 20


def test_a_silent_sqs_endpoint_cannot_make_the_batch_time_out(
    store: GatewayPersistenceLayer,
    ledger: Ledger,
    silent_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    ledger.fail.add("o-1")
    context = FakeLambdaContext(remaining_ms=1500)
    response = process_sqs_batch(
        _failing_batch("arn:aws:sqs:us-east-1:123456789012:orders"),
        context,
        ledger.handler,
        persistence_store=store,
        backoff=QUICK,
        sqs_endpoint_url=silent_server.url,
    )
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    # The SQS call waited for the invocation's budget (which ends reserve_ms early), no more.
    assert context.get_remaining_time_in_millis() > 0
    assert silent_server.connections == 1
