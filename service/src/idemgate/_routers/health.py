"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from idemgate._deps import RecordsDep
from idemgate._observability import metrics_text

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="The storage answers (503 STORAGE_UNAVAILABLE when not)")
async def readyz(records: RecordsDep) -> Response:
    await records.storage.check()
    return JSONResponse({"status": "ready", "storage": records.storage.name})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics() -> Response:
    body, content_type = metrics_text()
    return Response(body, media_type=content_type)
