"""GatewayPersistenceLayer: the gateway's records API, bounded by the invocation's deadline.

DynamoDBPersistenceLayer is the same store under Powertools' name, for one-line migrations.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Literal

from ._config import LambdaContext
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
    TimeoutException,
    TransportError,
    UnsupportedProtocol,
)
from ._iam import IamAuthorization
from ._incidents import Metric, emit_metric, log_incident
from ._transport import (
    DeadlineTransport,
    call_deadline,
    default_ssl_context,
    own_transport,
    split_url,
    through_httpx,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Claimed",
    "DynamoDBPersistenceLayer",
    "GatewayPersistenceLayer",
    "Invocation",
    "Replayed",
    "backoff",
    "durable_lease_token",
    "new_lease_token",
]

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 1.0
_MAX_LEASE_MS = 900_000  # the gateway's limit, and Lambda's: 15 minutes
_MAX_WAIT_MS = 50_000  # the gateway's limit on one waiting claim
_DEFAULT_MAX_RESULT_BYTES = 262_144  # the gateway's default limit
# Keys that httpx would put in a URL path as they are: no character escaped, no dot segment.
_PLAIN_KEY = re.compile(r"(?!\.\.?$)[A-Za-z0-9._~:@=+-]+")


def backoff(attempt: int) -> float:
    """Full jitter: uniform over [0, min(cap, base * 2**attempt)] seconds."""
    return random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))


def new_lease_token() -> str:
    """A claim's own lease token: 144 random bits, base64url, as the gateway's own tokens."""
    return secrets.token_urlsafe(18)


def durable_lease_token(execution_arn: str, namespace: str, key: str) -> str:
    """The lease token every invocation of one durable execution proposes for ``key``.

    Derived, not random, so that a replay's claim finds its own execution's earlier claim and is
    answered 201 with that lease. SHA-256 of the execution ARN, namespace and key (base64url, 43
    characters): another execution, or another key, proposes another token. No secret is mixed
    in: only principals allowed on the namespace ever present a token for it (see
    docs/lambda-adapter.md, "Lambda durable functions").
    """
    identity = json.dumps(["idemgate-durable-lease-v1", execution_arn, namespace, key])
    digest = hashlib.sha256(identity.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Invocation:
    """What one invocation knows: who it is, how long it may wait, how long to lease.

    Its budget for gateway calls ends ``reserve_ms`` before Lambda's deadline, leaving time to
    recover; with no Lambda context it is unbounded (each call is still capped).
    """

    __slots__ = ("deadline", "function_name", "lease_ms", "remaining_ms", "request_id", "started")

    def __init__(
        self, context: LambdaContext | None, *, reserve_ms: int, default_lease_ms: int
    ) -> None:
        self.started = time.monotonic()
        if context is None:
            self.request_id: str | None = None
            self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
            self.deadline: float | None = None
            self.remaining_ms: int | None = None
            self.lease_ms = default_lease_ms
        else:
            self.remaining_ms = remaining_ms = context.get_remaining_time_in_millis()
            self.request_id = context.aws_request_id
            self.function_name = context.function_name
            self.deadline = self.started + (remaining_ms - reserve_ms) / 1000
            # The lease ends when Lambda would end the invocation, so a retry after a crash or
            # a timeout can take over at once.
            self.lease_ms = min(max(remaining_ms, 1), _MAX_LEASE_MS)

    def time_left(self) -> float:
        """Seconds left in the budget."""
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def share(self, fraction: float) -> Invocation:
        """The same invocation, its budget cut to ``fraction`` of the time it started with."""
        if self.remaining_ms is None or self.deadline is None:
            return self
        part = copy.copy(self)
        part.deadline = min(self.deadline, self.started + fraction * self.remaining_ms / 1000)
        return part


@dataclass(frozen=True, slots=True)
class Claimed:
    lease_token: str


@dataclass(frozen=True, slots=True)
class Replayed:
    result: Any
    expires_at_s: int | None = None  # None from a gateway that does not say


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]  # empty when the answer was not a JSON object
    headers: Mapping[str, str]  # looked up by lower-case name

    @property
    def code(self) -> str:
        return str(self.body.get("code") or f"HTTP_{self.status}")

    @property
    def gateway_request_id(self) -> str | None:
        request_id: str | None = self.headers.get("x-request-id")
        return request_id


class GatewayPersistenceLayer:
    """Where idempotency records live: an idemgate gateway, reached over HTTP.

    Create one per process, outside the handler, so its connections are reused across
    invocations. ``url``, ``namespace`` and ``token`` default to the environment variables
    ``IDEMGATE_URL``, ``IDEMGATE_NAMESPACE`` (else ``AWS_LAMBDA_FUNCTION_NAME``) and
    ``IDEMGATE_TOKEN``. ``auth="iam"`` proves the function's execution role instead of sending
    a token (``server_id`` defaults to ``IDEMGATE_AUTH_SERVER_ID``; see docs/lambda-adapter.md).
    ``metrics_namespace`` turns on CloudWatch EMF metric lines.
    ``max_result_bytes`` is the gateway's limit on a result (compact UTF-8 JSON): a larger one
    is not sent, and its record completes with a "result not stored" marker instead.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        namespace: str | None = None,
        token: str | None = None,
        auth: Literal["token", "iam"] = "token",
        server_id: str | None = None,
        reserve_ms: int = 500,
        max_call_ms: int = 3000,
        max_attempts: int = 3,
        transport: httpx.BaseTransport | DeadlineTransport | None = None,
        metrics_namespace: str | None = None,
        max_result_bytes: int = _DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        url = url or os.environ.get("IDEMGATE_URL")
        namespace = (
            namespace
            or os.environ.get("IDEMGATE_NAMESPACE")
            or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        )
        token = token or os.environ.get("IDEMGATE_TOKEN")
        if not url:
            raise ValueError("the gateway URL is missing: pass url= or set IDEMGATE_URL")
        try:
            origin, authority, path = split_url(url)
        except UnsupportedProtocol:
            raise ValueError(
                f"the gateway URL must be http or https with a host, not {url!r}"
            ) from None
        scheme = origin[0].decode()
        if namespace is None or not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace {namespace!r} must match {_NAMESPACE.pattern}: pass namespace= "
                "or set IDEMGATE_NAMESPACE"
            )
        if reserve_ms < 0 or max_call_ms < 1 or max_attempts < 1 or max_result_bytes < 1:
            raise ValueError(
                "reserve_ms must be >= 0, max_call_ms, max_attempts and max_result_bytes >= 1"
            )
        self.url = f"{scheme}://{authority}{path}".rstrip("/")
        self.namespace = namespace
        self.reserve_ms = reserve_ms
        self.max_call_ms = max_call_ms
        self.max_attempts = max_attempts
        self.metrics_namespace = metrics_namespace
        self.max_result_bytes = max_result_bytes
        self._records_url = f"{self.url}/v1/records/{namespace}/"
        headers = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode("ascii")))
        self._headers = headers
        self._header_lines = _header_lines(headers)
        self._iam: IamAuthorization | None = None
        if auth == "iam":
            server_id = server_id or os.environ.get("IDEMGATE_AUTH_SERVER_ID") or ""
            self._iam = IamAuthorization(server_id=server_id)
        elif auth != "token":
            raise ValueError(f"auth must be 'token' or 'iam', not {auth!r}")
        if transport is None:
            # Plain-HTTP gateways (the usual in-VPC case) never pay for an SSL context.
            ssl_context = default_ssl_context() if scheme == "https" else None
            transport = DeadlineTransport(ssl_context=ssl_context)
        self._transport = transport
        self._direct = own_transport(transport)
        # What every request to the records API starts with, as httpx would write it; the
        # default transport then gets each request encoded, without building httpx objects.
        self._origin = origin
        self._host_line = b"Host: " + authority.encode() + b"\r\n"
        self._records_path = split_url(self._records_url)[2].encode()

    def claim(
        self,
        key: str,
        *,
        fingerprint: str | None,
        lease_ms: int,
        ttl_s: int,
        invocation: Invocation,
        wait_ms: int = 0,
        lease_token: str | None = None,
    ) -> Claimed | Replayed:
        """Claim ``key``; with ``wait_ms``, the gateway waits that long for a holder to finish.

        The wait is cut so that one more call (``max_call_ms``) still fits in the budget after it.
        ``lease_token`` (default: a new one) is sent with every try of this claim, so a try
        whose answer was lost (a 503, a timeout) but whose write landed is found again as ours.
        """
        if wait_ms:
            left_ms = invocation.time_left() * 1000 - self.max_call_ms
            wait_ms = max(int(min(wait_ms, _MAX_WAIT_MS, left_ms)), 0)
        # As json.dumps would write it (compact), without its encoder's machinery per call.
        body = b'{"fingerprint":%s,"lease_ms":%d,"ttl_s":%d,"lease_token":%s%s}' % (
            _json_string(fingerprint),
            lease_ms,
            ttl_s,
            _json_string(new_lease_token() if lease_token is None else lease_token),
            b',"wait_ms":%d' % wait_ms if wait_ms else b"",
        )
        answer = self._post(key, "claim", body, invocation, wait_ms=wait_ms)
        if answer.status == 201 and "lease_token" in answer.body:
            return Claimed(answer.body["lease_token"])
        if answer.status == 200 and "result" in answer.body:
            expires_at = answer.body.get("expires_at")
            return Replayed(
                answer.body["result"], expires_at // 1000 if isinstance(expires_at, int) else None
            )
        ids = {"request_id": invocation.request_id, "gateway_request_id": answer.gateway_request_id}
        if answer.status == 409 and answer.code == "IN_PROGRESS":
            retry_after = int(answer.headers.get("retry-after", "1"))
            raise IdempotencyAlreadyInProgressError(
                f"{key} is being processed by another invocation",
                retry_after=retry_after,
                **ids,
            )
        if answer.status == 422:
            raise IdempotencyValidationError(
                f"{key} was first seen with a different payload", **ids
            )
        raise _refused(key, "claim", answer, invocation)

    def complete(
        self,
        key: str,
        *,
        lease_token: str,
        result_json: bytes,
        invocation: Invocation,
    ) -> int | None:
        """Store ``result_json`` (UTF-8 JSON); the record's expiry, epoch seconds, if told."""
        # The result is already JSON (the local cache keeps the same bytes).
        body = b'{"lease_token":%s,"result":%s}' % (_json_string(lease_token), result_json)
        answer = self._post(key, "complete", body, invocation)
        if answer.status != 200:
            raise _refused(key, "complete", answer, invocation)
        expires_at = answer.body.get("expires_at")
        return expires_at // 1000 if isinstance(expires_at, int) else None

    def release(
        self,
        key: str,
        *,
        lease_token: str,
        invocation: Invocation,
    ) -> None:
        body = b'{"lease_token":%s}' % _json_string(lease_token)
        answer = self._post(key, "release", body, invocation)
        if answer.status != 204:
            raise _refused(key, "release", answer, invocation)

    def _post(
        self, key: str, action: str, body: bytes, invocation: Invocation, *, wait_ms: int = 0
    ) -> _Answer:
        """POST with retries of transient failures; every wait ends within ``budget``.

        Each call may take ``max_call_ms``, plus ``wait_ms`` for a claim the gateway holds.
        """
        url = f"{self._records_url}{key}/{action}"
        failure: str = "no time was left in the invocation's budget"
        cause: TransportError | None = None
        gateway_request_id: str | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                pause = backoff(attempt - 1)
                if pause >= invocation.time_left():
                    break
                time.sleep(pause)
            timeout = min((self.max_call_ms + wait_ms) / 1000, invocation.time_left())
            if timeout <= 0:
                break
            try:
                answer = self._send(key, action, body, timeout)
            except TransportError as exc:
                cause, failure, gateway_request_id = exc, f"{type(exc).__name__}: {exc}", None
                if isinstance(exc, TimeoutException):
                    emit_metric(
                        self.metrics_namespace, invocation.function_name, Metric.GATEWAY_TIMEOUT
                    )
            else:
                if answer.status not in _RETRYABLE_STATUSES and answer.status < 500:
                    return answer
                cause, failure = None, f"HTTP {answer.status} {answer.code}"
                gateway_request_id = answer.gateway_request_id
                if answer.status not in _RETRYABLE_STATUSES:
                    break
            log_incident(
                logging.WARNING,
                "gateway_call_failed",
                failure,
                url=url,
                timeout_ms=round(timeout * 1000),
                attempt=attempt + 1,
                key=key,
                request_id=invocation.request_id,
                gateway_request_id=gateway_request_id,
            )
        raise IdempotencyUnavailableError(
            f"the gateway did not answer {action} in time: {failure}",
            request_id=invocation.request_id,
            gateway_request_id=gateway_request_id,
        ) from cause

    def _send(self, key: str, action: str, body: bytes, timeout: float) -> _Answer:
        if self._iam is None:
            headers, header_lines = self._headers, self._header_lines
        else:
            headers = self._iam.headers(self._headers)
            header_lines = _header_lines(headers)
        with call_deadline(time.monotonic() + timeout):
            transport = self._direct
            if transport is not None and header_lines is not None and _PLAIN_KEY.fullmatch(key):
                return self._exchange(transport, f"{key}/{action}", header_lines, body, timeout)
            status, fields, content = through_httpx(
                self._transport,
                f"{self._records_url}{key}/{action}",
                headers=headers,
                body=body,
                timeout=timeout,
            )
        return _Answer(status, _json_object(content), fields)

    def _exchange(
        self,
        transport: DeadlineTransport,
        raw_path: str,
        header_lines: bytes,
        body: bytes,
        timeout: float,
    ) -> _Answer:
        """The request ``_send`` would make, written out directly for the default transport."""
        message = b"POST %s%s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
            self._records_path,
            raw_path.encode("ascii"),
            self._host_line,
            header_lines,
            len(body),
            body,
        )
        timeouts = {"connect": timeout, "read": timeout, "write": timeout}
        head, content = transport.exchange(
            self._origin, message, keep_alive=True, timeouts=timeouts
        )
        return _Answer(head.status, _json_object(content), head.headers)


