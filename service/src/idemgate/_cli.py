"""The ``idemgate`` command: ``serve`` the gateway, ``create-table`` in DynamoDB."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from idemgate._exceptions import IdemgateError
from idemgate._settings import Settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="idemgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway over HTTP")
    serve.add_argument("--host", default=defaults.host, help="address to listen on")
    serve.add_argument("--port", type=int, default=defaults.port, help="port to listen on")
    serve.add_argument("--storage", default=defaults.storage, help="storage URL")
    serve.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")

    create = commands.add_parser(
        "create-table", help="create the DynamoDB table with TTL on (harmless to repeat)"
    )
    create.add_argument("--storage", default=defaults.storage, help="dynamodb://TABLE?... URL")
    return parser


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from idemgate._storage import parse_storage_url

    parse_storage_url(args.storage)
    # Worker processes read their settings from the environment, like any other setting.
    os.environ["IDEMGATE_STORAGE"] = args.storage
    settings = Settings()
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idemgate-metrics-")
    from idemgate._observability import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(
        "idemgate._app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_keep_alive=settings.keep_alive_s,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="idemgate._http:OneWriteHttpToolsProtocol",
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
    )


# A deploy step, not a request path: a DynamoDB that is still starting (DynamoDB Local in a
# fresh container) may take far longer than a request's storage timeout to answer first.
_CREATE_TABLE_TIMEOUT_MS = 30_000


def _create_table(args: argparse.Namespace) -> None:
    import asyncio

    from idemgate._exceptions import ConfigurationError
    from idemgate._storage import DynamoDBLocation, parse_storage_url
    from idemgate._storage._dynamodb import DynamoDBClient, create_table

    location = parse_storage_url(args.storage)
    if not isinstance(location, DynamoDBLocation):
        raise ConfigurationError("create-table needs a dynamodb://TABLE?... storage URL")
    settings = Settings()

    async def create() -> None:
        client = DynamoDBClient(
            location,
            pool_size=1,
            timeout_ms=max(settings.storage_timeout_ms, _CREATE_TABLE_TIMEOUT_MS),
            max_attempts=settings.storage_max_attempts,
        )
        try:
            await create_table(client)
        finally:
            await client.close()

    asyncio.run(create())
    print(f"table {location.table!r} is ready, with TTL on its expiry attribute")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            _serve(args)
        else:
            _create_table(args)
    except IdemgateError as exc:
        print(f"idemgate: {exc}", file=sys.stderr)
        return 1
    return 0
