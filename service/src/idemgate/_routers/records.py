"""``/v1/records/{namespace}/{key}``: claim, complete, release, extend, read and delete."""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, Literal, get_type_hints

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from idemgate._deps import records_of, settings_of
from idemgate._exceptions import (
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from idemgate._problems import documented_problem
from idemgate._records import Claim, RecordService
from idemgate._storage import Record, Status

__all__ = ["RecordsLane", "listing_router", "router"]

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KEY_PATTERN = r"^[A-Za-z0-9._~:@=+-]{1,255}$"
MAX_LEASE_MS = 900_000
MAX_TTL_S = 2_592_000
# Below a load balancer's idle timeout (an ALB's is 60 s), so a waiting claim is never cut off.
MAX_WAIT_MS = 50_000

Namespace = Annotated[
    str, Path(pattern=NAMESPACE_PATTERN, description="One per function or tenant.")
]
Key = Annotated[str, Path(pattern=KEY_PATTERN, description="The idempotency key.")]
LeaseToken = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
# At least 22 base64url characters: 128 bits of randomness, as the gateway's own tokens carry.
PROPOSED_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{22,128}$"


def _whole_number(value: Any) -> Any:
    """A whole number written with a fraction (``9683.0``) as the integer it is, as JSON
    Schema's ``integer`` counts it; anything else is left for strict validation to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Whole = BeforeValidator(_whole_number)
LeaseMs = Annotated[
    int, Field(ge=1, le=MAX_LEASE_MS, description="Lease length, milliseconds."), Whole
]
TtlS = Annotated[
    int, Field(ge=1, le=MAX_TTL_S, description="Seconds kept after completion."), Whole
]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ClaimBody(_Body):
    fingerprint: str | None = Field(default=None, max_length=128)
    lease_token: str | None = Field(
        default=None,
        pattern=PROPOSED_TOKEN_PATTERN,
        description=(
            "A random token the caller made, resent unchanged on its retries of this claim: a "
            "retry that finds the key in progress under it is answered 201 with that lease, "
            "even when the first try's answer was lost. Omitted, the gateway makes one."
        ),
    )
    lease_ms: LeaseMs = 60_000
    ttl_s: TtlS = 86_400
    wait_ms: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_WAIT_MS,
            description="While another caller holds the key, wait up to this long for its outcome.",
        ),
        Whole,
    ] = 0


# An empty claim body means every default; the default here also documents the body as optional.
_NO_CLAIM_BODY = ClaimBody()


class CompleteBody(_Body):
    lease_token: LeaseToken
    result: Any = Field(description="Any JSON value, null included; replayed exactly.")
    ttl_s: TtlS | None = None


class ReleaseBody(_Body):
    lease_token: LeaseToken


class ExtendBody(_Body):
    lease_token: LeaseToken
    lease_ms: LeaseMs


class _RefusedJSONError(ValueError):
    """JSON the gateway refuses, with a message written for the caller."""


def _refuse_constant(name: str) -> Any:
    raise _RefusedJSONError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _RefusedJSONError(f"member {name!r} appears more than once in an object")
            seen.add(name)
    return members


_JSON = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_members)
MAX_JSON_DEPTH = 64
# A string (skipped whole) or a bracket: what nesting depth is counted from. The quantifiers
# are possessive: an unterminated string must fail in linear time, not by backtracking.
_JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def _too_deep(raw: bytes) -> bool:
    """Whether arrays and objects nest deeper than ``MAX_JSON_DEPTH`` in ``raw``."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for token in _JSON_STRUCTURE.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif bracket in (b"]", b"}"):
            depth -= 1
    return False


_SCALARS = (str, int, bool, type(None))
# Sought as a byte value: a bytes operand costs bytes.__contains__ a buffer export.
_BACKSLASH = ord("\\")


