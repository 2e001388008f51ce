"""What the benchmarks run against: one DynamoDB Local, gateways and boto3 clients, on loopback.

Also the raw conditional writes the gateway makes, so the boto3 baselines do exactly the same
DynamoDB work as a gateway claim (the item layout of docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from idemgate.testing import DynamoDBLocal, GatewayServer, free_port
from idemgate.testing import _stop as stop_process
from idemgate.testing import _wait_for_port as wait_for_port

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["AWS_ENV", "Lab", "Served", "claim_item", "process_cpu_s", "raw_claim", "raw_complete"]

# DynamoDB Local accepts any credentials; gateways and cold-start interpreters inherit these.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
GATEWAY_TABLE = "idemgate-bench"
LEASE_MS = 60_000
TTL_S = 86_400
FLOOR_START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Served:
    """A server the bench started: where it listens and its process."""

    url: str
    pid: int


class Lab:
    """The shared DynamoDB Local, and gateways started on demand, their logs in ``work_dir``."""

    def __init__(self, work_dir: Path, stack: contextlib.ExitStack) -> None:
        self.work_dir = work_dir
        self.gateway_log = work_dir / "gateways.log"
        os.environ.update(AWS_ENV)
        self.dynamodb = stack.enter_context(DynamoDBLocal())
        self.gateway_table = self.create_gateway_table(GATEWAY_TABLE)

    def dynamodb_url(self, table: str) -> str:
        return self.dynamodb.storage_url(table)

    def sqlite_path(self, name: str) -> Path:
        return self.work_dir / f"{name}.db"

    def create_gateway_table(self, table: str) -> str:
        """A table made by ``idemgate create-table``, as an operator makes it."""
        command = [sys.executable, "-m", "idemgate", "create-table"]
        subprocess.run(
            [*command, "--storage", self.dynamodb_url(table)], check=True, stdout=subprocess.DEVNULL
        )
        return table

    @contextlib.contextmanager
    def gateway(self, storage: str, *, workers: int = 1) -> Iterator[GatewayServer]:
        """``idemgate serve`` with its default settings (access log on), logging to a file."""
        server = GatewayServer(storage=storage, workers=workers)
        # GatewayServer's process inherits our stdout and stderr: point them at the log file
        # while it starts, so per-request log lines neither flood the terminal nor get lost.
        with _stdio_to(self.gateway_log):
            server.start()
        try:
            yield server
        finally:
            server.stop()

    @contextlib.contextmanager
    def floor_server(self, storage: str | None = None) -> Iterator[str]:
        """A ``bench._floor`` app under uvicorn with the gateway's loop and protocol; its URL.

        With ``storage``, the app that makes each claim on it; without, the fixed answer.
        """
        with self.floor_process(storage) as served:
            yield served.url

    @contextlib.contextmanager
    def floor_process(
        self, storage: str | None = None, *, featured: bool = False
    ) -> Iterator[Served]:
        """``floor_server``, with the process's ID too; ``featured``: ``featured_app``."""
        port = free_port()
        if storage:
            app = "bench._floor:featured_app" if featured else "bench._floor:claiming_app"
        else:
            app = "bench._floor:app"
        lifespan = "on" if storage else "off"
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--loop", "uvloop", "--lifespan", lifespan, "--no-access-log"]
        command += ["--http", "idemgate._http:OneWriteHttpToolsProtocol"]
        env = {**os.environ, "IDEMGATE_STORAGE": storage} if storage else None
        with _stdio_to(self.gateway_log):
            # A session of its own, as the gateways have: the scheduler then shares the
            # cores between them and the floors alike.
            process = subprocess.Popen(
                command, cwd=Path(__file__).parent.parent, env=env, start_new_session=True
            )
        try:
            wait_for_port(port, process, time.monotonic() + FLOOR_START_TIMEOUT_S)
            yield Served(f"http://127.0.0.1:{port}", process.pid)
        finally:
            stop_process(process)

    def boto3_client(self, *, pool_size: int = 10) -> DynamoDBClient:
        """A client configured like the gateway's own (pool, timeouts, standard retries)."""
        config = Config(
            max_pool_connections=pool_size,
            connect_timeout=2,
            read_timeout=2,
            retries={"max_attempts": 2, "mode": "standard"},
            tcp_keepalive=True,
        )
        return boto3.session.Session().client(
            "dynamodb", endpoint_url=self.dynamodb.endpoint_url, config=config
        )


@contextlib.contextmanager
def _stdio_to(path: Path) -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def claim_item(pk: str, *, now_ms: int, status: str = "in_progress") -> dict[str, Any]:
    """A record as the gateway stores it in DynamoDB (docs/operations.md)."""
    item: dict[str, Any] = {
        "pk": {"S": pk},
        "status": {"S": status},
        "attempt": {"N": "1"},
        "lease_token": {"S": secrets.token_urlsafe(18)},
        "lease_expires_at": {"N": str(now_ms + LEASE_MS)},
        "ttl_s": {"N": str(TTL_S)},
        "expires_at": {"N": str(now_ms // 1000 + TTL_S)},
    }
    if status == "completed":
        item["completed_at"] = {"N": str(now_ms)}
        item["result"] = {"S": '{"ok":true}'}
    return item


def raw_claim(client: DynamoDBClient, table: str, pk: str) -> str:
    """The gateway's fresh claim, straight to DynamoDB: one conditional PutItem. Its token."""
    now_ms = time.time_ns() // 1_000_000
    item = claim_item(pk, now_ms=now_ms)
    client.put_item(
        TableName=table,
        Item=item,
        ConditionExpression="attribute_not_exists(#pk) OR #expires <= :now_s",
        ExpressionAttributeNames={"#pk": "pk", "#expires": "expires_at"},
        ExpressionAttributeValues={":now_s": {"N": str(now_ms // 1000)}},
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    token: str = item["lease_token"]["S"]
    return token


def raw_complete(client: DynamoDBClient, table: str, pk: str, token: str) -> None:
    """The gateway's complete, straight to DynamoDB: one UpdateItem conditional on the token."""
    now_ms = time.time_ns() // 1_000_000
    client.update_item(
        TableName=table,
        Key={"pk": {"S": pk}},
        UpdateExpression=(
            "SET #status = :completed, #result = :result, #completed = :now_ms, "
            "#expires = :expires_s"
        ),
        ConditionExpression=("#status = :in_progress AND #token = :token AND #expires > :now_s"),
        ExpressionAttributeNames={
            "#status": "status",
            "#result": "result",
            "#completed": "completed_at",
            "#expires": "expires_at",
            "#token": "lease_token",
        },
        ExpressionAttributeValues={
            ":completed": {"S": "completed"},
            ":in_progress": {"S": "in_progress"},
            ":result": {"S": '{"ok":true}'},
            ":now_ms": {"N": str(now_ms)},
            ":now_s": {"N": str(now_ms // 1000)},
            ":expires_s": {"N": str(now_ms // 1000 + TTL_S)},
            ":token": {"S": token},
        },
        ReturnValues="ALL_NEW",
    )


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and of every live process under it."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # The command name, in parentheses, may hold spaces: the fields start after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += times.get(current, 0.0)
        pending += [child for child, parent in parents.items() if parent == current]
    return total
