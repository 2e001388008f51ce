"""``/v1/records/{namespace}/{key}``: claim, complete, release, extend, read and delete."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from idemgate._deps import RecordsDep, SettingsDep
from idemgate._exceptions import InvalidRequestError, PayloadTooLargeError
from idemgate._storage import Record

__all__ = ["router"]

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KEY_PATTERN = r"^[A-Za-z0-9._~:@=+-]{1,255}$"
MAX_LEASE_MS = 900_000
MAX_TTL_S = 2_592_000

Namespace = Annotated[
    str, Path(pattern=NAMESPACE_PATTERN, description="One per function or tenant.")
]
Key = Annotated[str, Path(pattern=KEY_PATTERN, description="The idempotency key.")]
LeaseToken = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
LeaseMs = Annotated[int, Field(ge=1, le=MAX_LEASE_MS, description="Lease length, milliseconds.")]
TtlS = Annotated[int, Field(ge=1, le=MAX_TTL_S, description="Seconds kept after completion.")]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ClaimBody(_Body):
    fingerprint: str | None = Field(default=None, max_length=128)
    lease_ms: LeaseMs = 60_000
    ttl_s: TtlS = 86_400


class CompleteBody(_Body):
    lease_token: LeaseToken
    result: Any = Field(description="Any JSON value, null included; replayed exactly.")
    ttl_s: TtlS | None = None


class ReleaseBody(_Body):
    lease_token: LeaseToken


class ExtendBody(_Body):
    lease_token: LeaseToken
    lease_ms: LeaseMs


BodyModel = TypeVar("BodyModel", bound=_Body)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_body(model: type[BodyModel]) -> Callable[[Request], Any]:
    """A dependency parsing the body as JSON (whatever its Content-Type) into ``model``.

    An empty body is ``{}``. The standard library parses, because it keeps integers of any size
    exact; ``_result_json`` serialises with it too, so every accepted result replays exactly.
    """

    async def parse(request: Request) -> BodyModel:
        raw = await request.body()
        try:
            data = json.loads(raw, parse_constant=_refuse_constant) if raw.strip() else {}
        except (ValueError, RecursionError) as exc:
            raise InvalidRequestError(f"body: not valid JSON: {exc}") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequestError.from_errors(exc.errors(), prefix=("body",)) from exc

    return parse


def _body_schema(model: type[_Body]) -> dict[str, Any]:
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": model is not ClaimBody, "content": schema}}


router = APIRouter(prefix="/v1/records/{namespace}/{key}", tags=["records"])


def _json(body: dict[str, Any], status_code: int = 200, **headers: str) -> Response:
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


def _result_json(result: Any, max_bytes: int) -> str:
    """The result as compact JSON text, exactly as it will be replayed."""
    try:
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except UnicodeEncodeError:
        # A lone surrogate escape cannot be UTF-8: keep it escaped, which is still valid JSON.
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
        size = len(text)
    except ValueError as exc:  # a number too large for a float, parsed as infinity
        raise InvalidRequestError(f"body.result: {exc}") from exc
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"The result is {size} bytes of JSON; this gateway stores at most {max_bytes}."
        )
    return text


def _completed(record: Record) -> dict[str, Any]:
    return {"outcome": "completed", "attempt": record.attempt, "completed_at": record.completed_at}


@router.post(
    "/claim",
    status_code=201,
    summary="Claim a key, or get the result of the work already done under it",
    openapi_extra=_body_schema(ClaimBody),
)
async def claim(
    namespace: Namespace,
    key: Key,
    body: Annotated[ClaimBody, Depends(_json_body(ClaimBody))],
    records: RecordsDep,
    request: Request,
) -> Response:
    answer = await records.claim(
        namespace,
        key,
        fingerprint=body.fingerprint,
        lease_ms=body.lease_ms,
        ttl_s=body.ttl_s,
    )
    record = answer.record
    if answer.claimed:
        request.state.outcome = "claimed"
        return _json(
            {
                "outcome": "claimed",
                "lease_token": record.lease_token,
                "attempt": record.attempt,
                "lease_expires_at": record.lease_expires_at,
            },
            201,
        )
    request.state.outcome = "replayed"
    replay = {**_completed(record), "result": orjson.Fragment(record.result or "null")}
    return _json(replay, 200, **{"Idempotent-Replayed": "true"})


@router.post(
    "/complete",
    summary="Store the result of the work the lease holder ran",
    openapi_extra=_body_schema(CompleteBody),
)
async def complete(
    namespace: Namespace,
    key: Key,
    body: Annotated[CompleteBody, Depends(_json_body(CompleteBody))],
    records: RecordsDep,
    settings: SettingsDep,
) -> Response:
    result = _result_json(body.result, settings.max_result_bytes)
    record = await records.complete(
        namespace,
        key,
        lease_token=body.lease_token,
        result=result,
        ttl_s=body.ttl_s,
    )
    return _json(_completed(record))


@router.post(
    "/release",
    status_code=204,
    summary="Give the key up so a retry can run now",
    openapi_extra=_body_schema(ReleaseBody),
)
async def release(
    namespace: Namespace,
    key: Key,
    body: Annotated[ReleaseBody, Depends(_json_body(ReleaseBody))],
    records: RecordsDep,
) -> Response:
    await records.release(namespace, key, lease_token=body.lease_token)
    return Response(status_code=204)


@router.post(
    "/extend",
    summary="Extend the holder's lease (a heartbeat for long work)",
    openapi_extra=_body_schema(ExtendBody),
)
async def extend(
    namespace: Namespace,
    key: Key,
    body: Annotated[ExtendBody, Depends(_json_body(ExtendBody))],
    records: RecordsDep,
) -> Response:
    lease_expires_at = await records.extend(
        namespace,
        key,
        lease_token=body.lease_token,
        lease_ms=body.lease_ms,
    )
    return _json({"lease_expires_at": lease_expires_at})


@router.get("", summary="Read a record (never its lease token)")
async def read(namespace: Namespace, key: Key, records: RecordsDep) -> Response:
    record = await records.get(namespace, key)
    return _json(
        {
            "namespace": record.namespace,
            "key": record.key,
            "status": record.status.value,
            "fingerprint": record.fingerprint,
            "attempt": record.attempt,
            "lease_expires_at": record.lease_expires_at,
            "expires_at": record.expires_at_s * 1000,
            "completed_at": record.completed_at,
            "result": orjson.Fragment(record.result or "null"),
        }
    )


@router.delete("", status_code=204, summary="Delete a record so the work runs again")
async def delete(namespace: Namespace, key: Key, records: RecordsDep) -> Response:
    await records.delete(namespace, key)
    return Response(status_code=204)
