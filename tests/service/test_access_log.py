"""The access log line is the same whether the ledger hands it to the JSON handler or it goes
through logging's handlers (when a filter or another handler is set); buffered lines all
arrive, by their interval, before any other line and at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from idemgate import _observability
from idemgate._app import create_app
from idemgate._observability import (
    NamespaceCounters,
    RequestContextMiddleware,
    _Answer,
    _new_answer,
    access_log,
    configure_logging,
    new_request_id,
)
from idemgate._settings import Settings
from idemgate.testing import GatewayServer, free_port

WAIT_S = 30.0  # far below the longest flush interval these tests set


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved


@contextlib.asynccontextmanager
async def _served_in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` run in this process, within its lifespan."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client,
    ):
        yield client


def _access_lines(tmp_path: Path, stream: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    app = create_app(Settings(storage=f"sqlite:///{tmp_path}/records.db"))

    async def post() -> None:
        async with _served_in_process(app) as client:
            answer = await client.post(
                f"/v1/records/ns/{request_id}/claim", json={}, headers={"X-Request-Id": request_id}
            )
            assert answer.status_code == 201

    asyncio.run(post())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "idemgate.access"]


def test_the_direct_access_line_is_the_one_logging_would_write(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    (direct,) = _access_lines(tmp_path, log_stream, "direct")
    access_log.addFilter(lambda record: True)  # any filter: lines go through logging
    try:
        log_stream.truncate(0)
        log_stream.seek(0)
        (logged,) = _access_lines(tmp_path, log_stream, "logged")
    finally:
        access_log.filters.clear()
    assert list(direct) == list(logged)  # the same members, in the same order
    varying = {"ts", "request_id", "path", "duration_ms"}
    assert {k: v for k, v in direct.items() if k not in varying} == {
        k: v for k, v in logged.items() if k not in varying
    }
    assert (direct["request_id"], logged["request_id"]) == ("direct", "logged")
    assert direct["path"] == "/v1/records/ns/direct/claim"
    assert (direct["status"], direct["outcome"]) == (201, "claimed")


def test_an_answer_made_from_a_tuple_is_the_named_tuple() -> None:
    members = (None, "/v1/records", "POST", "/p", 201, "claimed", "ns", False, "id", None, 0.5, 1.0)
    made = _new_answer(members)
    assert type(made) is _Answer
    assert made == _Answer(*members)
    assert (made.status, made.request_id, made.ts) == (201, "id", 1.0)


def test_new_request_ids_are_32_hex_digits_and_differ() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)


def _logged(log: Path) -> list[dict[str, Any]]:
    """The complete lines written so far (a line being written may lack its end)."""
    return [
        json.loads(line) for line in log.read_text().splitlines(keepends=True) if line[-1:] == "\n"
    ]


def _paths_logged(log: Path) -> list[str]:
    return [line["path"] for line in _logged(log) if line["logger"] == "idemgate.access"]


def _wait_until(arrived: Callable[[], bool], what: str) -> None:
    """Poll the log until ``arrived()``; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not arrived():
        assert time.monotonic() < deadline, f"{what} never came"
        time.sleep(0.02)


def _wait_for(log: Path, paths: list[str]) -> list[str]:
    """The access lines' paths once each of ``paths`` is among them; fails after WAIT_S."""
    _wait_until(lambda: set(paths) <= set(_paths_logged(log)), "some of the access lines")
    return _paths_logged(log)


