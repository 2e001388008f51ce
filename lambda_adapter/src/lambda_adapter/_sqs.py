"""The two SQS calls the batch functions make, signed here and bounded by the invocation's deadline.

``ChangeMessageVisibilityBatch`` sets failed messages' backoff and ``SendMessage`` hands a
message to a dead-letter queue. Both use SQS's JSON protocol (``x-amz-target``,
``application/x-amz-json-1.0``), which the AWS SDKs use too; requests go through the adapter's
own transport and are signed with ``_sigv4``, so no AWS SDK is loaded. Errors of any kind become
``SqsCallError``: its callers log them and carry on, since a message whose visibility could not
be changed still comes back, only later.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exceptions import TransportError
from ._persistence import Invocation
from ._sigv4 import AwsCredentials, sign_headers
from ._transport import DeadlineTransport, call_deadline, post

if TYPE_CHECKING:
    import httpx

__all__ = ["QueueRef", "SqsCallError", "SqsClient"]

_QUEUE_ARN = re.compile(
    r"arn:aws[a-z-]*:sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_-]{1,80}(?:\.fifo)?)"
)
_CONTENT_TYPE = "application/x-amz-json-1.0"
_MAX_BATCH_ENTRIES = 10  # SQS's limit per ChangeMessageVisibilityBatch


class SqsCallError(Exception):
    """An SQS call that failed, was refused, or had no time or credentials to be made."""


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue named by its ARN: the region to sign for and the path of its URL."""

    region: str
    account: str
    name: str

    @classmethod
    def from_arn(cls, arn: str) -> QueueRef:
        match = _QUEUE_ARN.fullmatch(arn)
        if match is None:
            raise SqsCallError(f"{arn!r} is not an SQS queue ARN")
        region, account, name = match.groups()
        return cls(region=region, account=account, name=name)


class SqsClient:
    """Signed SQS calls through one keep-alive transport; create one per process.

    The endpoint is ``endpoint_url``, else ``AWS_ENDPOINT_URL_SQS``, else ``AWS_ENDPOINT_URL``,
    else ``https://sqs.{region}.amazonaws.com``. Credentials are read from the environment at
    each call (Lambda sets them for the execution role), unless given.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        credentials: AwsCredentials | None = None,
        max_call_ms: int = 3000,
        transport: httpx.BaseTransport | DeadlineTransport | None = None,
    ) -> None:
        self._endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_SQS")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self._credentials = credentials
        self.max_call_ms = max_call_ms
        self._transport = transport or DeadlineTransport()

    def endpoint(self, queue: QueueRef) -> str:
        return (self._endpoint_url or f"https://sqs.{queue.region}.amazonaws.com").rstrip("/")

    def queue_url(self, queue: QueueRef) -> str:
        return f"{self.endpoint(queue)}/{queue.account}/{queue.name}"

    def change_visibility(
        self, queue: QueueRef, timeouts: Sequence[tuple[str, int]], invocation: Invocation
    ) -> dict[str, str]:
        """Set each ``(receipt handle, seconds)``; returns the refusals by receipt handle."""
        refused: dict[str, str] = {}
        for start in range(0, len(timeouts), _MAX_BATCH_ENTRIES):
            chunk = timeouts[start : start + _MAX_BATCH_ENTRIES]
            entries = [
                {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                for index, (handle, seconds) in enumerate(chunk)
            ]
            answer = self._call(
                queue,
                "ChangeMessageVisibilityBatch",
                {"QueueUrl": self.queue_url(queue), "Entries": entries},
                invocation,
            )
            for failed in answer.get("Failed") or []:
                handle = chunk[int(failed["Id"])][0]
                refused[handle] = f"{failed.get('Code')}: {failed.get('Message')}"
        return refused

    def send_message(
        self,
        queue: QueueRef,
        *,
        body: str,
        attributes: Mapping[str, Mapping[str, Any]],
        group_id: str | None,
        deduplication_id: str,
        invocation: Invocation,
    ) -> str:
        """Send ``body`` with message ``attributes`` (SQS API shape); returns its message ID."""
        request: dict[str, Any] = {
            "QueueUrl": self.queue_url(queue),
            "MessageBody": body,
            "MessageAttributes": dict(attributes),
        }
        if queue.name.endswith(".fifo"):
            request["MessageGroupId"] = group_id or "dead-letters"
            request["MessageDeduplicationId"] = deduplication_id
        answer = self._call(queue, "SendMessage", request, invocation)
        return str(answer.get("MessageId", ""))

    def _call(
        self, queue: QueueRef, action: str, request: dict[str, Any], invocation: Invocation
    ) -> dict[str, Any]:
        credentials = self._credentials or AwsCredentials.from_environment()
        if credentials is None:
            raise SqsCallError("no AWS credentials in the environment to sign SQS calls with")
        timeout = min(self.max_call_ms / 1000, invocation.time_left())
        if timeout <= 0:
            raise SqsCallError(f"no time was left in the invocation's budget for {action}")
        url = self.endpoint(queue) + "/"
        body = json.dumps(request, separators=(",", ":")).encode()
        headers = sign_headers(
            method="POST",
            url=url,
            headers={"content-type": _CONTENT_TYPE, "x-amz-target": f"AmazonSQS.{action}"},
            body=body,
            credentials=credentials,
            region=queue.region,
            service="sqs",
        )
        fields = [(name.encode(), value.encode()) for name, value in headers.items()]
        try:
            with call_deadline(time.monotonic() + timeout):
                status, _, content = post(
                    self._transport, url, headers=fields, body=body, timeout=timeout
                )
        except TransportError as exc:
            raise SqsCallError(f"{action} failed: {type(exc).__name__}: {exc}") from exc
        try:
            answer = json.loads(content) if content else {}
        except ValueError:  # e.g. an XML error from a proxy or an older endpoint
            answer = {"message": content[:200].decode(errors="replace")}
        if not isinstance(answer, dict):
            answer = {}
        if status != 200:
            kind = str(answer.get("__type") or f"HTTP {status}").rpartition("#")[2]
            message = answer.get("message") or answer.get("Message") or ""
            raise SqsCallError(f"SQS refused {action}: {kind}: {message}".rstrip(": "))
        return answer
