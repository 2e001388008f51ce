"""The ``idemgate`` command: serve, create-table, token, records and backup."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idemgate._exceptions import ConfigurationError, IdemgateError
from idemgate._settings import Settings

__all__ = ["main"]


_DESCRIPTION = (
    "idemgate: an HTTP idempotency gateway. Serve it, create its DynamoDB table, list and act "
    "on the records of a running gateway, or back up its SQLite file."
)
_DEFAULT_URL = "http://127.0.0.1:8080"
# Table and index creation is a control-plane call, run once: it may take seconds to answer.
_CREATE_TABLE_TIMEOUT_MS = 30_000


def _setting(text: str, name: str) -> str:
    """A flag's help, naming its default (the environment's, if set) and that variable."""
    return f"{text} (default: %(default)s; environment: IDEMGATE_{name.upper()})"


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="idemgate", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway over HTTP")
    serve.add_argument(
        "--host", default=defaults.host, help=_setting("address to listen on", "host")
    )
    serve.add_argument(
        "--port", type=int, default=defaults.port, help=_setting("port to listen on", "port")
    )
    serve.add_argument(
        "--storage",
        default=defaults.storage,
        help=_setting("storage URL", "storage"),
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=_setting("worker processes", "workers"),
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=defaults.allow_anonymous,
        help=_setting(
            "serve a non-loopback address without a policy file: anyone may call",
            "allow_anonymous",
        ),
    )

    create = commands.add_parser(
        "create-table", help="create the DynamoDB table with TTL on (harmless to repeat)"
    )
    create.add_argument(
        "--storage",
        default=defaults.storage,
        help=_setting("dynamodb://TABLE?... URL", "storage"),
    )

    records = commands.add_parser(
        "records", help="list, read, expire or delete records on a running gateway"
    )
    records.add_argument(
        "--url",
        default=os.environ.get("IDEMGATE_URL", _DEFAULT_URL),
        help=f"the gateway's base URL (default: {_DEFAULT_URL}; environment: IDEMGATE_URL)",
    )
    records.add_argument(
        "--token",
        default=os.environ.get("IDEMGATE_TOKEN"),
        help="sent as 'Authorization: Bearer TOKEN' (environment: IDEMGATE_TOKEN)",
    )
    actions = records.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a namespace's records, latest lease end first")
    listing.add_argument("namespace")
    listing.add_argument("--status", choices=("in_progress", "completed"))
    listing.add_argument("--limit", type=int, default=20, help="records per page (1 to 100)")
    listing.add_argument("--cursor", help="the cursor a previous page printed")
    for action, text in (
        ("get", "one record (never its lease token)"),
        ("expire", "end an in-progress lease now, so the next claim takes over"),
        ("delete", "forget a record, so its work runs again"),
    ):
        one = actions.add_parser(action, help=text)
        one.add_argument("namespace")
        one.add_argument("key")

    backup = commands.add_parser(
        "backup", help="copy the SQLite file, consistent, while the gateway runs"
    )
    backup.add_argument("path", type=Path, help="the backup file to write (must not exist)")
    backup.add_argument(
        "--storage",
        default=defaults.storage,
        help=_setting("the sqlite:///PATH to back up", "storage"),
    )

    token = commands.add_parser("token", help="bearer tokens in the policy file")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    policy_file = argparse.ArgumentParser(add_help=False)
    policy_file.add_argument(
        "--file",
        type=Path,
        default=defaults.auth_file,
        help="the policy file (default: IDEMGATE_AUTH_FILE)",
    )
    token_create = token_commands.add_parser(
        "create", parents=[policy_file], help="add a token; prints it once"
    )
    token_create.add_argument("--name", required=True, help="the principal's name, in logs")
    token_create.add_argument("--role", choices=("client", "admin"), default="client")
    token_create.add_argument(
        "--namespaces",
        required=True,
        help="comma-separated names or shell patterns, e.g. 'orders,payments-*' or '*'",
    )
    token_commands.add_parser(
        "list", parents=[policy_file], help="names, roles and namespaces (never hashes)"
    )
    token_revoke = token_commands.add_parser(
        "revoke", parents=[policy_file], help="remove a principal"
    )
    token_revoke.add_argument("name")
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _make_dev_policy() -> None:
    """A policy of one fresh admin token, in a new private file; the token is printed."""
    from idemgate._auth import PolicyDocument, PrincipalEntry, dump_policy, new_token, token_sha256

    token = new_token()
    path = Path(tempfile.mkdtemp(prefix="idemgate-dev-")) / "policy.toml"
    entry = PrincipalEntry(
        name="dev", role="admin", namespaces=("*",), token_sha256=token_sha256(token)
    )
    dump_policy(PolicyDocument(principals=(entry,)), path)
    os.environ["IDEMGATE_AUTH_FILE"] = str(path)
    print(f"idemgate: development token (admin, every namespace, this run only): {token}")
    print(f'idemgate: curl -H "Authorization: Bearer {token}" ...', flush=True)


def _check_access_policy(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings once a policy is in place, or open mode is safe or asked for."""
    from idemgate._auth import load_policy

    if settings.dev_token:
        if settings.auth_file is not None:
            raise ConfigurationError(
                "IDEMGATE_DEV_TOKEN makes its own policy: unset IDEMGATE_AUTH_FILE, or drop "
                "IDEMGATE_DEV_TOKEN and use `idemgate token create`"
            )
        _make_dev_policy()
        settings = Settings()
    log = logging.getLogger("idemgate")
    if settings.auth_file is not None:
        policy = load_policy(settings.auth_file, server_id=settings.auth_server_id)
        log.info(
            "policy %s: %d principals",
            settings.auth_file,
            len(policy.document.principals),
        )
        return settings
    if _is_loopback(args.host):
        log.warning(
            "no policy file (IDEMGATE_AUTH_FILE): anyone who can reach %s may call; "
            "fine on loopback, see docs/security.md before serving further",
            args.host,
        )
        return settings
    if args.allow_anonymous:
        log.warning("serving %s without a policy: anyone may read and delete records", args.host)
        return settings
    raise ConfigurationError(
        f"refusing to serve {args.host} without a policy: anyone who reaches it could read, "
        "complete and delete every record. Set IDEMGATE_AUTH_FILE (see docs/security.md; "
        "`idemgate token create` makes one), or pass --allow-anonymous "
        "(IDEMGATE_ALLOW_ANONYMOUS=true) to serve it open on purpose"
    )


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

    log_config = configure_logging(settings.log_level)
    settings = _check_access_policy(args, settings)
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
        log_config=log_config,  # applied again in each worker process
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


