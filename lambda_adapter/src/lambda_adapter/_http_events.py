"""HTTP-triggered events (API Gateway v1 and v2, ALB, function URLs) and problem responses."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyUnavailableError,
)

__all__ = ["is_http_event", "problem_response"]

_STATUS_BY_CODE = {
    "IN_PROGRESS": HTTPStatus.CONFLICT,
    "FINGERPRINT_MISMATCH": HTTPStatus.UNPROCESSABLE_ENTITY,
    # Already processed, and no answer kept to give: retrying cannot help.
    "RESULT_NOT_STORED": HTTPStatus.CONFLICT,
    "IDEMPOTENCY_UNAVAILABLE": HTTPStatus.SERVICE_UNAVAILABLE,
}


def is_http_event(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    request_context = event.get("requestContext")
    if not isinstance(request_context, dict):
        return False
    return (
        "httpMethod" in event  # API Gateway REST (v1 payload)
        or "http" in request_context  # HTTP API v2 payload, function URLs
        or "elb" in request_context  # ALB
    )


def problem_response(event: dict[str, Any], error: IdempotencyError) -> dict[str, Any]:
    """An RFC 9457 problem response in the shape the event's source expects."""
    status = _STATUS_BY_CODE[error.code]
    headers = {"Content-Type": "application/problem+json"}
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    if isinstance(error, IdempotencyAlreadyInProgressError):
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, IdempotencyUnavailableError):
        headers["Retry-After"] = "1"
    body = {
        "type": "about:blank",
        "title": status.phrase,
        "status": int(status),
        "detail": str(error),
        "code": error.code,
        "request_id": error.request_id,
        "gateway_request_id": error.gateway_request_id,
    }
    response: dict[str, Any] = {
        "statusCode": int(status),
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }
    # An ALB target group with multi-value headers on accepts only multiValueHeaders.
    if "multiValueHeaders" in event:
        response["multiValueHeaders"] = {name: [value] for name, value in headers.items()}
    else:
        response["headers"] = headers
    if "elb" in event["requestContext"]:
        response["statusDescription"] = f"{int(status)} {status.phrase}"
    return response
