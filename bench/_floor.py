"""Floors under any Python ASGI gateway here: uvicorn and the claim's own work, no framework.

Run by section 3 with the gateway's own uvicorn settings, so the time the gateway adds can be
split into what the HTTP server costs on this box, what the claim itself costs (record logic
and storage client), and what the framework around them costs.

- ``app`` reads the claim and answers a fixed 201.
- ``claiming_app`` also makes the claim, through ``RecordService`` on the storage that
  ``IDEMGATE_STORAGE`` names, then answers the same fixed 201: no routing, no validation, no
  metrics, no log.
"""

from __future__ import annotations

from typing import Any

from idemgate._records import RecordService
from idemgate._settings import Settings
from idemgate._storage import open_storage

__all__ = ["app", "claiming_app"]

_ANSWER = b'{"status":"claimed","lease_token":"AAAAAAAAAAAAAAAAAAAAAAAA","attempt":1}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))]
_records: list[RecordService] = []  # set by the lifespan


async def _read_body(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def _answer(send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _read_body(receive)
        await _answer(send)


async def claiming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        # /v1/records/{namespace}/{key}/claim, as wrk's claims.lua posts it
        namespace, key = scope["path"].split("/")[3:5]
        await _read_body(receive)
        await _records[0].claim(
            namespace, key, fingerprint=None, lease_ms=60_000, ttl_ms=86_400_000
        )
        await _answer(send)


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()
    storage = open_storage(Settings())
    _records.append(RecordService(storage))
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await storage.close()
    await send({"type": "lifespan.shutdown.complete"})
