"""A SQLite gateway whose sibling process freezes while holding the writers' lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from idemgate.testing import GatewayServer

from .test_api import assert_problem

# Takes the writers' lock of the file named by argv[1], says so, then waits to be stopped.
HOLD_THE_LOCK = """
import fcntl, os, sys, time
lock = os.open(sys.argv[1] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_frozen_lock_holder_makes_writes_503_and_never_blocks_the_gateway(
    tmp_path: Path, namespace: str
) -> None:
    database = tmp_path / "idemgate.db"
    env = {"IDEMGATE_STORAGE_TIMEOUT_MS": "500"}
    path = f"/v1/records/{namespace}/k"
    with (
        GatewayServer(storage=f"sqlite:///{database}", env=env) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30) as client,
    ):
        sibling = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_LOCK, str(database)], stdout=subprocess.PIPE
        )
        try:
            assert sibling.stdout is not None
            assert sibling.stdout.readline() == b"locked\n"
            os.kill(sibling.pid, signal.SIGSTOP)
            with ThreadPoolExecutor(4) as pool:
                claims = [pool.submit(client.post, f"{path}/claim") for _ in range(3)]
                # While the claims wait for the lock, the gateway still answers.
                assert client.get("/healthz").status_code == 200
                assert client.get(path).status_code == 404
                for claim in claims:
                    body = assert_problem(claim.result(), 503, "STORAGE_UNAVAILABLE")
                    assert "lock" in body["detail"]
                    assert claim.result().headers["retry-after"] == "1"
        finally:
            os.kill(sibling.pid, signal.SIGCONT)
            sibling.kill()
            sibling.wait()
        assert client.post(f"{path}/claim").status_code == 201
