"""`make stack` as a person runs it: real processes on 127.0.0.1, then stopped.

Each test starts `make` in a session of its own, so every process of the stack can be found (and
shown to be gone) by that session's id. The ports are free ones, given as a person would
override the defaults (8000 and 8080): IDEMGATE_DYNAMODB_LOCAL_PORT and IDEMGATE_PORT.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate.testing import free_port

DYNAMODB_PORT, GATEWAY_PORT = free_port(), free_port()
GATEWAY = f"http://127.0.0.1:{GATEWAY_PORT}"
STACK_PORTS = (DYNAMODB_PORT, GATEWAY_PORT)
STACK_ENVIRONMENT = {
    "IDEMGATE_DYNAMODB_LOCAL_PORT": str(DYNAMODB_PORT),
    "IDEMGATE_PORT": str(GATEWAY_PORT),
}
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# In compose, the gateway listens on its container's every interface and reaches DynamoDB by
# service name; on this machine both are loopback.
LOOPBACK = {
    "0.0.0.0": "127.0.0.1",
    "http://dynamodb:8000": f"http://127.0.0.1:{DYNAMODB_PORT}",
}
DEV_TOKEN = re.compile(r"development token[^\n]*: (igt_[A-Za-z0-9_-]{43})\n")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _session_processes(session: int) -> dict[int, list[str]]:
    """The command lines of the live (not zombie) processes in ``session``, by PID."""
    processes = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            # Fields after the parenthesised command name: state, ppid, pgrp, session, ...
            state, _ppid, _pgrp, sid = (entry / "stat").read_text().rpartition(")")[2].split()[:4]
            if int(sid) == session and state != "Z":
                argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                processes[int(entry.name)] = [arg.decode() for arg in argv]
    return processes


def _environment(pid: int) -> dict[str, str]:
    entries = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def _on_loopback(value: str) -> str:
    for container_address, loopback_address in LOOPBACK.items():
        value = value.replace(container_address, loopback_address)
    return value


def _wait_until_ready(make: subprocess.Popen[str], printed: list[str]) -> str:
    """The development token the stack printed, once its gateway is ready."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert make.poll() is None, f"make stack exited with {make.returncode}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{GATEWAY}/readyz", timeout=2).status_code == 200:
                tokens = DEV_TOKEN.findall("".join(printed))
                assert len(tokens) == 1, "make stack printed no development token"
                return tokens[0]
        time.sleep(0.2)
    pytest.fail("make stack did not serve a ready gateway in time")


@dataclass
class Stack:
    make: subprocess.Popen[str]
    token: str


@pytest.fixture
def make_stack(root: Path) -> Iterator[Stack]:
    """`make stack` running and ready; stopped by the test, killed here only if the test failed."""
    busy = [port for port in STACK_PORTS if _listening(port)]
    assert not busy, f"ports {busy} are taken: stop the other stack or `make run` first"
    make = subprocess.Popen(
        ["make", "stack"],
        cwd=root,
        start_new_session=True,
        env={**os.environ, **STACK_ENVIRONMENT},
        stdout=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    assert make.stdout is not None
    # Drained to the end, so the stack never blocks on a full pipe.
    reader = threading.Thread(target=lambda: printed.extend(make.stdout or ()), daemon=True)
    reader.start()
    try:
        yield Stack(make, _wait_until_ready(make, printed))
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def _assert_stops_cleanly(make: subprocess.Popen[str]) -> None:
    make.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _session_processes(make.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_processes(make.pid) == {}
    assert not any(_listening(port) for port in STACK_PORTS)


def test_stack_serves_a_claim_complete_round_trip_and_ctrl_c_stops_it_all(
    make_stack: Stack, compose: dict[str, Any]
) -> None:
    base = f"{GATEWAY}/v1/records/stack-test"
    assert httpx.post(f"{base}/order-1/claim", json={}).status_code == 401  # never open
    authorization = {"Authorization": f"Bearer {make_stack.token}"}
    with httpx.Client(base_url=base, headers=authorization, timeout=5) as http:
        claimed = http.post("/order-1/claim", json={"fingerprint": "f1"})
        assert claimed.status_code == 201
        completed = http.post(
            "/order-1/complete",
            json={"lease_token": claimed.json()["lease_token"], "result": {"charged": 42}},
        )
        assert completed.status_code == 200
        replayed = http.post("/order-1/claim", json={"fingerprint": "f1"})
        assert replayed.status_code == 200
        assert replayed.headers["Idempotent-Replayed"] == "true"
        assert replayed.json()["result"] == {"charged": 42}

    # The gateway runs the compose gateway's command and environment, on loopback.
    processes = _session_processes(make_stack.make.pid)
    [(pid, argv)] = [(pid, argv) for pid, argv in processes.items() if "serve" in argv]
    gateway = compose["services"]["gateway"]
    script = next(i for i, arg in enumerate(argv) if Path(arg).name == gateway["command"][0])
    assert argv[script + 1 :] == [_on_loopback(arg) for arg in gateway["command"][1:]]
    environment = _environment(pid)
    for name, value in gateway["environment"].items():
        assert environment[name] == STACK_ENVIRONMENT.get(name, _on_loopback(str(value)))
    assert any("DynamoDBLocal.jar" in " ".join(argv) for argv in processes.values())

    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(make_stack.make.pid, signal.SIGINT)
    _assert_stops_cleanly(make_stack.make)


def test_sigterm_to_make_alone_stops_every_process_of_the_stack(make_stack: Stack) -> None:
    # `kill <pid of make>`: make passes SIGTERM on to the stack, which stops its children itself.
    make_stack.make.terminate()
    _assert_stops_cleanly(make_stack.make)