def _flat_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as an object of scalars when orjson parses it as the standard library would.

    orjson keeps the last of duplicate members, so it is trusted only when every quote in
    ``raw`` is one of the members' names or string values (no escapes, no repeated member);
    anything else (nesting, floats, numbers beyond 64 bits, errors) returns None.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict or _BACKSLASH in raw:
        return None
    strings = 0
    for member in value.values():
        kind = type(member)
        if kind is str:
            strings += 1
        elif kind not in _SCALARS:
            return None
    return value if raw.count(b'"') == 2 * (len(value) + strings) else None


def _parse_json(raw: bytes) -> Any:
    """The JSON value in ``raw``; ``InvalidRequestError`` in the caller's terms otherwise."""
    flat = _flat_object(raw)
    return flat if flat is not None else _parse_json_exactly(raw)


def _parse_json_exactly(raw: bytes) -> Any:
    """``_parse_json`` by the standard library alone: the reference the fast path matches."""
    if _too_deep(raw):
        raise InvalidRequestError(
            f"body: arrays and objects nest deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        return _JSON.decode(raw.decode())
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("body: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"body: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except _RefusedJSONError as exc:
        raise InvalidRequestError(f"body: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of thousands of digits
        raise InvalidRequestError("body: a value in it is beyond what JSON parsing allows") from exc


async def _read_body(receive: Receive, model: type[_Body]) -> _Body:
    """The body, parsed as JSON whatever its Content-Type, as ``model``; empty means ``{}``.

    The standard library parses what orjson might parse differently (``_flat_object``), because
    it keeps integers of any size exact; ``_result_json`` serialises with it too, so every
    accepted result replays exactly.
    """
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    data = _parse_json(raw) if raw.strip() else {}
    try:  # model_validate, without its wrapper's call
        body: _Body = model.__pydantic_validator__.validate_python(data)
    except ValidationError as exc:
        raise InvalidRequestError.from_errors(exc.errors(), prefix=("body",)) from exc
    return body


_NAMESPACE = re.compile(NAMESPACE_PATTERN)
_KEY = re.compile(KEY_PATTERN)
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# What the lane calls: the request, its namespace and its key, already split from the path.
LaneHandler = Callable[[Request, str, str], Coroutine[Any, Any, Response]]


def _invalid_path(namespace: str, key: str) -> InvalidRequestError:
    return InvalidRequestError.from_errors(
        [
            {"loc": ("path", name), "msg": f"String should match pattern '{pattern.pattern}'"}
            for name, value, pattern in (("namespace", namespace, _NAMESPACE), ("key", key, _KEY))
            if not pattern.fullmatch(value)
        ]
    )


async def _refuse_path(request: Request, namespace: str, key: str) -> Response:
    raise _invalid_path(namespace, key)


class RecordRoute(APIRoute):
    """A records route: FastAPI documents it from the endpoint's signature; ``RecordsLane``
    serves it with ``lane_handler``, which reads the body into the endpoint's ``body`` model
    and calls the endpoint, with no dependency solving, once the path's namespace and key
    are known to match their patterns.
    """

    def lane_handler(self) -> LaneHandler:
        endpoint = self.endpoint
        body_model = get_type_hints(endpoint).get("body")

        async def serve(request: Request, namespace: str, key: str) -> Response:
            response: Response
            if body_model is None:
                response = await endpoint(request, namespace=namespace, key=key)
            else:
                body = await _read_body(request.receive, body_model)
                response = await endpoint(request, namespace=namespace, key=key, body=body)
            return response

        return serve

    def get_route_handler(self) -> Handler:
        """``lane_handler`` as FastAPI calls it, for a request the lane leaves to FastAPI."""
        serve = self.lane_handler()

        async def handle(request: Request) -> Response:
            params = request.path_params
            namespace, key = params["namespace"], params["key"]
            if not (_NAMESPACE.fullmatch(namespace) and _KEY.fullmatch(key)):
                raise _invalid_path(namespace, key)
            return await serve(request, namespace, key)

        return handle


class Claimed(BaseModel):
    outcome: Literal["claimed"]
    lease_token: str = Field(description="The claim's `lease_token` if it sent one.")
    attempt: int
    lease_expires_at: int


class Completed(BaseModel):
    outcome: Literal["completed"]
    attempt: int
    completed_at: int


class Replayed(Completed):
    result: Any = Field(description="The stored result, exactly as it was completed.")


class Extended(BaseModel):
    lease_expires_at: int


class RecordView(BaseModel):
    namespace: str
    key: str
    status: Literal["in_progress", "completed"]
    fingerprint: str | None
    attempt: int
    lease_expires_at: int
    expires_at: int
    completed_at: int | None
    result: Any


router = APIRouter(
    prefix="/v1/records/{namespace}/{key}",
    tags=["records"],
    route_class=RecordRoute,
    responses={
        "4XX": documented_problem("RFC 9457 problem details, with `code`"),
        "503": documented_problem("STORAGE_UNAVAILABLE, with Retry-After"),
    },
)


class _JSONAnswer(Response):
    """A JSON answer whose headers are built directly: no mapping to normalise. The records
    lane sends its two messages itself."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
            *headers,
        ]


_REPLAYED = [(b"idempotent-replayed", b"true")]


def _json(
    body: dict[str, Any], status_code: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return _JSONAnswer(orjson.dumps(body), status_code, headers or [])


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
        raise InvalidRequestError("body.result: a number too large to store as JSON") from exc
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"The result is {size} bytes of JSON; this gateway stores at most {max_bytes}."
        )
    return text


def _claiming(
    records: RecordService, namespace: str, key: str, body: ClaimBody
) -> Coroutine[Any, Any, Claim]:
    """The claim ``body`` asks for, waiting for another holder's outcome if it says so.

    Returns the call unawaited: the caller awaits it, with no coroutine of this function's own.
    """
    claim = (
        functools.partial(records.claim_waiting, wait_ms=body.wait_ms)
        if body.wait_ms
        else records.claim
    )
    return claim(
        namespace,
        key,
        fingerprint=body.fingerprint,
        lease_ms=body.lease_ms,
        ttl_ms=body.ttl_s * 1000,
        lease_token=body.lease_token,
    )


def _claimed(record: Record) -> dict[str, Any]:
    """The 201 answer of a claim that ``record``'s holder now runs."""
    return {
        "outcome": "claimed",
        "lease_token": record.lease_token,
        "attempt": record.attempt,
        "lease_expires_at": record.lease_expires_at,
    }


def _completed(record: Record) -> dict[str, Any]:
    return {
        "outcome": "completed",
        "attempt": record.attempt,
        "completed_at": record.completed_at,
        "expires_at": record.expires_at,
    }


@router.post(
    "/claim",
    status_code=201,
    summary="Claim a key, or get the result of the work already done under it",
    responses={
        201: {"model": Claimed, "description": "Claimed: run the work"},
        200: {
            "model": Replayed,
            "description": "Completed before: the stored result (Idempotent-Replayed: true)",
        },
        409: documented_problem("IN_PROGRESS: another caller holds the lease"),
        422: documented_problem("FINGERPRINT_MISMATCH"),
    },
)
async def claim(
    request: Request, namespace: Namespace, key: Key, body: ClaimBody = _NO_CLAIM_BODY
) -> Response:
    answer = await _claiming(records_of(request), namespace, key, body)
    record = answer.record
    # What the access line and the metrics read: the scope's state, without a State around it.
    state = request.scope["state"]
    if answer.claimed:
        state["outcome"] = "claimed"
        state["attempt"] = record.attempt
        return _json(_claimed(record), 201)
    state["outcome"] = "replayed"
    replay = {**_completed(record), "result": orjson.Fragment(record.result or "null")}
    return _json(replay, 200, _REPLAYED)


@router.post(
    "/complete",
    summary="Store the result of the work the lease holder ran",
    responses={200: {"model": Completed, "description": "Stored"}},
)
async def complete(
    request: Request, namespace: Namespace, key: Key, body: CompleteBody
) -> Response:
    result = _result_json(body.result, settings_of(request).max_result_bytes)
    record = await records_of(request).complete(
        namespace,
        key,
        lease_token=body.lease_token,
        result=result,
        ttl_ms=None if body.ttl_s is None else body.ttl_s * 1000,
    )
    return _json(_completed(record))


@router.post(
    "/release",
    status_code=204,
    summary="Give the key up so a retry can run now",
)
async def release(request: Request, namespace: Namespace, key: Key, body: ReleaseBody) -> Response:
    await records_of(request).release(namespace, key, lease_token=body.lease_token)
    return Response(status_code=204)


@router.post(
    "/extend",
    summary="Extend the holder's lease (a heartbeat for long work)",
    responses={200: {"model": Extended, "description": "Extended"}},
)
async def extend(request: Request, namespace: Namespace, key: Key, body: ExtendBody) -> Response:
    lease_expires_at = await records_of(request).extend(
        namespace,
        key,
        lease_token=body.lease_token,
        lease_ms=body.lease_ms,
    )
    return _json({"lease_expires_at": lease_expires_at})


def _shown(record: Record) -> dict[str, Any]:
    """A record as every read shows it: never its lease token."""
    return {
        "namespace": record.namespace,
        "key": record.key,
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "attempt": record.attempt,
        "lease_expires_at": record.lease_expires_at,
        "expires_at": record.expires_at,
        "completed_at": record.completed_at,
        "result": orjson.Fragment(record.result or "null"),
    }


@router.get(
    "",
    summary="Read a record (never its lease token)",
    responses={200: {"model": RecordView, "description": "The live record"}},
)
async def read(request: Request, namespace: Namespace, key: Key) -> Response:
    return _json(_shown(await records_of(request).get(namespace, key)))


@router.delete("", status_code=204, summary="Delete a record so the work runs again")
async def delete(request: Request, namespace: Namespace, key: Key) -> Response:
    await records_of(request).delete(namespace, key)
    return Response(status_code=204)


@router.post(
    "/expire",
    summary="End an in-progress lease now, so the next claim takes over",
    responses={
        200: {"model": RecordView, "description": "The record as it now is"},
        404: documented_problem("NOT_FOUND: no live record"),
    },
)
async def expire(request: Request, namespace: Namespace, key: Key) -> Response:
    """A completed record is left as it is. Answers the record as it now is."""
    return _json(_shown(await records_of(request).expire(namespace, key)))


MAX_LIST_LIMIT = 100


class RecordPage(BaseModel):
    items: list[RecordView]
    cursor: str | None = Field(description="The next page's cursor; null on the last page.")


listing_router = APIRouter(
    prefix="/v1/records/{namespace}",
    tags=["records"],
    responses={
        "4XX": documented_problem("RFC 9457 problem details, with `code`"),
        "503": documented_problem("STORAGE_UNAVAILABLE, with Retry-After"),
    },
)


@listing_router.get(
    "",
    summary="List a namespace's records, latest lease end first",
    responses={200: {"model": RecordPage, "description": "One page of records"}},
)
async def list_records(
    request: Request,
    namespace: Namespace,
    status: Annotated[Status | None, Query(description="Only records in this status.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=512, description="The `cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
) -> Response:
    """Answers `{"items": [record as GET shows it, ...], "cursor": next page or null}`."""
    listing = await records_of(request).list_namespace(
        namespace, status=status, cursor=cursor, limit=limit
    )
    return _json(
        {"items": [_shown(record) for record in listing.records], "cursor": listing.cursor}
    )


# "/v1/records/{namespace}/{key}[/{action}]": a namespace and a key that match their patterns
# (groups 1 and 2), or other segments (groups 3 and 4), which the lane refuses.
_LANE_PATH = re.compile(
    re.escape(router.prefix.removesuffix("/{namespace}/{key}"))
    + f"/(?:({NAMESPACE_PATTERN[1:-1]})/({KEY_PATTERN[1:-1]})|([^/]+)/([^/]+))(/[^/]+)?"
)


async def _not_found(request: Request, namespace: str = "", key: str = "") -> Response:
    """A path ending in a newline: Starlette's route patterns end with "$", which also matches
    before a final newline, so FastAPI would serve "/claim%0A" as "/claim"."""
    raise NotFoundError(f"No such endpoint: {request.method} {request.url.path!r}")


class RecordsLane:
    """Serves the records routes in front of FastAPI, straight from their endpoints.

    The routes are declared to FastAPI as usual (``router``, documented in OpenAPI from the
    endpoints' signatures), but a request of exactly a route's method and path shape is served
    here by ``RecordRoute``'s lane handler, and an error it raises goes to the app's handler
    for it, as FastAPI would; a path ending in a newline is not found. Every other request
    (another method, a stray segment, a ``root_path``) goes on to ``app``. Request IDs, body
    limits, metrics, the access log and authentication are the front layers outside this one,
    alike for every request. What this handler cannot honour (dependencies, header, query or
    cookie parameters, a response model, another path shape) is refused when the lane is built.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute] = router.routes) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], tuple[RecordRoute, LaneHandler]] = {}
        for route in routes:
            if isinstance(route, RecordRoute):
                _check_servable(route)
                for method in route.methods or ():
                    action = route.path.removeprefix(router.prefix)
                    self._routes[method, action] = (route, route.lane_handler())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope)
        if found is None:
            if not (scope["type"] == "http" and scope["path"].endswith("\n")):
                await self.app(scope, receive, send)
                return
            serve: LaneHandler = _not_found
            namespace = key = ""
        else:
            route, serve, namespace, key = found
            scope["route"] = route
            scope["path_params"] = {"namespace": namespace, "key": key}
        request = Request(scope, receive, send)
        try:
            response = await serve(request, namespace, key)
        except Exception as error:
            handlers = request.app.exception_handlers
            on_error = next((handlers[k] for k in type(error).__mro__ if k in handlers), None)
            if on_error is None:
                raise
            answer = on_error(request, error)
            response = await answer if inspect.isawaitable(answer) else answer
        if type(response) is _JSONAnswer:
            # What Response.__call__ sends, without a coroutine of its own for every answer.
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        else:
            await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[RecordRoute, LaneHandler, str, str] | None:
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        path = _LANE_PATH.fullmatch(scope["path"])
        if path is None:
            return None
        namespace, key, other_namespace, other_key, action = path.groups()
        found = self._routes.get((scope["method"], action or ""))
        if found is None:
            return None
        route, serve = found
        if namespace is None:
            return route, _refuse_path, other_namespace, other_key
        return route, serve, namespace, key


_SERVED_PARAMETERS = {"namespace", "key", "body"}


def _check_servable(route: RecordRoute) -> None:
    """Refuse, when the app is built, a records route whose declaration the lane would ignore."""
    dependant = route.dependant
    action = route.path.removeprefix(router.prefix)
    problems = []
    if not route.path.startswith(router.prefix) or action.count("/") > 1:
        problems.append(f"its path is not {router.prefix}[/action]")
    if route.dependencies or router.dependencies or dependant.dependencies:
        problems.append("it has dependencies (Depends)")
    for kind, params in (
        ("query", dependant.query_params),
        ("header", dependant.header_params),
        ("cookie", dependant.cookie_params),
    ):
        if params:
            problems.append(f"it has {kind} parameters ({', '.join(p.name for p in params)})")
    declared = {p.name for p in (*dependant.path_params, *dependant.body_params)}
    if not declared <= _SERVED_PARAMETERS or {"namespace", "key"} - declared:
        problems.append("its parameters are not exactly namespace, key and an optional body")
    special = (
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    if any(special):
        problems.append("it takes a parameter other than request that FastAPI would fill")
    if route.response_model is not None:
        problems.append("it has a response model (return a Response)")
    if problems:
        raise ConfigurationError(
            f"the records lane cannot serve {sorted(route.methods or ())} {route.path}: "
            + "; ".join(problems)
            + ". Serve it from another router, or teach RecordsLane and RecordRoute to."
        )
