"""Events that carry many records: each record idempotent on its own, failures reported per record.

``process_sqs_batch`` answers an SQS event source mapping with ``batchItemFailures``, backs off
failed messages with ``ChangeMessageVisibility`` and can hand messages to a dead-letter queue;
``process_records`` does the same per-record work for SNS, S3, Kinesis and DynamoDB Streams
events, which have no partial-failure answer and so raise when a record failed. Each record goes
through the same claim, run, complete or release flow as a decorated handler (``_Guard``).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ._config import IdempotencyConfig, LambdaContext
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
)
from ._idempotency import _Guard
from ._incidents import log_incident
from ._persistence import GatewayPersistenceLayer, Invocation
from ._sqs import QueueRef, SqsCallError, SqsClient

__all__ = [
    "DeadLetterHandoff",
    "EventKey",
    "SqsBackoff",
    "process_records",
    "process_sqs_batch",
]

RecordHandler = Callable[[dict[str, Any]], Any]

MAX_VISIBILITY_TIMEOUT_S = 43_200  # SQS's limit: 12 hours
# Time kept, beyond the store's reserve, for the SQS calls at the end of a batch.
_SQS_CALLS_MS = 1000
_MAX_ATTRIBUTES = 10  # SQS's limit of message attributes per message
_MAX_DETAIL_CHARS = 1024
# One client per endpoint and process, so its connections are reused across invocations.
_SQS_CLIENTS: dict[str | None, SqsClient] = {}


class EventKey(StrEnum):
    """JMESPath expressions selecting each event source's own id for an event or a record.

    ``EVENTBRIDGE`` applies to a whole event (``@idempotent``); the others to one record of
    ``process_records`` or ``process_sqs_batch``, which pick them by ``eventSource`` themselves.
    """

    EVENTBRIDGE = "id"
    SQS = "messageId"
    SNS = "Sns.MessageId"
    S3 = "[s3.bucket.name, s3.object.key, s3.object.sequencer]"
    DYNAMODB_STREAMS = "eventID"
    # A Kinesis eventID is "{shard id}:{sequence number}"; the ARN tells streams apart.
    KINESIS = "[eventSourceARN, eventID]"


# Stream records are changes in order: one that failed must not be overtaken by later ones.
_ORDERED_SOURCES = frozenset({"aws:dynamodb", "aws:kinesis"})
_KEYS_BY_SOURCE = {
    "aws:sqs": EventKey.SQS,
    "aws:sns": EventKey.SNS,
    "aws:s3": EventKey.S3,
    "aws:dynamodb": EventKey.DYNAMODB_STREAMS,
    "aws:kinesis": EventKey.KINESIS,
}


class SqsBackoff:
    """How long a failed message stays hidden: ``min(cap, base * 2**receives) + jitter`` seconds.

    ``receives`` is the message's ``ApproximateReceiveCount``; the jitter is uniform over
    ``[0, jitter_s]``, so messages that failed together do not all come back together. The
    result is whole seconds, at most SQS's 43,200.
    """

    def __init__(self, *, base_s: float = 1.0, cap_s: float = 900.0, jitter_s: float = 5.0) -> None:
        if base_s <= 0 or not 0 <= cap_s <= MAX_VISIBILITY_TIMEOUT_S or jitter_s < 0:
            raise ValueError(
                f"base_s must be > 0, cap_s 0..{MAX_VISIBILITY_TIMEOUT_S}, jitter_s >= 0"
            )
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter_s = jitter_s

    def visibility_timeout_s(self, receive_count: int, *, rng: random.Random | None = None) -> int:
        # The exponent is bounded so a huge count cannot overflow a float; the cap applies anyway.
        exponential = self.base_s * 2.0 ** min(max(receive_count, 0), 64)
        delay = min(self.cap_s, exponential) + (rng or random).uniform(0, self.jitter_s)
        return min(MAX_VISIBILITY_TIMEOUT_S, math.ceil(delay))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterHandoff:
    """Send a message that keeps failing to ``queue_arn`` once received ``after_receives`` times.

    The message goes with its body, its attributes (as many as fit SQS's 10) and the failure's
    details as ``idemgate.*`` attributes, and is then reported processed, so Lambda deletes it.
    Messages held by another consumer or failed for want of the gateway are never handed off.
    """

    queue_arn: str
    after_receives: int = 5

    def __post_init__(self) -> None:
        QueueRef.from_arn(self.queue_arn)  # fail at init, not on the first dead letter
        if self.after_receives < 1:
            raise ValueError("after_receives must be at least 1")


@dataclass(slots=True)
class _Failure:
    record: dict[str, Any]
    reason: str
    error: Exception | None = None  # None: the record was not started

    @property
    def message_id(self) -> str:
        return str(self.record["messageId"])

    @property
    def receive_count(self) -> int:
        try:
            return int(self.record.get("attributes", {}).get("ApproximateReceiveCount", 1))
        except (TypeError, ValueError):
            return 1

    @property
    def dead_letter(self) -> bool:
        """Whether the message itself is at fault, rather than its circumstances."""
        transient = (IdempotencyAlreadyInProgressError, IdempotencyUnavailableError)
        return self.error is not None and not isinstance(self.error, transient)


def process_sqs_batch(
    event: Mapping[str, Any],
    context: LambdaContext | None,
    record_handler: RecordHandler,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    backoff: SqsBackoff | None = None,
    dead_letter: DeadLetterHandoff | None = None,
    reserve_ms: int | None = None,
    sqs_endpoint_url: str | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Run ``record_handler(record)`` once per SQS message; return the partial batch response.

    Every record is handled, each idempotently: the key is its ``messageId``, or
    ``config.event_key_jmespath`` applied to the record (e.g. ``powertools_json(body).order_id``).
    A completed record is not run again. A record whose handler raised, that another consumer
    holds, whose payload does not match its key's (logged as the producer's bug), or that the
    gateway could not claim is reported in ``batchItemFailures``. In a FIFO queue, once a message
    fails, the later ones of its group are reported without running. Records are not started with
    less than ``reserve_ms`` left (default: the store's reserve, plus one second for the SQS
    calls when there are any): they are reported instead, rather than the batch timing out.

    With ``backoff``, each failed message is hidden for ``backoff.visibility_timeout_s(its
    receive count)``, and each unstarted one is made visible at once. With ``dead_letter``, a
    failing message received often enough is sent to that queue and reported processed.
    """
    records = _records(event)
    for record in records:
        if not isinstance(record.get("messageId"), str) or not record["messageId"]:
            # An empty identifier would fail the whole batch anyway: say why instead.
            raise ValueError("an SQS record without a messageId: not an SQS event")
    runner = _runner(record_handler, persistence_store, config, EventKey.SQS)
    if reserve_ms is None:
        follow_up = backoff is not None or dead_letter is not None
        reserve_ms = persistence_store.reserve_ms + (_SQS_CALLS_MS if follow_up else 0)
    failures: list[_Failure] = []
    failed_groups: set[str] = set()
    for index, record in enumerate(records):
        if _out_of_time(context, reserve_ms):
            failures += [
                _Failure(rest, "not started: too little time left") for rest in records[index:]
            ]
            break
        group = record.get("attributes", {}).get("MessageGroupId")
        if group is not None and group in failed_groups:
            failures.append(_Failure(record, "not started: an earlier message of its group failed"))
            continue
        try:
            runner(record, context)
        except Exception as error:
            failures.append(_Failure(record, f"{type(error).__name__}: {error}", error))
            if group is not None:
                failed_groups.add(group)
    if failures and (backoff is not None or dead_letter is not None):
        handled = _SqsFollowUp(persistence_store, context, sqs_endpoint_url)
        failures = handled.run(failures, backoff, dead_letter)
    else:
        for failure in failures:
            _log_failure(failure, visibility_timeout_s=None)
    return {"batchItemFailures": [{"itemIdentifier": failure.message_id} for failure in failures]}


def process_records(
    event: Mapping[str, Any],
    context: LambdaContext | None,
    record_handler: RecordHandler,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    reserve_ms: int | None = None,
) -> list[Any]:
    """Run ``record_handler(record)`` once per record of an SNS, S3, Kinesis or DynamoDB event.

    The key is the source's own id (``EventKey``, picked by the records' ``eventSource``), or
    ``config.event_key_jmespath`` applied to each record. Completed records return their stored
    result without running. Returns the results in order. If any record failed, or was not
    started for lack of time (less than ``reserve_ms`` left, by default the store's reserve),
    raises an ``ExceptionGroup`` of the failures, so the source retries the event and the retry
    runs only what did not complete. SNS and S3 records are all tried first; Kinesis and
    DynamoDB Streams records stop at the first failure, so no change overtakes an earlier one.
    """
    records = _records(event)
    if not records:
        return []
    source = str(records[0].get("eventSource") or records[0].get("EventSource"))
    runner = _runner(record_handler, persistence_store, config, _KEYS_BY_SOURCE.get(source))
    if reserve_ms is None:
        reserve_ms = persistence_store.reserve_ms
    results: list[Any] = []
    errors: list[Exception] = []
    for index, record in enumerate(records):
        if _out_of_time(context, reserve_ms):
            errors.append(
                TimeoutError(f"{len(records) - index} records not started: too little time left")
            )
            break
        try:
            results.append(runner(record, context))
        except Exception as error:
            errors.append(error)
            results.append(None)
            _log_failure(_Failure(record, f"{type(error).__name__}: {error}", error), None)
            if source in _ORDERED_SOURCES:
                break
    if errors:
        raise ExceptionGroup(f"{len(errors)} of {len(records)} records failed", errors)
    return results


def _records(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError("not an event with Records: expected {'Records': [{...}, ...]}")
    return records


def _out_of_time(context: LambdaContext | None, reserve_ms: int) -> bool:
    return context is not None and context.get_remaining_time_in_millis() < reserve_ms


def _runner(
    record_handler: RecordHandler,
    store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None,
    default_key: str | None,
) -> Callable[[dict[str, Any], LambdaContext | None], Any]:
    guard = _guard(record_handler, store, config, default_key)

    def run(record: dict[str, Any], context: LambdaContext | None) -> Any:
        return guard.run(record, record, context, lambda: record_handler(record))

    return run


@functools.lru_cache(maxsize=32)
def _guard(
    record_handler: RecordHandler,
    store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None,
    default_key: str | None,
) -> _Guard:
    """One guard per handler and settings, kept across invocations for its local cache."""
    config = config or IdempotencyConfig()
    if not config.event_key_jmespath:  # "" (Powertools' default) or None: no expression
        if default_key is None:
            raise ValueError(
                "unknown eventSource: set config.event_key_jmespath to pick each record's id"
            )
        # The whole record would change with every delivery (receipt handle, receive count).
        keyed = copy.copy(config)
        keyed.event_key_jmespath = default_key
        keyed._event_key = IdempotencyConfig(event_key_jmespath=default_key)._event_key
        config = keyed
    return _Guard(record_handler, store, config, key_prefix=None)


class _SqsFollowUp:
    """The SQS calls after a batch: dead-letter hand-offs, then visibility changes."""

    def __init__(
        self,
        store: GatewayPersistenceLayer,
        context: LambdaContext | None,
        endpoint_url: str | None,
    ) -> None:
        self._invocation = Invocation(context, reserve_ms=store.reserve_ms, default_lease_ms=1)
        if endpoint_url not in _SQS_CLIENTS:
            _SQS_CLIENTS[endpoint_url] = SqsClient(
                endpoint_url=endpoint_url, max_call_ms=store.max_call_ms
            )
        self._sqs = _SQS_CLIENTS[endpoint_url]

    def run(
        self,
        failures: list[_Failure],
        backoff: SqsBackoff | None,
        dead_letter: DeadLetterHandoff | None,
    ) -> list[_Failure]:
        """The failures still to report: those not handed off to the dead-letter queue."""
        remaining: list[_Failure] = []
        for failure in failures:
            if (
                dead_letter is not None
                and failure.dead_letter
                and failure.receive_count >= dead_letter.after_receives
                and self._hand_off(failure, dead_letter)
            ):
                continue
            remaining.append(failure)
        timeouts: dict[str, int] = {}
        if backoff is not None:
            for failure in remaining:
                # A record never started did not fail: it may run again at once.
                started = failure.error is not None
                timeouts[failure.message_id] = (
                    backoff.visibility_timeout_s(failure.receive_count) if started else 0
                )
            self._change_visibility(remaining, timeouts)
        for failure in remaining:
            _log_failure(failure, timeouts.get(failure.message_id))
        return remaining

    def _hand_off(self, failure: _Failure, dead_letter: DeadLetterHandoff) -> bool:
        record = failure.record
        details = {
            "idemgate.failure": failure.reason[:_MAX_DETAIL_CHARS],
            "idemgate.source-message-id": failure.message_id,
            "idemgate.source-queue-arn": str(record.get("eventSourceARN", "")),
        }
        attributes: dict[str, dict[str, Any]] = {
            name: {"DataType": "String", "StringValue": value} for name, value in details.items()
        }
        attributes["idemgate.receive-count"] = {
            "DataType": "Number",
            "StringValue": str(failure.receive_count),
        }
        for name, value in (record.get("messageAttributes") or {}).items():
            if len(attributes) < _MAX_ATTRIBUTES and name not in attributes:
                attributes[name] = _api_attribute(value)
        try:
            self._sqs.send_message(
                QueueRef.from_arn(dead_letter.queue_arn),
                body=str(record.get("body", "")),
                attributes=attributes,
                group_id=record.get("attributes", {}).get("MessageGroupId"),
                deduplication_id=failure.message_id,
                invocation=self._invocation,
            )
        except SqsCallError as error:
            _log_sqs_error(error, failure.message_id)
            return False
        log_incident(
            logging.WARNING,
            "record_dead_lettered",
            f"sent to {dead_letter.queue_arn} after {failure.receive_count} receives: "
            f"{failure.reason}",
            message_id=failure.message_id,
        )
        return True

    def _change_visibility(self, failures: list[_Failure], timeouts: dict[str, int]) -> None:
        by_queue: dict[str, list[tuple[str, int]]] = {}
        for failure in failures:
            if failure.message_id in timeouts:
                arn = str(failure.record.get("eventSourceARN", ""))
                handle = str(failure.record.get("receiptHandle", ""))
                by_queue.setdefault(arn, []).append((handle, timeouts[failure.message_id]))
        for arn, entries in by_queue.items():
            try:
                refused = self._sqs.change_visibility(
                    QueueRef.from_arn(arn), entries, self._invocation
                )
            except SqsCallError as error:
                refused = {handle: str(error) for handle, _ in entries}
            for failure in failures:
                reason = refused.get(str(failure.record.get("receiptHandle", "")))
                if reason is not None:
                    timeouts.pop(failure.message_id, None)
                    _log_sqs_error(SqsCallError(reason), failure.message_id)


def _api_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """A message attribute as Lambda delivers it, in the shape SendMessage takes."""
    attribute: dict[str, Any] = {"DataType": value.get("dataType", "String")}
    if value.get("binaryValue") is not None:
        attribute["BinaryValue"] = value["binaryValue"]
    else:
        attribute["StringValue"] = str(value.get("stringValue", ""))
    return attribute


def _log_failure(failure: _Failure, visibility_timeout_s: int | None) -> None:
    details = {
        "message_id": failure.record.get("messageId"),
        "visibility_timeout_s": visibility_timeout_s,
    }
    if isinstance(failure.error, IdempotencyValidationError):
        log_incident(
            logging.ERROR,
            "fingerprint_mismatch",
            "a producer sent a different payload under a key already used: a client bug; "
            f"{failure.reason}",
            **details,
        )
    else:
        log_incident(logging.WARNING, "record_failed", failure.reason, **details)


def _log_sqs_error(error: SqsCallError, message_id: str) -> None:
    log_incident(
        logging.WARNING,
        "sqs_call_failed",
        f"{error} (the message comes back after the queue's visibility timeout)",
        message_id=message_id,
    )
