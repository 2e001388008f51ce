"""A stand-in for Lambda's SQS poller, against a real SQS-protocol server (moto's, on loopback).

It does what an event source mapping with ``ReportBatchItemFailures`` does: receive up to ten
messages with all their attributes, build the event Lambda would deliver, invoke the function,
and delete the messages the response does not name as failed (all of them stay if the function
raised or answered something invalid).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Invoke = Callable[[dict[str, Any]], Any]


@dataclass
class Queue:
    url: str
    arn: str


def create_queue(sqs: Any, name: str, **attributes: str) -> Queue:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return Queue(url=url, arn=arn)


def create_queue_with_redrive(
    sqs: Any, name: str, *, max_receive_count: int, fifo: bool = False
) -> tuple[Queue, Queue]:
    """A queue and its dead-letter queue, the latter named in the former's redrive policy."""
    suffix = ".fifo" if fifo else ""
    fifo_attributes = {"FifoQueue": "true"} if fifo else {}
    dead_letters = create_queue(sqs, f"{name}-dlq{suffix}", **fifo_attributes)
    redrive = {"deadLetterTargetArn": dead_letters.arn, "maxReceiveCount": max_receive_count}
    queue = create_queue(
        sqs, f"{name}{suffix}", RedrivePolicy=json.dumps(redrive), **fifo_attributes
    )
    return queue, dead_letters


def lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One ReceiveMessage message in the shape Lambda gives the function."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        binary = value.get("BinaryValue")
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if binary is not None else None,
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message["Attributes"],
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class Poller:
    """Receives batches from ``queue`` and hands them to ``invoke`` as Lambda would."""

    sqs: Any
    queue: Queue
    region: str = "us-east-1"
    visibility_timeout_s: int = 30
    responses: list[Any] = field(default_factory=list)

    def receive(self, max_messages: int = 10) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(
            QueueUrl=self.queue.url,
            MaxNumberOfMessages=max_messages,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            VisibilityTimeout=self.visibility_timeout_s,
        )
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages

    def event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"Records": [lambda_record(m, self.queue.arn, self.region) for m in messages]}

    def poll_once(self, invoke: Invoke, max_messages: int = 10) -> list[dict[str, Any]]:
        """One receive and invocation; returns the messages received (none: nothing visible)."""
        messages = self.receive(max_messages)
        if messages:
            self.deliver(messages, invoke)
        return messages

    def deliver(self, messages: list[dict[str, Any]], invoke: Invoke) -> Any:
        try:
            response = invoke(self.event(messages))
        except Exception as error:  # the whole batch comes back
            self.responses.append(error)
            return error
        self.responses.append(response)
        failed = failed_ids(response, messages)
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(
                    QueueUrl=self.queue.url, ReceiptHandle=message["ReceiptHandle"]
                )
        return response

    def drain(self, invoke: Invoke, *, until: Callable[[], bool], timeout_s: float = 30) -> None:
        """Poll until ``until()`` holds, failing the test if it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "the queue did not drain in time"
            if not self.poll_once(invoke):
                time.sleep(0.1)


def failed_ids(response: Any, messages: list[dict[str, Any]]) -> set[str]:
    """The message IDs Lambda would keep: all of them unless the response is a valid answer."""
    every = {message["MessageId"] for message in messages}
    if not isinstance(response, dict) or not isinstance(response.get("batchItemFailures"), list):
        return set() if response is None else every
    failed = set()
    for item in response["batchItemFailures"]:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if identifier not in every:  # empty, or not in the batch: the whole batch fails
            return every
        failed.add(identifier)
    return failed


def queue_size(sqs: Any, queue: Queue) -> int:
    """Messages in the queue, visible or not."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def visible_at_ms(endpoint_url: str, message_id: str) -> float:
    """When the server will show the message again (epoch ms), read from moto's model state.

    moto's state dump lists every tracked Message object; ReceiveMessage hands out copies, which
    are tracked too, after the queue's own message: the first one with the ID is the live one.
    """
    with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=10) as answer:
        state = json.load(answer)
    for message in state["sqs"]["Message"]:
        if message["id"] == message_id:
            return float(message["visible_at"])
    raise AssertionError(f"message {message_id} is not on the server")
