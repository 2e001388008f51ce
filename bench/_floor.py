"""The floor under any Python ASGI gateway here: uvicorn answering a claim-sized 201, no framework.

Run by section 3 with the gateway's own uvicorn settings, so the time the gateway adds can be
split into what the HTTP server costs on this box and what the gateway itself costs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]

_ANSWER = b'{"status":"claimed","lease_token":"AAAAAAAAAAAAAAAAAAAAAAAA","attempt":1}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})
