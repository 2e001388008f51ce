"""Request IDs, JSON log lines and Prometheus metrics, applied to every request at one place."""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import contextvars
import functools
import logging
import logging.config
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
    "new_request_id",
    "preregister_request_series",
    "record_storage_error",
]

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_HEADER_NAME = REQUEST_ID_HEADER.lower().encode()
_SANE_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,128}")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_REQUESTS = Counter(
    "idemgate_requests_total",
    "Requests answered, by route template, method, HTTP status and outcome.",
    ["route", "method", "status", "outcome"],
)
_LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LATENCY = Histogram(
    "idemgate_request_duration_seconds",
    "Time from the request's arrival to its answer, by route template.",
    ["route"],
    buckets=_LATENCY_BOUNDS_S,
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


def new_request_id() -> str:
    """32 random hex digits: as unique as a uuid4. A request ID is not a secret, so it comes
    from ``random`` (reseeded in a forked child) rather than a system call per request."""
    return random.getrandbits(128).to_bytes(16, "big").hex()


def record_storage_error(backend: str) -> None:
    _STORAGE_ERRORS.labels(backend).inc()


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of all workers when they share a dir.

    This process's answers are counted first; other workers' reach the shared dir when their
    ledger is next settled (``_Ledger``).
    """
    _LEDGER.settle()
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


# The index of the histogram bucket a duration in seconds falls in, as ``observe`` finds it; a
# partial, which counting a batch calls for every answer without a Python frame.
_latency_bucket = functools.partial(bisect.bisect_left, _LATENCY_BOUNDS_S)


def _observe_many(series: Any, counts: list[int], sum_s: float) -> None:
    """``observe`` of many durations at once: how many fell in each bucket (``_latency_bucket``,
    the last one past every bound), and their sum. prometheus_client has no public call for
    this; its test compares the exposition with one ``observe`` per duration."""
    series._sum.inc(sum_s)
    for bucket, count in zip(series._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


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
    the next one starts (or someone reads).
    """

    minute: int = -1
    counts: list[int] = field(default_factory=lambda: [0] * len(NAMESPACE_EVENTS))
    minutes: _Ring = field(default_factory=lambda: _Ring.of(60, _MINUTES_KEPT))
    hours: _Ring = field(default_factory=lambda: _Ring.of(3600, _HOURS_KEPT))

    def add(self, counts: list[int], now_s: int) -> None:
        minute = now_s // 60
        if minute != self.minute:
            self.close()
            self.minute = minute
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]

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

    def add(self, namespace: str, counts: list[int]) -> None:
        """Count ``counts`` (one per ``NAMESPACE_EVENTS`` entry) against ``namespace``."""
        counted = self._namespaces.get(namespace)
        if counted is None:
            if len(self._namespaces) < self.max_namespaces and namespace != OTHER_NAMESPACE:
                counted = self._namespaces[namespace] = self._labelled(namespace)
            else:
                counted = self._other
        for child, count in zip(counted.children, counts, strict=True):
            if count:
                child.inc(count)
        counted.recent.add(counts, int(self._clock()))

    def totals(self) -> list[NamespaceTotals]:
        """Every label's recent counts, ``other`` last."""
        _LEDGER.settle()
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


def _thousandths(value: float) -> float:
    """``value`` rounded to three decimals, as log lines show seconds and milliseconds.

    Not ``round(value, 3)``, which goes through a decimal conversion, for every access line;
    the two differ only where ``value * 1000`` lands on a half.
    """
    return round(value * 1000) / 1000


def _json_line(
    ts: float, level: str, logger: str, msg: str, request_id: str | None, *, fields: dict[str, Any]
) -> dict[str, Any]:
    """A log line's JSON object, every line alike: these members first, then ``fields``."""
    return {
        "ts": _thousandths(ts),
        "level": level,
        "logger": logger,
        "msg": msg,
        "request_id": request_id,
        **fields,
    }


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _json_line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "request_id", None) or current_request_id(),
            fields=getattr(record, "fields", {}),
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class _Answer(NamedTuple):
    """One answered request, as the ledger keeps it until it is settled.

    Only strings and numbers besides the middleware: a batch that kept each request's scope
    alive would age it into the collector's older generations, whose collections walk the
    whole heap.
    """

    front: RequestContextMiddleware
    route: str
    method: str
    path: str
    status: int
    outcome: str
    namespace: str | None
    took_over_lease: bool
    request_id: str
    principal: str | None
    duration_s: float
    ts: float


# An _Answer from its members in order, made as a plain tuple is: NamedTuple's own constructor
# is Python code, and this runs for every request.
_new_answer: Callable[[tuple[Any, ...]], _Answer] = functools.partial(tuple.__new__, _Answer)


