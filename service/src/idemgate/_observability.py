"""Request IDs, JSON log lines and Prometheus metrics, applied to every request at one place."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idemgate._exceptions import PayloadTooLargeError

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestContextMiddleware",
    "configure_logging",
    "current_request_id",
    "metrics_text",
    "record_storage_error",
]

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,128}")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_REQUESTS = Counter(
    "idemgate_requests_total",
    "Requests answered, by route template, method, HTTP status and outcome.",
    ["route", "method", "status", "outcome"],
)
_LATENCY = Histogram(
    "idemgate_request_duration_seconds",
    "Time from the request's arrival to its answer, by route template.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
_STORAGE_ERRORS = Counter(
    "idemgate_storage_errors_total",
    "Storage operations that failed and became 503 STORAGE_UNAVAILABLE, by backend.",
    ["backend"],
)

# nginx's status for a request whose client closed the connection before the answer.
_CLIENT_CLOSED_REQUEST = 499
_CONNECTION_CLOSE = (b"connection", b"close")
_BODY_TOO_LARGE = "The request body is larger than any result this gateway stores."

access_log = logging.getLogger("idemgate.access")


def current_request_id() -> str:
    return _request_id.get()


def record_storage_error(backend: str) -> None:
    _STORAGE_ERRORS.labels(backend).inc()


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of all workers when they share a dir."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """One JSON object per line on stderr, each carrying the request ID it belongs to."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: str | None = getattr(route, "path_format", None)
    return path or "unmatched"


class RequestContextMiddleware:
    """Gives each request an ID (the caller's, if sane), then counts, times and logs it.

    It also turns an unexpected exception into ``internal_error`` (a 500 problem that still
    carries the request ID), and bounds bodies to ``max_body_bytes``: one declared larger is
    refused before it is read, and one sent in chunks is refused as soon as it grows past the
    limit. An answer given before its request's body was read to the end closes the
    connection, so the gateway stops reading the rest. A client that disconnects before its
    answer is counted with status 499 and outcome ``CLIENT_DISCONNECTED``, not as an error.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        log_requests: bool,
        max_body_bytes: int,
        internal_error: Callable[[], Response],
        body_too_large: Callable[[], Response],
    ) -> None:
        self.app = app
        self.log_requests = log_requests
        self.max_body_bytes = max_body_bytes
        self.internal_error = internal_error
        self.body_too_large = body_too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        status = 0
        started = time.perf_counter()
        declared, chunked = self._body_framing(scope)
        body_pending = chunked or declared > 0
        received = 0

        async def bounded_receive() -> Message:
            nonlocal body_pending, received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_pending = message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise PayloadTooLargeError(_BODY_TOO_LARGE)
            else:
                body_pending = False
            return message

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), header]
                if body_pending:
                    headers.append(_CONNECTION_CLOSE)
                message["headers"] = headers
            await send(message)

        token = _request_id.set(request_id)
        try:
            if declared > self.max_body_bytes:
                scope["state"]["outcome"] = "PAYLOAD_TOO_LARGE"
                await self.body_too_large()(scope, bounded_receive, send_with_request_id)
            else:
                await self.app(scope, bounded_receive, send_with_request_id)
        except ClientDisconnect:
            scope["state"]["outcome"] = "CLIENT_DISCONNECTED"
            status = _CLIENT_CLOSED_REQUEST
        except Exception:
            logging.getLogger("idemgate").exception("unhandled error")
            scope["state"]["outcome"] = "INTERNAL"
            if status == 0:
                await self.internal_error()(scope, bounded_receive, send_with_request_id)
        finally:
            self._account(scope, status, time.perf_counter() - started)
            _request_id.reset(token)

    def _account(self, scope: Scope, status: int, elapsed: float) -> None:
        route = _route_template(scope)
        outcome = scope["state"].get("outcome", "ok" if status < 400 else "error")
        _REQUESTS.labels(route, scope["method"], str(status), outcome).inc()
        _LATENCY.labels(route).observe(elapsed)
        if self.log_requests:
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "outcome": outcome,
                        "principal": scope["state"].get("principal"),
                        "duration_ms": round(elapsed * 1000, 3),
                    }
                },
            )

    @staticmethod
    def _body_framing(scope: Scope) -> tuple[int, bool]:
        """The declared Content-Length (0 if none) and whether the body comes in chunks."""
        declared, chunked = 0, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif name == b"transfer-encoding":
                chunked = True
        return declared, chunked

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate: str = value.decode("latin-1")
                if _SANE_REQUEST_ID.fullmatch(candidate):
                    return candidate
                break
        return os.urandom(16).hex()  # as unique as a uuid4, without its object
