"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from idemgate._deps import RecordsDep
from idemgate._observability import metrics_text
from idemgate._problems import documented_problem

__all__ = ["router"]

router = APIRouter(
    tags=["operations"],
    responses={"4XX": documented_problem("RFC 9457 problem details, with `code`")},
)


class Alive(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    storage: str


@router.get(
    "/healthz",
    summary="The process is alive",
    responses={200: {"model": Alive, "description": "Alive"}},
)
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="The storage answers (503 STORAGE_UNAVAILABLE when not)",
    responses={
        200: {"model": Ready, "description": "Ready"},
        503: documented_problem("STORAGE_UNAVAILABLE"),
    },
)
async def readyz(records: RecordsDep) -> Response:
    await records.storage.check()
    return JSONResponse({"status": "ready", "storage": records.storage.name})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics() -> Response:
    body, content_type = metrics_text()
    return Response(body, media_type=content_type)
