"""Request IDs, JSON log lines and Prometheus metrics, applied to every request at one place."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import logging.config
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
    "NAMESPACE_EVENTS",
    "OTHER_NAMESPACE",
    "REQUEST_ID_HEADER",
    "NamespaceCounters",
    "NamespaceTotals",
    "RequestContextMiddleware",
    "configure_logging",
    "current_request_id",
    "flush_logs",
    "metrics_text",
    "preregister_request_series",
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

for _backend in ("sqlite", "dynamodb"):
    _STORAGE_ERRORS.labels(_backend)

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


# What each namespace counter counts, in the order ``NamespaceTotals`` keeps them.
NAMESPACE_EVENTS = (
    "claims",
    "replays",
    "in_progress",
    "fingerprint_mismatches",
    "lease_takeovers",
    "lease_lost",
)
_NAMESPACE_COUNTERS = tuple(
    Counter(f"idemgate_{event}_total", help_text, ["namespace"])
    for event, help_text in zip(
        NAMESPACE_EVENTS,
        (
            "Claims the storage answered (claimed, replayed, in progress or mismatched).",
            "Claims answered with the stored result: duplicate runs prevented.",
            "Claims answered 409 IN_PROGRESS: another caller held the key.",
            "Claims answered 422 FINGERPRINT_MISMATCH: one key sent with two payloads.",
            "Claims that took over an expired lease (attempt > 1): a run that timed out.",
            "Completes refused 409 LEASE_LOST: a stale holder stopped by fencing.",
        ),
        strict=True,
    )
)
_CLAIMS, _REPLAYS, _IN_PROGRESS, _MISMATCHES, _TAKEOVERS, _LEASE_LOST = range(6)
OTHER_NAMESPACE = "other"
_CLAIM_ROUTE = "/v1/records/{namespace}/{key}/claim"
_COMPLETE_ROUTE = "/v1/records/{namespace}/{key}/complete"
# (route template, outcome) -> the namespace events that answer counts.
_EVENTS_BY_ANSWER: dict[tuple[str, str], tuple[int, ...]] = {
    (_CLAIM_ROUTE, "claimed"): (_CLAIMS,),
    (_CLAIM_ROUTE, "replayed"): (_CLAIMS, _REPLAYS),
    (_CLAIM_ROUTE, "IN_PROGRESS"): (_CLAIMS, _IN_PROGRESS),
    (_CLAIM_ROUTE, "FINGERPRINT_MISMATCH"): (_CLAIMS, _MISMATCHES),
    (_COMPLETE_ROUTE, "LEASE_LOST"): (_LEASE_LOST,),
}
# The answers every records route can give before it has given one, so that alerts on their
# rates see zero rather than no data.
_EXPECTED_ANSWERS: dict[str, tuple[tuple[str, str], ...]] = {
    _CLAIM_ROUTE: (
        ("201", "claimed"),
        ("200", "replayed"),
        ("409", "IN_PROGRESS"),
        ("422", "FINGERPRINT_MISMATCH"),
    ),
    _COMPLETE_ROUTE: (("200", "ok"), ("409", "LEASE_LOST")),
}
_MINUTES_KEPT = 60
_HOURS_KEPT = 24


@functools.cache
def _request_series(route: str, method: str, status: int, outcome: str) -> Any:
    """The requests counter of one answer; each label set is looked up once."""
    return _REQUESTS.labels(route, method, str(status), outcome)


@functools.cache
def _latency_series(route: str) -> Any:
    return _LATENCY.labels(route)


def preregister_request_series(routes: Iterable[tuple[str, str]]) -> None:
    """Create, at zero, the request series of each ``(route template, method)`` alerts watch."""
    for route, method in routes:
        _LATENCY.labels(route)
        for status, outcome in (
            *_EXPECTED_ANSWERS.get(route, ()),
            ("500", "INTERNAL"),
            ("503", "STORAGE_UNAVAILABLE"),
        ):
            _REQUESTS.labels(route, method, status, outcome)


@dataclass(slots=True)
class _Ring:
    """Counts per time bucket, for the last ``len(stamps)`` buckets of ``width_s`` seconds."""

    width_s: int
    stamps: list[int]
    counts: list[list[int]]

    @classmethod
    def of(cls, width_s: int, buckets: int) -> _Ring:
        return cls(width_s, [-1] * buckets, [[0] * len(NAMESPACE_EVENTS) for _ in range(buckets)])

    def add(self, counts: list[int], at_s: int) -> None:
        bucket = at_s // self.width_s
        slot = bucket % len(self.stamps)
        if self.stamps[slot] != bucket:
            self.stamps[slot] = bucket
            self.counts[slot] = [0] * len(NAMESPACE_EVENTS)
        self.counts[slot] = [a + b for a, b in zip(self.counts[slot], counts, strict=True)]

    def series(self, now_s: int) -> list[list[int]]:
        """Counts per bucket, oldest first, the current bucket last; empty buckets are zeros."""
        current = now_s // self.width_s
        size = len(self.stamps)
        answer = []
        for bucket in range(current - size + 1, current + 1):
            slot = bucket % size
            fresh = self.stamps[slot] == bucket
            answer.append(list(self.counts[slot]) if fresh else [0] * len(NAMESPACE_EVENTS))
        return answer


@dataclass(slots=True)
class _Recent:
    """Counts of the current minute, and of the last hour by minute and last day by hour.

    Counting touches only the current minute's list; the minute goes into both rings when
    the next one starts (or someone reads), which keeps the claim path to a few additions.
    """

    minute: int = -1
    counts: list[int] = field(default_factory=lambda: [0] * len(NAMESPACE_EVENTS))
    minutes: _Ring = field(default_factory=lambda: _Ring.of(60, _MINUTES_KEPT))
    hours: _Ring = field(default_factory=lambda: _Ring.of(3600, _HOURS_KEPT))

    def add(self, events: tuple[int, ...], now_s: int) -> None:
        minute = now_s // 60
        if minute != self.minute:
            self.close()
            self.minute = minute
        for event in events:
            self.counts[event] += 1

    def close(self) -> None:
        if self.minute >= 0 and any(self.counts):
            self.minutes.add(self.counts, self.minute * 60)
            self.hours.add(self.counts, self.minute * 60)
            self.counts = [0] * len(NAMESPACE_EVENTS)


@dataclass(frozen=True, slots=True)
class NamespaceTotals:
    """One namespace label's counts: per minute for the last hour, per hour for the last day.

    Each list holds one count per ``NAMESPACE_EVENTS`` entry per bucket, oldest bucket first.
    """

    namespace: str
    per_minute: list[list[int]]
    per_hour: list[list[int]]

    def total(self, event: str, *, hours: int) -> int:
        """The ``event`` count of the last hour (``hours=1``, by minute) or last ``hours``."""
        index = NAMESPACE_EVENTS.index(event)
        buckets = self.per_minute if hours == 1 else self.per_hour[-hours:]
        return sum(counts[index] for counts in buckets)


@dataclass(slots=True)
class _Namespace:
    children: tuple[Any, ...]
    recent: _Recent = field(default_factory=_Recent)


class NamespaceCounters:
    """The per-namespace counters, and this process's recent counts for the console.

    The first ``max_namespaces`` namespaces this process counts get a label of their own; the
    rest share ``other``, so the series stay bounded however many namespaces callers invent.
    """

    def __init__(self, *, max_namespaces: int, clock: Callable[[], float] = time.time) -> None:
        self.max_namespaces = max_namespaces
        self._clock = clock
        self._other = self._labelled(OTHER_NAMESPACE)
        self._namespaces: dict[str, _Namespace] = {}

    @staticmethod
    def _labelled(label: str) -> _Namespace:
        return _Namespace(tuple(counter.labels(label) for counter in _NAMESPACE_COUNTERS))

    def count(self, namespace: str, events: tuple[int, ...]) -> None:
        counted = self._namespaces.get(namespace)
        if counted is None:
            if len(self._namespaces) < self.max_namespaces and namespace != OTHER_NAMESPACE:
                counted = self._namespaces[namespace] = self._labelled(namespace)
            else:
                counted = self._other
        for event in events:
            counted.children[event].inc()
        counted.recent.add(events, int(self._clock()))

    def count_answer(self, route: str, outcome: str, scope: Scope) -> None:
        """Count a records answer against its namespace, if it is one the counters watch."""
        events = _EVENTS_BY_ANSWER.get((route, outcome))
        if events is None:
            return
        if scope["state"].get("attempt", 1) > 1:
            events = (*events, _TAKEOVERS)
        self.count(scope["path_params"]["namespace"], events)

    def totals(self) -> list[NamespaceTotals]:
        """Every label's recent counts, ``other`` last."""
        now_s = int(self._clock())
        labelled = [*self._namespaces.items(), (OTHER_NAMESPACE, self._other)]
        for _, counted in labelled:
            counted.recent.close()
        return [
            NamespaceTotals(
                name, counted.recent.minutes.series(now_s), counted.recent.hours.series(now_s)
            )
            for name, counted in labelled
        ]


