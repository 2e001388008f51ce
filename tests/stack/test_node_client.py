"""The Node.js example client (examples/node) against a live gateway, on both backends."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate.testing import GatewayServer
from lambda_adapter import GatewayPersistenceLayer, IdempotencyConfig, idempotent

FUNCTION_NAME = "orders-prod"
EVENT = {
    "order": "o-1",
    "amount": 12.5,
    "items": [{"sku": "café-1", "qty": 2}],
    "meta": {"z": 1e21, "a": 0.1, "emoji": "\U0001f600"},
}
NODE_TIMEOUT_S = 30


def _start_invocation(
    node: str, root: Path, gateway: GatewayServer, namespace: str, effects: Path, **env: str
) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "IDEMGATE_URL": gateway.url,
        "IDEMGATE_NAMESPACE": namespace,
        "EVENT": json.dumps(EVENT),
        "FUNCTION_NAME": FUNCTION_NAME,
        "HANDLER_NAME": "index.handler",
        "EFFECTS": str(effects),
        **env,
    }
    script = root / "tests" / "stack" / "node" / "invoke.mjs"
    return subprocess.Popen([node, script], env=environment, stdout=subprocess.PIPE, text=True)


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, _ = process.communicate(timeout=NODE_TIMEOUT_S)
    assert process.returncode == 0
    report: dict[str, Any] = json.loads(stdout)
    return report


def test_node_unit_tests_pass_including_the_shared_canonical_json_vectors(
    node: str, root: Path
) -> None:
    run = subprocess.run(
        [node, "--test", "examples/node/test/"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout


def _wait_for_exits(processes: list[subprocess.Popen[str]], count: int) -> None:
    """Wait until ``count`` of ``processes`` have exited, or the Node timeout has passed."""
    deadline = time.monotonic() + NODE_TIMEOUT_S
    while sum(process.poll() is not None for process in processes) < count:
        if time.monotonic() > deadline:
            return  # the assertions on the reports say what went wrong
        time.sleep(0.02)


def test_twenty_concurrent_duplicates_run_the_work_exactly_once(
    node: str, root: Path, gateway: GatewayServer, namespace: str, tmp_path: Path
) -> None:
    effects, proceed = tmp_path / "effects", tmp_path / "proceed"
    # The holder's work waits for `proceed`, made once the 19 others have been answered: however
    # slowly they start, each one claims while the key is held.
    processes = [
        _start_invocation(
            node,
            root,
            gateway,
            namespace,
            effects,
            PROCEED_FILE=str(proceed),
            REMAINING_MS=str(NODE_TIMEOUT_S * 4 * 1000),
        )
        for _ in range(20)
    ]
    _wait_for_exits(processes, 19)
    proceed.touch()
    reports = [_report(process) for process in processes]

    assert len(effects.read_text().splitlines()) == 1
    [winner] = [report for report in reports if report["ran"]]
    others = [report for report in reports if not report["ran"]]
    assert [report.get("code") for report in others] == ["IN_PROGRESS"] * 19
    # Once done, a duplicate replays the stored result without running the work.
    replay = _report(_start_invocation(node, root, gateway, namespace, effects))
    assert replay["ran"] is False
    assert replay["result"] == winner["result"]
    assert len(effects.read_text().splitlines()) == 1


def test_failed_work_is_released_so_a_retry_runs_at_once(
    node: str, root: Path, gateway: GatewayServer, namespace: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    failed = _report(_start_invocation(node, root, gateway, namespace, effects, FAIL="1"))
    assert failed["ran"] is True
    assert failed["error"] == "Error"
    retried = _report(_start_invocation(node, root, gateway, namespace, effects))
    assert retried["ran"] is True
    assert "result" in retried
    assert len(effects.read_text().splitlines()) == 2


def python_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return {"processedBy": "python", "order": event["order"]}


class _LambdaContext:
    aws_request_id = "python-1"
    function_name = FUNCTION_NAME

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def test_node_and_python_make_the_same_key_and_fingerprint_for_the_same_event(
    node: str, root: Path, gateway: GatewayServer, namespace: str, tmp_path: Path
) -> None:
    store = GatewayPersistenceLayer(url=gateway.url, namespace=namespace)
    handler = idempotent(
        persistence_store=store, config=IdempotencyConfig(payload_validation_jmespath="@")
    )(python_handler)
    python_result = handler(json.loads(json.dumps(EVENT)), _LambdaContext())

    # The Node handler named like the Python one: its Lambda handler setting, module.function.
    handler_name = f"{python_handler.__module__}.{python_handler.__qualname__}"
    effects = tmp_path / "effects"
    report = _report(
        _start_invocation(node, root, gateway, namespace, effects, HANDLER_NAME=handler_name)
    )

    # A replay of Python's result: same key, and no FINGERPRINT_MISMATCH, so same fingerprint.
    assert report["ran"] is False
    assert report["result"] == python_result
    record = httpx.get(f"{gateway.url}/v1/records/{namespace}/{report['key']}").json()
    assert record["status"] == "completed"
    assert record["fingerprint"] == report["fingerprint"]


NODE_SERVER_ID = "idemgate-node-test"


@dataclass(frozen=True)
class Authenticated:
    gateway: GatewayServer
    token: str
    role: dict[str, str]  # the environment Lambda gives a function of the allowed role


@pytest.fixture(scope="session")  # a role is made once: moto refuses a second of one name
def role_environment(moto_server: Any) -> dict[str, str]:
    issued = moto_server.temporary_credentials("node-fn-role", actions=["sts:GetCallerIdentity"])
    return {
        "AWS_ACCESS_KEY_ID": issued["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": issued["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": issued["aws_session_token"],
        "AWS_REGION": moto_server.REGION,
        "IDEMGATE_STS_URL": f"{moto_server.endpoint_url}/",
        "IDEMGATE_AUTH_SERVER_ID": NODE_SERVER_ID,
    }


@pytest.fixture(scope="module")
def authenticated(
    storage_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    moto_server: Any,
    role_environment: dict[str, str],
) -> Iterator[Authenticated]:
    """A gateway with a token principal and an IAM role principal, checked by moto's STS."""
    from idemgate._cli import main

    policy = tmp_path_factory.mktemp("node-auth") / "policy.toml"
    policy.write_text(
        f'server_id = "{NODE_SERVER_ID}"\n\n[[principals]]\nname = "node-fn"\nrole = "client"\n'
        'namespaces = ["t-*"]\naws_arn = "arn:aws:sts::*:assumed-role/node-fn-role/*"\n'
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        create = ["token", "create", "--file", str(policy), "--name", "node-token"]
        assert main([*create, "--namespaces", "t-*"]) == 0
    env = {"IDEMGATE_AUTH_FILE": str(policy), "IDEMGATE_STS_URL": f"{moto_server.endpoint_url}/"}
    with GatewayServer(storage=storage_url, env=env) as server:
        yield Authenticated(server, printed.getvalue().strip(), role_environment)


def test_node_authenticates_with_its_iam_role_or_a_token(
    node: str,
    root: Path,
    authenticated: Authenticated,
    namespace: str,
    tmp_path: Path,
) -> None:
    gateway, token, role = authenticated.gateway, authenticated.token, authenticated.role
    effects = tmp_path / "effects"
    first = _report(
        _start_invocation(node, root, gateway, namespace, effects, IDEMGATE_AUTH="iam", **role)
    )
    assert first["ran"] is True
    replay = _report(
        _start_invocation(node, root, gateway, namespace, effects, IDEMGATE_TOKEN=token)
    )
    assert (replay["ran"], replay["result"]) == (False, first["result"])
    refused = _report(_start_invocation(node, root, gateway, namespace, effects))
    assert refused["ran"] is False
    assert "result" not in refused
    assert len(effects.read_text().splitlines()) == 1
