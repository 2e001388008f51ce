"""Floors under any Python ASGI gateway here: uvicorn and the claim's own work, no framework.

Run by the gateway overhead and framework tax sections with the gateway's own uvicorn
settings, so the time the gateway adds can be split into what the HTTP server costs on this
box, what the claim itself costs (record logic and storage client), what the gateway's
features cost, and what the framework around them costs.

- ``app`` reads the claim and answers a fixed 201.
- ``claiming_app`` also makes the claim, through ``RecordService`` on the storage that
  ``IDEMGATE_STORAGE`` names, then answers the same fixed 201: no routing, no validation, no
  metrics, no log.
- ``featured_app`` also does, in one function, what the gateway does for every claim besides
  its framework, with the gateway's own code: a request ID (the caller's or a new one), the
  path matched as the records lane matches it, the body parsed and validated as a
  ``ClaimBody``, the answer built from the record with its ``X-Request-Id``, and the ledger
  entry that counts the claim into the metrics and writes its access line. What the gateway
  spends beyond it is the cost of its structure: layers, request and response objects, error
  handling.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from idemgate._observability import (
    _CLAIM_ROUTE,
    _LEDGER,
    NamespaceCounters,
    RequestContextMiddleware,
    _new_answer,
    configure_logging,
    flush_logs,
    new_request_id,
)
from idemgate._problems import body_too_large_response, internal_error_response
from idemgate._records import RecordService
from idemgate._routers.records import _LANE_PATH, ClaimBody, _claimed, _claiming, _read_body
from idemgate._settings import Settings
from idemgate._storage import open_storage

__all__ = ["app", "claiming_app", "featured_app"]

_ANSWER = b'{"status":"claimed","lease_token":"AAAAAAAAAAAAAAAAAAAAAAAA","attempt":1}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))]
_records: list[RecordService] = []  # set by the lifespan
_fronts: list[RequestContextMiddleware] = []  # featured_app's, for its ledger entries


async def _drain_body(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def _answer(send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _drain_body(receive)
        await _answer(send)


async def claiming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        # /v1/records/{namespace}/{key}/claim, as wrk's claims.lua posts it
        namespace, key = scope["path"].split("/")[3:5]
        await _drain_body(receive)
        await _records[0].claim(
            namespace, key, fingerprint=None, lease_ms=60_000, ttl_ms=86_400_000
        )
        await _answer(send)


async def featured_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    started = time.perf_counter()
    given_id, _, _ = RequestContextMiddleware._head(scope)
    request_id = given_id or new_request_id()
    namespace, key = _LANE_PATH.fullmatch(scope["path"]).group(1, 2)
    body = await _read_body(receive, ClaimBody)
    claim = await _claiming(_records[0], namespace, key, body)
    answer = orjson.dumps(_claimed(claim.record))
    headers = [
        (b"content-length", b"%d" % len(answer)),
        (b"content-type", b"application/json"),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
    _LEDGER.add(
        _new_answer(
            (
                _fronts[0],
                _CLAIM_ROUTE,
                scope["method"],
                scope["path"],
                201,
                "claimed",
                namespace,
                False,
                request_id,
                None,
                time.perf_counter() - started,
                time.time(),
            )
        )
    )


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()
    settings = Settings()
    configure_logging(settings.log_level)
    storage = open_storage(settings)
    _records.append(RecordService(storage))
    # Never called: the ledger reads its entries' interval, access-log switch and namespace
    # counters from the request context that answered them.
    _fronts.append(
        RequestContextMiddleware(
            app,
            log_requests=settings.access_log,
            max_body_bytes=settings.max_result_bytes,
            namespaces=NamespaceCounters(max_namespaces=settings.metrics_max_namespaces),
            internal_error=internal_error_response,
            body_too_large=body_too_large_response,
            settle_interval_ms=settings.access_log_flush_ms,
        )
    )
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await storage.close()
    flush_logs()
    await send({"type": "lifespan.shutdown.complete"})