def _token(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from idemgate._auth import (
        PolicyDocument,
        PrincipalEntry,
        dump_policy,
        load_document,
        new_token,
        token_sha256,
        validation_text,
    )

    path: Path | None = args.file
    if path is None:
        raise ConfigurationError("no policy file: set IDEMGATE_AUTH_FILE or pass --file")
    creating = args.token_command == "create" and not path.exists()
    document = PolicyDocument() if creating else load_document(path)
    if args.token_command == "list":
        for entry in document.principals:
            kind = "token" if entry.token_sha256 else f"aws {entry.aws_arn}"
            print(f"{entry.name}\t{entry.role}\t{','.join(entry.namespaces)}\t{kind}")
        return
    if args.token_command == "revoke":
        kept = tuple(e for e in document.principals if e.name != args.name)
        if len(kept) == len(document.principals):
            raise ConfigurationError(f"no principal named {args.name!r} in {path}")
        dump_policy(document.model_copy(update={"principals": kept}), path)
        print(f"revoked {args.name!r}: gateways stop accepting it within a second or two")
        return
    if any(entry.name == args.name for entry in document.principals):
        raise ConfigurationError(f"{path} already has a principal named {args.name!r}")
    namespaces = tuple(n.strip() for n in args.namespaces.split(",") if n.strip())
    token = new_token()
    try:
        entry = PrincipalEntry(
            name=args.name,
            role=args.role,
            namespaces=namespaces,
            token_sha256=token_sha256(token),
        )
    except ValidationError as exc:
        raise ConfigurationError(f"cannot add {args.name!r}: {validation_text(exc)}") from exc
    updated = document.model_copy(update={"principals": (*document.principals, entry)})
    dump_policy(updated, path)
    print(f"added {args.name!r} ({args.role}: {','.join(namespaces)}) to {path}", file=sys.stderr)
    print("the token, shown only this once:", file=sys.stderr)
    print(token)


class _GatewayError(IdemgateError):
    """The gateway answered an error, or could not be reached."""


def _call_gateway(args: argparse.Namespace, method: str, path: str) -> Any:
    """The gateway's JSON answer to ``method path``; None for 204."""
    request = urllib.request.Request(f"{args.url.rstrip('/')}{path}", method=method)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
            detail = f"{problem['code']}: {problem['detail']}"
        except (ValueError, KeyError, TypeError):
            detail = exc.reason
        raise _GatewayError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _GatewayError(f"cannot reach the gateway at {args.url}: {exc}") from exc
    return json.loads(body) if body else None


def _records(args: argparse.Namespace) -> None:
    quote = urllib.parse.quote
    path = f"/v1/records/{quote(args.namespace, safe='')}"
    if args.action == "list":
        query = {"limit": args.limit, "status": args.status, "cursor": args.cursor}
        path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        answer = _call_gateway(args, "GET", path)
    else:
        path += f"/{quote(args.key, safe='')}"
        method, suffix = {
            "get": ("GET", ""),
            "expire": ("POST", "/expire"),
            "delete": ("DELETE", ""),
        }[args.action]
        answer = _call_gateway(args, method, path + suffix)
    if answer is not None:
        print(json.dumps(answer, indent=2, ensure_ascii=False))


def _backup(args: argparse.Namespace) -> None:
    import sqlite3

    from idemgate._exceptions import ConfigurationError
    from idemgate._storage import SQLiteLocation, parse_storage_url

    location = parse_storage_url(args.storage)
    if not isinstance(location, SQLiteLocation):
        raise ConfigurationError("backup copies SQLite storage: give --storage sqlite:///PATH")
    source_path = Path(location.path).resolve()
    if not source_path.is_file():
        raise ConfigurationError(f"no SQLite file at {source_path}")
    if args.path.exists():
        raise ConfigurationError(f"{args.path} exists: give the backup a new name")
    # SQLite's online backup API copies a consistent snapshot while writers go on; "ro" keeps
    # this process from ever writing the live file.
    source = sqlite3.connect(f"{source_path.as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(args.path)
    try:
        source.backup(target)
    except sqlite3.Error as exc:
        raise ConfigurationError(f"backup of {source_path} failed: {exc}") from exc
    finally:
        target.close()
        source.close()
    print(f"backed up {source_path} to {args.path.resolve()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {
        "serve": _serve,
        "create-table": _create_table,
        "token": _token,
        "records": _records,
        "backup": _backup,
    }[args.command]
    try:
        run(args)
    except IdemgateError as exc:
        print(f"idemgate: {exc}", file=sys.stderr)
        return 1
    return 0