def test_buffered_access_lines_all_arrive_and_a_lone_one_by_its_interval(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    env = {"IDEMGATE_ACCESS_LOG_FLUSH_MS": "100"}
    storage = f"sqlite:///{tmp_path}/records.db"
    with log.open("wb") as output, GatewayServer(storage=storage, env=env, stderr=output) as gw:
        # More than one buffer's worth, from four clients at once.
        burst = [f"/v1/records/burst/k-{n}/claim" for n in range(600)]

        async def post_all() -> None:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

                async def post(paths: list[str]) -> None:
                    for path in paths:
                        assert (await client.post(path, json={})).status_code == 201

                await asyncio.gather(*(post(burst[n::4]) for n in range(4)))

        asyncio.run(post_all())
        logged = _wait_for(log, burst)
        assert sorted(logged.count(path) for path in burst) == [1] * len(burst)
        # Nothing else happens after it: its interval's timer alone writes it.
        lone = "/v1/records/lone/k/claim"
        assert httpx.post(gw.url + lone, json={}, timeout=10).status_code == 201
        _wait_for(log, [lone])


def test_other_lines_are_written_at_once_after_the_buffer_and_shutdown_writes_the_rest(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gateway.log"
    storage = f"dynamodb://gone?region=us-east-1&endpoint_url=http://127.0.0.1:{free_port()}"
    env = {
        "IDEMGATE_ACCESS_LOG_FLUSH_MS": "60000",
        "IDEMGATE_STORAGE_TIMEOUT_MS": "300",
        "IDEMGATE_STORAGE_MAX_ATTEMPTS": "1",
    }
    with log.open("wb") as output:
        gw = GatewayServer(storage=storage, env=env, stderr=output, ready_path="/healthz")
        gw.start()
        try:
            assert httpx.get(f"{gw.url}/healthz?first", timeout=10).status_code == 200
            claimed = httpx.post(f"{gw.url}/v1/records/ns/k/claim", json={}, timeout=10)
            assert claimed.status_code == 503
            _wait_until(
                lambda: any(line["level"] == "warning" for line in _logged(log)),
                "the storage warning",
            )
            before_shutdown = [
                line.get("path", line["msg"]) for line in _logged(log) if line["ts"] > 0
            ]
            gw.send_signal(signal.SIGTERM)
            # uvicorn stops gracefully, then exits by the signal it caught.
            assert gw.wait(WAIT_S) in (0, -signal.SIGTERM)
        finally:
            gw.stop()
    # The warning waited for no interval, and took the buffered line before it along.
    warning = next(line for line in before_shutdown if line.startswith("storage unavailable"))
    assert before_shutdown.index("/healthz") < before_shutdown.index(warning)
    assert "/v1/records/ns/k/claim" not in before_shutdown  # logged after the warning
    # Stopping wrote the claim's access line, still within its interval.
    assert _paths_logged(log)[-1:] == ["/v1/records/ns/k/claim"]


def test_the_lifespan_end_writes_the_buffered_lines(tmp_path: Path) -> None:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = root.handlers[:], root.level, httpx_logger.level
    configure_logging("info")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    httpx_logger.setLevel(logging.WARNING)  # no line of its own to write the buffer sooner
    app = create_app(
        Settings(storage=f"sqlite:///{tmp_path}/records.db", access_log_flush_ms=60_000)
    )

    async def post() -> str:
        async with _served_in_process(app) as client:
            assert (await client.post("/v1/records/ns/held/claim", json={})).status_code == 201
            return stream.getvalue()

    try:
        while_serving = asyncio.run(post())
    finally:
        root.handlers[:], root.level = saved[:2]
        httpx_logger.setLevel(saved[2])
    assert "/v1/records/ns/held/claim" not in while_serving
    assert "/v1/records/ns/held/claim" in stream.getvalue()


def test_every_worker_process_writes_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    storage = f"sqlite:///{tmp_path}/records.db"
    env = {"IDEMGATE_ACCESS_LOG_FLUSH_MS": "100"}
    with (
        log.open("wb") as output,
        GatewayServer(storage=storage, workers=2, env=env, stderr=output) as gw,
    ):
        paths = [f"/v1/records/workers/k-{n}/claim" for n in range(8)]
        for path in paths:  # a connection each, so either worker may answer
            assert httpx.post(gw.url + path, json={}, timeout=10).status_code == 201
        _wait_for(log, paths)
        _wait_until(
            lambda: sum(line["msg"].startswith("serving with") for line in _logged(log)) >= 2,
            "the second worker's start line",
        )


def test_a_loop_closed_before_its_timer_fired_leaves_no_answer_unsettled() -> None:
    """An app served without its lifespan may leave answers behind when its loop closes: the
    next loop's first answer schedules a timer of its own for them."""
    front = RequestContextMiddleware(
        app=lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
        log_requests=False,
        max_body_bytes=0,
        namespaces=NamespaceCounters(max_namespaces=1),
        internal_error=lambda: None,  # type: ignore[arg-type,return-value]
        body_too_large=lambda: None,  # type: ignore[arg-type,return-value]
        settle_interval_ms=0,
    )
    scope = {"method": "GET", "path": "/", "state": {"request_id": "r"}}
    ledger = _observability._LEDGER
    ledger.settle()

    async def answer_once(closing: bool) -> None:
        front._account(scope, 200, 0.001)
        if not closing:
            await asyncio.sleep(0)  # the timer's turn

    front.settle_interval_s = 60.0
    asyncio.run(answer_once(closing=True))  # its timer never fires
    assert len(ledger._unsettled) == 1
    front.settle_interval_s = 0.0
    asyncio.run(answer_once(closing=False))
    assert not ledger._unsettled


def test_a_failure_to_count_still_writes_the_batch_and_says_why(
    tmp_path: Path, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(answers: list[Any]) -> None:
        raise RuntimeError("the metrics are gone")

    monkeypatch.setattr(_observability, "_count", broken)
    (line,) = _access_lines(tmp_path, log_stream, "uncounted")
    assert (line["status"], line["outcome"]) == (201, "claimed")
    errors = [json.loads(text) for text in log_stream.getvalue().splitlines()]
    (error,) = [e for e in errors if e["level"] == "error"]
    assert error["msg"] == "counting 1 answered requests into the metrics failed"
    assert "the metrics are gone" in error["exc"]
