"""RFC 9457 problem details: the one shape of every error answer."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from idemgate._deps import records_of
from idemgate._exceptions import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProblemError,
    StorageUnavailableError,
)
from idemgate._observability import current_request_id, record_storage_error

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ProblemDetails",
    "body_too_large_response",
    "documented_problem",
    "error_response",
    "install_problem_handlers",
    "internal_error_response",
    "problem_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://idemgate.dev/problems/"

logger = logging.getLogger("idemgate")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: the body of every error answer (in the OpenAPI document)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable and machine-readable: branch on it.")
    request_id: str = Field(description="The X-Request-Id of the answer.")


_PROBLEM_SCHEMA = ProblemDetails.model_json_schema()


def documented_problem(description: str) -> dict[str, Any]:
    """An OpenAPI response entry for a problem-details answer."""
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_SCHEMA}},
    }


def _problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **members: Any,
) -> Response:
    body = {
        "type": _TYPE_BASE + code.lower().replace("_", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": current_request_id(),
        **members,
    }
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )


def problem_response(request: Request, error: ProblemError) -> Response:
    request.state.outcome = error.code
    if isinstance(error, StorageUnavailableError):
        logger.warning("storage unavailable: %s", error.detail)
        record_storage_error(records_of(request).storage.name)
    return error_response(error)


def error_response(error: ProblemError) -> Response:
    """The problem-details answer of ``error``, for callers outside FastAPI's handlers."""
    return _problem(
        error.status,
        error.code,
        error.title,
        error.detail,
        error.headers,
        **error.extra_members(),
    )


def internal_error_response() -> Response:
    return _problem(
        500, "INTERNAL", "Internal error", "The gateway failed unexpectedly; it has been logged."
    )


def body_too_large_response() -> Response:
    return _problem(
        413,
        "PAYLOAD_TOO_LARGE",
        "Payload too large",
        "The request body is larger than any result this gateway stores.",
    )


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(request, exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(request, InvalidRequestError.from_errors(exc.errors()))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ProblemError
    if exc.status_code == 404:
        error = NotFoundError(f"No such endpoint: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowedError(
            f"{request.method} is not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    else:
        error = InvalidRequestError(str(exc.detail))
    return problem_response(request, error)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
