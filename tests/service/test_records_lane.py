"""RecordsLane answers as FastAPI's router would, when a handler fails too.

In-process (the lane's error path needs a handler that fails): the same app with and without
the lane, each request with the same request ID.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from idemgate._app import create_app
from idemgate._records import RecordService
from idemgate._routers.records import RecordsLane
from idemgate._settings import Settings


def _answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, lane: bool) -> tuple[int, str, Any]:
    app = create_app(Settings(storage=f"sqlite:///{tmp_path}/records.db", access_log=False))
    if not lane:  # the lane matches nothing: every request goes on to FastAPI's router
        monkeypatch.setattr(RecordsLane, "_match", lambda self, scope: None)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
        ):
            return await client.post(
                "/v1/records/ns/k/claim", json={}, headers={"X-Request-Id": "same-id"}
            )

    response = asyncio.run(post())
    return response.status_code, response.headers["content-type"], response.json()


@pytest.mark.parametrize(
    "error",
    [
        HTTPException(404),
        HTTPException(418, "teapot"),
        RequestValidationError([{"loc": ("body", "x"), "msg": "bad", "type": "value_error"}]),
        RuntimeError("boom"),
    ],
    ids=["http-404", "http-418", "validation", "unexpected"],
)
def test_an_error_from_a_handler_gets_fastapis_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(RecordService, "claim", fail)
    status, content_type, problem = _answer(tmp_path, monkeypatch, lane=True)
    assert (status, content_type, problem) == _answer(tmp_path, monkeypatch, lane=False)
    assert status >= 400
    assert content_type == "application/problem+json"
    assert problem["request_id"] == "same-id"
