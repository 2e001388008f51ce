"""RecordsLane answers as FastAPI's router would, when a handler fails too, and refuses at
start-up a records route whose declaration it would not honour.

In-process (the lane's error path needs a handler that fails): the same app with and without
the lane, each request with the same request ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response

from idemgate._app import create_app
from idemgate._exceptions import ConfigurationError
from idemgate._records import RecordService
from idemgate._routers import records
from idemgate._routers.records import RecordRoute, RecordsLane
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


def test_a_claim_gets_the_same_answer_from_the_lane_and_from_fastapi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lane").mkdir()
    (tmp_path / "fastapi").mkdir()
    served = _answer(tmp_path / "lane", monkeypatch, lane=True)
    routed = _answer(tmp_path / "fastapi", monkeypatch, lane=False)
    for status, content_type, claimed in (served, routed):
        assert (status, content_type) == (201, "application/json")
        assert (claimed["outcome"], claimed["attempt"]) == ("claimed", 1)
    assert served[2].keys() == routed[2].keys()


def _lane_for(declare: Callable[[APIRouter], object]) -> RecordsLane:
    routes = APIRouter(prefix=records.router.prefix, route_class=RecordRoute)
    declare(routes)
    return RecordsLane(create_app(Settings(storage="sqlite:///unused.db")), routes=routes.routes)


async def _records_dep() -> None:
    return None


def _with_dependency(routes: APIRouter) -> object:
    @routes.post("/claim", dependencies=[Depends(_records_dep)])
    async def claim(request: Request, namespace: str, key: str) -> Response:
        raise AssertionError("never called")

    return claim


def _with_depends_parameter(routes: APIRouter) -> object:
    @routes.post("/claim")
    async def claim(
        request: Request, namespace: str, key: str, extra: Annotated[None, Depends(_records_dep)]
    ) -> Response:
        raise AssertionError("never called")

    return claim


def _with_header(routes: APIRouter) -> object:
    @routes.post("/claim")
    async def claim(
        request: Request, namespace: str, key: str, x_trace: Annotated[str, Header()]
    ) -> Response:
        raise AssertionError("never called")

    return claim


def _with_query(routes: APIRouter) -> object:
    @routes.get("")
    async def read(request: Request, namespace: str, key: str, verbose: bool = False) -> Response:
        raise AssertionError("never called")

    return read


def _with_response_model(routes: APIRouter) -> object:
    @routes.get("", response_model=dict)
    async def read(request: Request, namespace: str, key: str) -> Response:
        raise AssertionError("never called")

    return read


def _with_deeper_path(routes: APIRouter) -> object:
    @routes.post("/claim/again")
    async def claim(request: Request, namespace: str, key: str) -> Response:
        raise AssertionError("never called")

    return claim


@pytest.mark.parametrize(
    ("declare", "reason"),
    [
        (_with_dependency, "it has dependencies (Depends)"),
        (_with_depends_parameter, "it has dependencies (Depends)"),
        (_with_header, "it has header parameters (x_trace)"),
        (_with_query, "it has query parameters (verbose)"),
        (_with_response_model, "it has a response model"),
        (_with_deeper_path, "its path is not /v1/records/{namespace}/{key}[/action]"),
    ],
    ids=["dependency", "depends-parameter", "header", "query", "response-model", "path"],
)
def test_a_records_route_the_lane_cannot_serve_is_refused_when_the_app_is_built(
    declare: Callable[[APIRouter], object], reason: str
) -> None:
    with pytest.raises(ConfigurationError, match="the records lane cannot serve") as refused:
        _lane_for(declare)
    assert reason in str(refused.value)


def test_the_declared_records_routes_are_all_served() -> None:
    app = create_app(Settings(storage="sqlite:///unused.db"))
    lane = RecordsLane(app)
    served = {id(route) for route, _ in lane._routes.values()}
    declared = {id(route) for route in records.router.routes if isinstance(route, RecordRoute)}
    assert served == declared
    assert len(declared) == 7


def test_a_middleware_added_to_the_app_is_refused() -> None:
    app = create_app(Settings(storage="sqlite:///unused.db"))
    with pytest.raises(ConfigurationError, match=r"add it to GatewayApp\.front"):
        app.add_middleware(GZipMiddleware)