def _json_line(
    *, ts: float, level: str, logger: str, msg: str, request_id: str | None, fields: dict[str, Any]
) -> dict[str, Any]:
    """A log line's JSON object, every line alike: these members first, then ``fields``."""
    return {
        "ts": round(ts, 3),
        "level": level,
        "logger": logger,
        "msg": msg,
        "request_id": request_id,
        **fields,
    }


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _json_line(
            ts=record.created,
            level=record.levelname.lower(),
            logger=record.name,
            msg=record.getMessage(),
            request_id=getattr(record, "request_id", None) or current_request_id(),
            fields=getattr(record, "fields", {}),
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# What the access log line of one request says, in the order its fields appear:
# (ts, request_id, method, path, status, outcome, principal, duration_s).
_AccessEntry = tuple[float, str, str, str, int, str, str | None, float]
# Buffered access lines leave at once beyond this many (about 64 KiB of lines).
_MAX_BUFFERED_LINES = 256


def _access_fields(entry: _AccessEntry) -> dict[str, Any]:
    _, _, method, path, status, outcome, principal, duration_s = entry
    return {
        "method": method,
        "path": path,
        "status": status,
        "outcome": outcome,
        "principal": principal,
        "duration_ms": round(duration_s * 1000, 3),
    }


def _access_text(entry: _AccessEntry) -> str:
    """The access line as ``access_log.info("request")`` would have ``_JSONFormatter`` write it."""
    line = _json_line(
        ts=entry[0],
        level="info",
        logger=access_log.name,
        msg="request",
        request_id=entry[1],
        fields=_access_fields(entry),
    )
    return orjson.dumps(line, default=str).decode()


class _JSONLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line at once, except access lines, which are buffered like nginx's.

    An access line waits as its values and is formatted with the others of its buffer when
    they are written: ``flush_interval_ms`` after the first of them (with 0, at the end of the
    event loop's turn), as soon as ``_MAX_BUFFERED_LINES`` wait, before any other line (so the
    log stays in order), and when the worker stops (``flush``, which the lifespan's end and
    logging at exit call). Formatting a buffer in one go, away from the requests, costs less
    per line than formatting each line amid its request.
    """

    def __init__(self, *, flush_interval_ms: int) -> None:
        super().__init__()
        self.flush_interval_s = flush_interval_ms / 1000
        self._pending: list[_AccessEntry] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._write(line)

    def buffer_access_line(self, entry: _AccessEntry) -> None:
        """Keep an access line for the next write; for ``_account``, on the event loop, when
        ``_direct_access_handler`` found this handler the only one it would reach, unfiltered.
        """
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                self._pending.append(entry)
                if len(self._pending) >= _MAX_BUFFERED_LINES:
                    self._write("")
                return
            self._pending.append(entry)
        # The buffer's first line: on Python 3.11 each loop look-up is a system call.
        loop = asyncio.get_running_loop()
        if self.flush_interval_s:
            loop.call_later(self.flush_interval_s, self.flush)
        else:
            loop.call_soon(self.flush)

    def _write(self, text: str) -> None:
        """Write the buffered access lines, then ``text``, in one write."""
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                entries, self._pending = self._pending, []
                lines = [_access_text(entry) for entry in entries]
                text = self.terminator.join(lines) + self.terminator + text
            if text:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": text}))

    def flush(self) -> None:
        self._write("")


def _direct_access_handler() -> _JSONLinesHandler | None:
    """The handler ``configure_logging`` installed, if an access line would reach it alone
    and unfiltered; None when anything else (a test's capture, an operator's filter) is set."""
    root = logging.root
    if len(root.handlers) != 1 or root.filters:
        return None
    handler = root.handlers[0]
    if type(handler) is not _JSONLinesHandler or handler.filters:
        return None
    if handler.level > logging.INFO or type(handler.formatter) is not _JSONFormatter:
        return None
    logger: logging.Logger | None = access_log
    while logger is not None and logger is not root:
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        logger = logger.parent
    return handler


def _logging_config(level: str, *, access_log_flush_ms: int) -> dict[str, Any]:
    """One JSON object per line on stderr, each carrying the request ID it belongs to.

    As a ``logging.config`` dictionary, which uvicorn applies in each worker process too.
    Access lines are buffered for up to ``access_log_flush_ms`` (see ``_JSONLinesHandler``).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": _json_lines_handler, "flush_interval_ms": access_log_flush_ms}},
        "root": {"level": level.upper(), "handlers": ["json"]},
    }


