"""Claims driven straight into an ASGI app in this process, with no HTTP server in between.

For ``bench/instructions.py``, which counts the instructions of this process under callgrind:
a run of more claims minus a run of fewer leaves what the extra claims cost. The requests are
the ones wrk's ``claims.lua`` posts (fresh keys over four namespaces, the same body), and the
event loop gets a turn every ``_TURN`` claims, as it would between a server's reads, so the
ledger settles as it does when serving.

    python -m bench._driven gateway|featured|floor SQLITE_FILE CLAIMS
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import uvloop

__all__ = ["APPS"]

APPS = ("gateway", "featured", "floor")
WARMUP = 1000
_TURN = 64
_BODY = b'{"lease_ms":60000,"ttl_s":86400}'
_HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(_BODY)),
]


def _app(name: str) -> Any:
    if name == "gateway":
        from idemgate._app import create_app

        return create_app()
    from bench import _floor

    return _floor.featured_app if name == "featured" else _floor.claiming_app


def _scope(number: int) -> dict[str, Any]:
    path = f"/v1/records/ns{number % 4:04d}/key-{number}/claim"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(_HEADERS),
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": _BODY, "more_body": False}


async def _claim(app: Any, number: int) -> None:
    statuses = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(_scope(number), _receive, send)
    if statuses != [201]:
        raise RuntimeError(f"claim {number} was answered {statuses}, not 201")


async def _drive(name: str, claims: int) -> None:
    app = _app(name)
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    for number in range(WARMUP + claims):
        await _claim(app, number)
        if number % _TURN == 0:
            await asyncio.sleep(0)
    await to_app.put({"type": "lifespan.shutdown"})
    await from_app.get()
    await lifespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=APPS)
    parser.add_argument("sqlite_file")
    parser.add_argument("claims", type=int)
    args = parser.parse_args()
    os.environ["IDEMGATE_STORAGE"] = f"sqlite:///{args.sqlite_file}"
    from idemgate._observability import configure_logging
    from idemgate._settings import Settings

    configure_logging(Settings().log_level)
    uvloop.run(_drive(args.app, args.claims))


if __name__ == "__main__":
    main()
