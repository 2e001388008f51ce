"""The access log line is the same whether it is written straight into the JSON handler's
batch or goes through logging's handlers (when a filter or another handler is set)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate._app import create_app
from idemgate._observability import access_log, configure_logging
from idemgate._settings import Settings


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


def _access_lines(tmp_path: Path, stream: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    app = create_app(Settings(storage=f"sqlite:///{tmp_path}/records.db"))

    async def post() -> None:
        transport = httpx.ASGITransport(app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
        ):
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
    assert direct.keys() == logged.keys()
    varying = {"ts", "request_id", "path", "duration_ms"}
    assert {k: v for k, v in direct.items() if k not in varying} == {
        k: v for k, v in logged.items() if k not in varying
    }
    assert (direct["request_id"], logged["request_id"]) == ("direct", "logged")
    assert direct["path"] == "/v1/records/ns/direct/claim"
    assert (direct["status"], direct["outcome"]) == (201, "claimed")
