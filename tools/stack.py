"""`make stack`: the docker-compose stack without Docker.

DynamoDB Local on 127.0.0.1:8000, the table made by the compose `init` service's command, then the
compose `gateway` service's command on 127.0.0.1:8080. Both commands and their environments are
read from docker-compose.yml, with the containers' addresses swapped for loopback, so the two
stacks cannot drift apart. Ctrl-C or SIGTERM stops everything this script started.

The ports come from the environment: IDEMGATE_PORT for the gateway (the gateway's own setting)
and IDEMGATE_DYNAMODB_LOCAL_PORT for DynamoDB Local.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from idemgate._settings import Settings
from idemgate.testing import DynamoDBLocal
from idemgate.testing import _stop as stop_process

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DYNAMODB_PORT = 8000
DYNAMODB_PORT = int(os.environ.get("IDEMGATE_DYNAMODB_LOCAL_PORT", COMPOSE_DYNAMODB_PORT))
GATEWAY_PORT = Settings().port
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
# In compose, services reach each other by service name and the gateway listens on every
# interface of its container; here everything stays on loopback.
LOOPBACK_ADDRESSES = {
    f"http://dynamodb:{COMPOSE_DYNAMODB_PORT}": f"http://127.0.0.1:{DYNAMODB_PORT}",
    "0.0.0.0": "127.0.0.1",
}
# The compose file fixes the port inside the gateway's container; here it is the setting's.
PORT_OVERRIDES = {"IDEMGATE_PORT": str(GATEWAY_PORT)}
READY_TIMEOUT_S = 60.0
INIT_RETRY_PAUSE_S = 1.0


@dataclass(frozen=True)
class Step:
    """A compose service's process, as the stack runs it on this machine."""

    command: list[str]
    environment: dict[str, str]


def _on_loopback(value: str) -> str:
    for container_address, loopback_address in LOOPBACK_ADDRESSES.items():
        value = value.replace(container_address, loopback_address)
    return value


def compose_step(compose: dict[str, Any], service: str) -> Step:
    """The command and environment of a compose service, with the venv's executables."""
    spec = compose["services"][service]
    executable, *args = spec["command"]
    return Step(
        command=[str(Path(sys.executable).parent / executable), *map(_on_loopback, args)],
        environment={
            name: PORT_OVERRIDES.get(name, _on_loopback(str(value)))
            for name, value in spec["environment"].items()
        },
    )


def _ensure_free(port: int) -> None:
    # DynamoDBLocal and the readiness check would mistake another server on the port for ours.
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use: is another stack (or `make run`) running?")


@contextlib.contextmanager
def _running(step: Step) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(step.command, env={**os.environ, **step.environment})
    try:
        yield process
    finally:
        stop_process(process)


def _wait_ready(process: subprocess.Popen[bytes], stop: threading.Event) -> bool:
    """Whether the gateway answered /readyz before it exited, a stop was asked, or time ran out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while process.poll() is None and not stop.is_set() and time.monotonic() < deadline:
        # URLError is an OSError: refused while the gateway starts, 503 until storage answers.
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{GATEWAY_URL}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return True
        stop.wait(0.1)
    return False


def _create_table(init: Step, stop: threading.Event) -> bool:
    """Run the init step until it succeeds, a stop is asked, or time runs out.

    DynamoDB Local answers slowly while it warms up on a busy machine, so one storage timeout
    is not enough; creating the table is harmless to repeat.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.is_set():
        with _running(init) as creating:
            if creating.wait() == 0:
                return True
        if time.monotonic() >= deadline:
            return False
        print("stack: creating the table failed; retrying", file=sys.stderr, flush=True)
        stop.wait(INIT_RETRY_PAUSE_S)
    return False


def run(stop: threading.Event) -> int:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    init, gateway = compose_step(compose, "init"), compose_step(compose, "gateway")
    for port in (DYNAMODB_PORT, GATEWAY_PORT):
        _ensure_free(port)
    with DynamoDBLocal(port=DYNAMODB_PORT) as dynamodb:
        print(f"stack: DynamoDB Local (in memory) on {dynamodb.endpoint_url}", flush=True)
        if not _create_table(init, stop):
            return 0 if stop.is_set() else 1
        with _running(gateway) as serving:
            if not _wait_ready(serving, stop):
                return 0 if stop.is_set() else 1
            print(f"stack: idemgate on {GATEWAY_URL}; Ctrl-C stops the stack", flush=True)
            while not stop.wait(0.5) and serving.poll() is None:
                pass
            if not stop.is_set():
                print(f"stack: the gateway exited with {serving.returncode}", file=sys.stderr)
                return 1
    print("stack: stopped", flush=True)
    return 0


def main() -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Both signals only ask for a stop, so cleanup itself is never interrupted half-way. A Ctrl-C
    # reaches the children too (one process group); SIGTERM reaches this script alone, and the
    # context managers above stop the children by their PIDs.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        return run(stop)
    except RuntimeError:
        # DynamoDB Local died while starting: expected when a Ctrl-C reached it first.
        if stop.is_set():
            return 0
        raise


if __name__ == "__main__":
    raise SystemExit(main())