def _access_fields(answer: _Answer) -> dict[str, Any]:
    """What an access line says after the members every line has, in this order."""
    return {
        "method": answer.method,
        "path": answer.path,
        "status": answer.status,
        "outcome": answer.outcome,
        "principal": answer.principal,
        "duration_ms": _thousandths(answer.duration_s * 1000),
    }


def _access_line(answer: _Answer) -> bytes:
    """The access line as ``access_log.info("request")`` would have ``_JSONFormatter`` write it
    (``_json_line`` with ``_access_fields``), without its line end.

    Written for every request, so spelled out as one dict rather than built from those two;
    the access log's test holds the two ways to the same members in the same order.
    """
    return orjson.dumps(
        {
            "ts": _thousandths(answer.ts),
            "level": "info",
            "logger": access_log.name,
            "msg": "request",
            "request_id": answer.request_id,
            "method": answer.method,
            "path": answer.path,
            "status": answer.status,
            "outcome": answer.outcome,
            "principal": answer.principal,
            "duration_ms": _thousandths(answer.duration_s * 1000),
        }
    )


class _JSONLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line at once; access lines come from the ledger in batches (``_Ledger``).

    Before any other line it settles the ledger, so the access lines of requests answered
    earlier are written first and the log stays in order.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LEDGER.settle()
        except Exception:
            self.handleError(record)
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._write(line)

    def write_access_lines(self, answers: list[_Answer]) -> None:
        """Write the access lines of ``answers``, in one write; for ``_Ledger.settle``, when
        ``_direct_access_handler`` found this handler the only one they would reach."""
        end = self.terminator.encode()
        self._write(b"".join([_access_line(answer) + end for answer in answers]).decode())

    def _write(self, text: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": text}))

    def flush(self) -> None:
        _LEDGER.settle()
        super().flush()


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


def _logging_config(level: str) -> dict[str, Any]:
    """One JSON object per line on stderr, each carrying the request ID it belongs to.

    As a ``logging.config`` dictionary, which uvicorn applies in each worker process too.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": _json_lines_handler}},
        "root": {"level": level.upper(), "handlers": ["json"]},
    }


def _json_lines_handler() -> _JSONLinesHandler:
    handler = _JSONLinesHandler()
    handler.setFormatter(_JSONFormatter())
    # The JSON lines show neither threads nor processes: logging need not look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler


def configure_logging(level: str) -> dict[str, Any]:
    """Apply ``_logging_config`` to this process; the configuration, for uvicorn's workers."""
    config = _logging_config(level)
    logging.config.dictConfig(config)
    return config


def flush_logs() -> None:
    """Settle the ledger and write what the log handlers hold: at shutdown."""
    _LEDGER.settle()
    for handler in logging.root.handlers:
        handler.flush()


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: str | None = getattr(route, "path_format", None)
    return path or "unmatched"


# The ledger is settled in the event loop's next turn at this many answers (about 64 KiB of
# access lines).
_MAX_UNSETTLED = 256


class _Ledger:
    """This process's answered requests, counted into the metrics and logged in batches.

    A request's own part is one ``add``. Settling counts a batch in one pass (each request
    series, latency bucket and namespace counter incremented once per batch) and writes its
    access lines in one write, as nginx's ``access_log ... buffer= flush=`` does: doing this
    per request, amid the request, cost more. The ledger is settled the middleware's
    ``settle_interval_s`` after the first answer it holds (at the end of the event loop's turn
    with 0), at ``_MAX_UNSETTLED`` answers, before ``/metrics`` and the console read the counts
    (so this worker's are always current), before any other log line is written (so the log
    stays in order), and when the worker stops. Another worker's counts reach a shared
    ``PROMETHEUS_MULTIPROC_DIR`` when it next settles; a worker killed outright loses the
    answers of its last interval.
    """

    def __init__(self) -> None:
        # A deque, whose appends and pops are atomic: a log line from another thread asks
        # for a settling too (see ``settle``).
        self._unsettled: collections.deque[_Answer] = collections.deque()
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def add(self, answer: _Answer) -> None:
        unsettled = self._unsettled
        unsettled.append(answer)
        if len(unsettled) == 1 or self._timer_loop is None or self._timer_loop.is_closed():
            # Once per batch, or when the loop of the last timer closed before it fired (an
            # app served without its lifespan): on Python 3.11 a loop look-up is a system call.
            loop = self._timer_loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            if interval_s := answer.front.settle_interval_s:
                loop.call_later(interval_s, self.settle)
            else:
                loop.call_soon(self.settle)
        elif len(unsettled) == _MAX_UNSETTLED:
            # Not inline: whatever goes wrong in settling must not fall on this request.
            self._timer_loop.call_soon(self.settle)

    def settle(self) -> None:
        """Count and log every answer added so far, on the event loop's thread.

        Called from another thread (a log line from an executor), it asks the loop to settle
        instead: two settlings at once would count into the same namespace counters.
        """
        loop = self._timer_loop
        if self._loop_thread != threading.get_ident() and loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: settle here, alone now
                loop.call_soon_threadsafe(self.settle)
                return
        answers = []
        with contextlib.suppress(IndexError):
            while True:
                answers.append(self._unsettled.popleft())
        if not answers:
            return
        try:
            _count(answers)
        except Exception:
            logging.getLogger("idemgate").exception(
                "counting %d answered requests into the metrics failed", len(answers)
            )
        finally:
            if access_log.isEnabledFor(logging.INFO):
                _log_access_lines([answer for answer in answers if answer.front.log_requests])


def _count(answers: list[_Answer]) -> None:
    """Count ``answers`` into the request series, the latency histogram and the namespaces.

    Each answer is one tuple of what it is counted by; the series are then counted from the few
    distinct kinds a batch holds.
    """
    kinds = collections.Counter(
        [
            (
                a.route,
                a.method,
                a.status,
                a.outcome,
                a.front.namespaces,
                a.namespace,
                a.took_over_lease,
            )
            for a in answers
        ]
    )
    requests: collections.Counter[tuple[str, str, int, str]] = collections.Counter()
    namespaces: dict[tuple[NamespaceCounters, str], list[int]] = {}
    for (route, method, status, outcome, counters, namespace, took_over), count in kinds.items():
        requests[route, method, status, outcome] += count
        events = _EVENTS_BY_ANSWER.get((route, outcome))
        if namespace is None or events is None:
            continue
        counts = namespaces.setdefault((counters, namespace), [0] * len(NAMESPACE_EVENTS))
        for event in events:
            counts[event] += count
        if took_over:
            counts[_TAKEOVERS] += count
    for series, count in requests.items():
        _request_series(*series).inc(count)
    durations: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    for answer in answers:
        durations[answer.route].append(answer.duration_s)
    for route, taken in durations.items():
        fell = collections.Counter(map(_latency_bucket, taken))
        buckets = [fell[bucket] for bucket in range(len(_LATENCY_BOUNDS_S) + 1)]
        _observe_many(_latency_series(route), buckets, sum(taken))
    for (counters, namespace), counts in namespaces.items():
        counters.add(namespace, counts)


def _log_access_lines(answers: list[_Answer]) -> None:
    if not answers:
        return
    direct = _direct_access_handler()
    if direct is not None:
        direct.write_access_lines(answers)
        return
    # As access_log.info would, without looking up the caller's file and line.
    for answer in answers:
        record = access_log.makeRecord(
            access_log.name,
            logging.INFO,
            "(unknown file)",
            0,
            "request",
            (),
            None,
            extra={"fields": _access_fields(answer), "request_id": answer.request_id},
        )
        record.created, record.msecs = answer.ts, answer.ts % 1 * 1000  # answered, not settled
        access_log.handle(record)


_LEDGER = _Ledger()


class RequestContextMiddleware:
    """Gives each request an ID (the caller's, if sane), times it, and adds its answer to the
    ledger, which counts and logs it (``_Ledger``, within ``settle_interval_ms``).

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
        settle_interval_ms: int,
    ) -> None:
        self.app = app
        self.log_requests = log_requests
        self.settle_interval_s = settle_interval_ms / 1000
        self.max_body_bytes = max_body_bytes
        self.namespaces = namespaces
        self.internal_error = internal_error
        self.body_too_large = body_too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given_id, declared, chunked = self._head(scope)
        request_id = given_id or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_REQUEST_ID_HEADER_NAME, request_id.encode())
        status = 0
        started = time.perf_counter()
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

        def send_with_request_id(message: Message) -> Awaitable[None]:
            # The server's own send, returned for the caller to await: no coroutine of this
            # function's own for every message.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), header]
                if body_pending:
                    headers.append(_CONNECTION_CLOSE)
                message["headers"] = headers
            return send(message)

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

    def _account(self, scope: Scope, status: int, duration_s: float) -> None:
        state = scope["state"]
        path_params = scope.get("path_params")
        _LEDGER.add(
            _new_answer(
                (
                    self,
                    _route_template(scope),
                    scope["method"],
                    scope["path"],
                    status,
                    state.get("outcome", "ok" if status < 400 else "error"),
                    path_params.get("namespace") if path_params else None,
                    state.get("attempt", 1) > 1,
                    state["request_id"],
                    state.get("principal"),
                    duration_s,
                    time.time(),
                )
            )
        )

    @staticmethod
    def _head(scope: Scope) -> tuple[str | None, int, bool]:
        """The caller's request ID if sane, the declared Content-Length (0 if none) and whether
        the body comes in chunks."""
        request_id, declared, chunked = None, 0, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif name == b"transfer-encoding":
                chunked = True
            elif name == _REQUEST_ID_HEADER_NAME and request_id is None:
                candidate: str = value.decode("latin-1")
                request_id = candidate if _SANE_REQUEST_ID.fullmatch(candidate) else ""
        return request_id or None, declared, chunked