def _json_lines_handler(*, flush_interval_ms: int) -> _JSONLinesHandler:
    handler = _JSONLinesHandler(flush_interval_ms=flush_interval_ms)
    handler.setFormatter(_JSONFormatter())
    # The JSON lines show neither threads nor processes: logging need not look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler


def configure_logging(level: str, *, access_log_flush_ms: int) -> dict[str, Any]:
    """Apply ``_logging_config`` to this process; the configuration, for uvicorn's workers."""
    config = _logging_config(level, access_log_flush_ms=access_log_flush_ms)
    logging.config.dictConfig(config)
    return config


def flush_logs() -> None:
    """Write what the log handlers hold, buffered access lines included: at shutdown."""
    for handler in logging.root.handlers:
        handler.flush()


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
        namespaces: NamespaceCounters,
        internal_error: Callable[[], Response],
        body_too_large: Callable[[], Response],
    ) -> None:
        self.app = app
        self.log_requests = log_requests
        self.max_body_bytes = max_body_bytes
        self.namespaces = namespaces
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
        _request_series(route, scope["method"], status, outcome).inc()
        _latency_series(route).observe(elapsed)
        self.namespaces.count_answer(route, outcome, scope)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            entry = (
                time.time(),
                current_request_id(),
                scope["method"],
                scope["path"],
                status,
                outcome,
                scope["state"].get("principal"),
                elapsed,
            )
            direct = _direct_access_handler()
            if direct is not None:
                direct.buffer_access_line(entry)
            else:  # as access_log.info would, without looking up the caller's file and line
                access_log.handle(
                    access_log.makeRecord(
                        access_log.name,
                        logging.INFO,
                        "(unknown file)",
                        0,
                        "request",
                        (),
                        None,
                        extra={"fields": _access_fields(entry)},
                    )
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
