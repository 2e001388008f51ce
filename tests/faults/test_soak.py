"""A short `make soak`: exactly-once under gateway kills, slow storage and timed-out invocations.

tools/soak.py runs in a process of its own, with gateways of its own on a table of its own in the
session's DynamoDB Local; see its docstring for the stream it plays and what it checks. `make soak`
runs the long version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from idemgate.testing import DynamoDBLocal

SOAK = Path(__file__).resolve().parents[2] / "tools" / "soak.py"
EVENTS = 200
KILLS = 2
PAUSES = 1
SOAK_TIMEOUT_S = 240


@pytest.mark.timeout(SOAK_TIMEOUT_S + 30)
def test_a_short_soak_runs_every_event_once_except_after_expired_leases(
    dynamodb_local: DynamoDBLocal,
) -> None:
    command = [
        sys.executable,
        str(SOAK),
        f"--events={EVENTS}",
        "--rate=50",
        f"--kills={KILLS}",
        f"--pauses={PAUSES}",
        "--delays=4",
        "--timeout-share=0.1",
        f"--dynamodb-port={dynamodb_local.port}",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, check=False
    )
    assert run.stdout, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])

    assert run.returncode == 0, report
    assert report["passed"] is True
    assert report["duplicate_executions"] == 0, report["examples"]
    assert report["lost_events"] == 0, report["examples"]
    assert report["stale_results"] == 0, report["examples"]
    assert report["events"] == EVENTS
    assert report["gateway_kills"] == KILLS
    assert report["gateway_pauses"] == PAUSES
    assert report["deliveries"] == EVENTS + report["duplicates_injected"]
    # Every run beyond the first of an event took over an expired lease, and every invocation
    # cut short mid-work was followed by one such run.
    assert report["runs"] == EVENTS + report["takeovers"]
    assert report["takeovers"] >= report["timed_out_invocations"]
    assert set(report["invocations_by_client"]) == {"PythonClient", "NodeClient"}