def _header_lines(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The header fields as the request's lines; None if a line break is in any of them (the
    transport refuses those: it stays the one to say so)."""
    if any(b"\r" in value or b"\n" in value for _, value in headers):
        return None
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


def _json_string(value: str | None) -> bytes:
    """``value`` as ``json.dumps`` writes it (``null`` for None), as bytes."""
    return b"null" if value is None else encode_basestring_ascii(value).encode()


_DECODER = json.JSONDecoder()


def _json_object(content: bytes) -> dict[str, Any]:
    """The gateway's JSON object (UTF-8, as RFC 8259 has it); {} for anything else."""
    try:
        body = _DECODER.decode(content.decode())
    except ValueError:  # e.g. a load balancer's HTML error page; UnicodeDecodeError is one too
        return {}
    return body if isinstance(body, dict) else {}


def _refused(
    key: str, action: str, answer: _Answer, invocation: Invocation
) -> IdempotencyPersistenceLayerError:
    detail = answer.body.get("detail")
    return IdempotencyPersistenceLayerError(
        f"the gateway refused {action} of {key}: {answer.code}" + (f": {detail}" if detail else ""),
        code=answer.code,
        request_id=invocation.request_id,
        gateway_request_id=answer.gateway_request_id,
    )


class DynamoDBPersistenceLayer(GatewayPersistenceLayer):
    """Powertools' store name, kept so a migration changes only the import lines.

    The records live in the gateway at ``IDEMGATE_URL``, under the namespace ``table_name``
    (unless ``IDEMGATE_NAMESPACE`` is set). Powertools' DynamoDB-specific arguments (attribute
    names, sort key, boto3 session, client and config) describe a table the gateway owns here:
    they are accepted and have no effect. Keyword arguments of ``GatewayPersistenceLayer``
    (``url``, ``token``, ``reserve_ms``, ...) may be passed too.
    """

    def __init__(  # noqa: PLR0917 - positional, in Powertools' order, for drop-in stores
        self,
        table_name: str,
        key_attr: str = "id",
        static_pk_value: str | None = None,
        sort_key_attr: str | None = None,
        expiry_attr: str = "expiration",
        in_progress_expiry_attr: str = "in_progress_expiration",
        status_attr: str = "status",
        data_attr: str = "data",
        validation_key_attr: str = "validation",
        boto_config: Any = None,
        boto3_session: Any = None,
        boto3_client: Any = None,
        **options: Any,
    ) -> None:
        options.setdefault("namespace", os.environ.get("IDEMGATE_NAMESPACE") or table_name)
        super().__init__(**options)
        self.table_name = table_name
