"""The Node client's processSqsBatch, driven like the Python adapter's: moto's SQS, live gateways.

Each invocation is a Node process (tests/stack/node/sqs_batch.mjs) given the event on stdin; the
poller in ``sqs_poller`` receives, invokes and deletes as Lambda's would.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqs_poller import Poller, create_queue, create_queue_with_redrive, queue_size, visible_at_ms

from idemgate.testing import GatewayServer
from lambda_adapter._sigv4 import AwsCredentials, sign_headers

NODE_TIMEOUT_S = 30


@pytest.fixture
def environment(
    moto_server: Any, gateway: GatewayServer, namespace: str, tmp_path: Path
) -> dict[str, str]:
    """What the Node function sees: its gateway, its role's credentials, its ledger file."""
    credentials = moto_server.temporary_credentials(
        f"node-fn-{uuid.uuid4().hex[:8]}", actions=["sqs:*"]
    )
    return {
        **os.environ,
        "IDEMGATE_URL": gateway.url,
        "IDEMGATE_NAMESPACE": namespace,
        "AWS_ACCESS_KEY_ID": credentials["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": credentials["aws_session_token"],
        "SQS_ENDPOINT_URL": moto_server.endpoint_url,
        "LEDGER": str(tmp_path / "ledger"),
        # A failed message comes back after a second: min(1, 0.01 * 2**n), no jitter.
        "BACKOFF": json.dumps({"baseS": 0.01, "capS": 1, "jitterS": 0}),
    }


@pytest.fixture
def sqs(moto_server: Any) -> Any:
    return moto_server.client("sqs")


def _node_invoke(node: str, root: Path, environment: dict[str, str], **env: str) -> Any:
    script = root / "tests" / "stack" / "node" / "sqs_batch.mjs"

    def invoke(event: dict[str, Any]) -> Any:
        run = subprocess.run(
            [node, script],
            input=json.dumps(event),
            env={**environment, **env},
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        sys.stderr.write(run.stderr)  # the function's incident lines, shown if a test fails
        return json.loads(run.stdout)

    return invoke


def _ledger(environment: dict[str, str]) -> list[str]:
    path = Path(environment["LEDGER"])
    return path.read_text().splitlines() if path.exists() else []


def _send(sqs: Any, url: str, *orders: str, **extra: Any) -> None:
    for order in orders:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"order": order}), **extra)


def test_node_batches_run_every_record_once_and_back_off_failures(
    node: str, root: Path, environment: dict[str, str], sqs: Any
) -> None:
    queue, dead_letters = create_queue_with_redrive(
        sqs, f"node-{uuid.uuid4().hex[:10]}", max_receive_count=5
    )
    _send(sqs, queue.url, "o-1", "o-2", "o-2", "o-3")
    poller = Poller(sqs, queue)
    failing = _node_invoke(node, root, environment, KEY="order", FAIL="o-3")
    first = poller.poll_once(failing)
    assert len(first) == 4
    o3 = next(m["MessageId"] for m in first if json.loads(m["Body"])["order"] == "o-3")
    assert poller.responses == [{"batchItemFailures": [{"itemIdentifier": o3}]}]
    assert sorted(_ledger(environment)) == ["o-1", "o-2"]  # o-2 twice in the queue, once here

    poller.drain(
        _node_invoke(node, root, environment, KEY="order"),
        until=lambda: queue_size(sqs, queue) == 0,
    )
    assert sorted(_ledger(environment)) == ["o-1", "o-2", "o-3"]
    assert queue_size(sqs, dead_letters) == 0


def test_node_sets_the_computed_visibility_timeout_on_the_server(
    node: str, root: Path, environment: dict[str, str], sqs: Any, moto_server: Any
) -> None:
    queue = create_queue(sqs, f"node-{uuid.uuid4().hex[:10]}")
    _send(sqs, queue.url, "o-1")
    poller = Poller(sqs, queue)
    [message] = poller.receive()
    backoff = json.dumps({"baseS": 10, "capS": 600, "jitterS": 0})  # 10 * 2**1 = 20 s
    before_ms = time.time() * 1000
    poller.deliver([message], _node_invoke(node, root, environment, FAIL="o-1", BACKOFF=backoff))
    after_ms = time.time() * 1000
    visible_at = visible_at_ms(moto_server.endpoint_url, message["MessageId"])
    assert before_ms + 20_000 <= visible_at <= after_ms + 20_000
    assert poller.receive() == []


def test_node_logs_a_refused_visibility_change_and_still_reports_the_failure(
    node: str,
    root: Path,
    environment: dict[str, str],
    sqs: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = create_queue(sqs, f"node-{uuid.uuid4().hex[:10]}")
    _send(sqs, queue.url, "o-1")
    poller = Poller(sqs, queue)
    [message] = poller.receive()
    invoke = _node_invoke(node, root, environment, FAIL="o-1", AWS_SECRET_ACCESS_KEY="wrong")
    assert invoke(poller.event([message])) == {
        "batchItemFailures": [{"itemIdentifier": message["MessageId"]}]
    }
    incidents = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [refused] = [i for i in incidents if i.get("incident") == "sqs_call_failed"]
    assert "HTTP 403" in refused["message"]
    [failed] = [i for i in incidents if i.get("incident") == "record_failed"]
    assert failed["visibility_timeout_s"] is None


def test_node_hands_a_message_that_keeps_failing_to_the_dead_letter_queue(
    node: str, root: Path, environment: dict[str, str], sqs: Any
) -> None:
    name = f"node-{uuid.uuid4().hex[:10]}"
    queue, redrive_target = create_queue_with_redrive(sqs, name, max_receive_count=10)
    explicit = create_queue(sqs, f"{name}-failures")
    _send(
        sqs,
        queue.url,
        "poison",
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    dead_letter = json.dumps({"queueArn": explicit.arn, "afterReceives": 2})
    invoke = _node_invoke(node, root, environment, FAIL="poison", DEAD_LETTER=dead_letter)
    poller = Poller(sqs, queue)
    poller.drain(invoke, until=lambda: queue_size(sqs, explicit) == 1)

    assert poller.responses[-1] == {"batchItemFailures": []}
    assert queue_size(sqs, queue) == 0
    assert queue_size(sqs, redrive_target) == 0
    [dead] = Poller(sqs, explicit).receive()
    attributes = {name: value["StringValue"] for name, value in dead["MessageAttributes"].items()}
    assert attributes["idemgate.failure"] == "Error: the payment service refused poison"
    assert attributes["idemgate.receive-count"] == "2"
    assert attributes["idemgate.source-queue-arn"] == queue.arn
    assert attributes["tenant"] == "acme"


def test_node_fifo_groups_and_deadline(
    node: str, root: Path, environment: dict[str, str], sqs: Any
) -> None:
    queue, _ = create_queue_with_redrive(
        sqs, f"node-{uuid.uuid4().hex[:10]}", max_receive_count=5, fifo=True
    )
    for order, group in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A")]:
        _send(sqs, queue.url, order, MessageGroupId=group, MessageDeduplicationId=order)
    poller = Poller(sqs, queue)
    messages = poller.poll_once(_node_invoke(node, root, environment, FAIL="a2"))
    by_order = {json.loads(m["Body"])["order"]: m["MessageId"] for m in messages}
    assert poller.responses == [
        {"batchItemFailures": [{"itemIdentifier": by_order[o]} for o in ("a2", "a3")]}
    ]
    assert _ledger(environment) == ["a1", "b1", "b2"]

    # Then a slow a2: 2.5 s to run, records stop starting below 0.1 + 1 s, so a3 waits.
    slow = _node_invoke(node, root, environment, SLOW="a2", SLOW_MS="1500", REMAINING_MS="2500")
    poller.drain(slow, until=lambda: "a2" in _ledger(environment))
    assert poller.responses[-1] == {"batchItemFailures": [{"itemIdentifier": by_order["a3"]}]}
    poller.drain(_node_invoke(node, root, environment), until=lambda: queue_size(sqs, queue) == 0)
    assert _ledger(environment) == ["a1", "b1", "b2", "a2", "a3"]


def test_node_signs_as_the_python_adapter_and_so_as_botocore(node: str, root: Path) -> None:
    """The Python signer is checked against botocore (tests/adapter/test_sigv4.py)."""
    request = {
        "method": "POST",
        "url": "https://sqs.eu-west-3.amazonaws.com/a%20b/c?b=2&a=1&a=0&Action=List",
        "headers": {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "  A   b "},
        "body": '{"QueueUrl":"https://sqs.eu-west-3.amazonaws.com/1/q","é":1}',
        "region": "eu-west-3",
        "service": "sqs",
    }
    credentials = {"accessKeyId": "ASIA1", "secretAccessKey": "s/e+c=r", "sessionToken": "t" * 300}
    script = (
        f"import {{ signV4 }} from {json.dumps(str(root / 'examples/node/idemgate.mjs'))};\n"
        "const request = JSON.parse(process.env.REQUEST);\n"
        "request.now = new Date(Date.UTC(2026, 11, 31, 23, 59, 59));\n"
        "console.log(JSON.stringify(signV4(request)));\n"
    )
    run = subprocess.run(
        [node, "--input-type=module", "-e", script],
        env={**os.environ, "REQUEST": json.dumps({**request, "credentials": credentials})},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=True,
    )
    ours = sign_headers(
        **{**request, "body": str(request["body"]).encode()},  # type: ignore[arg-type]
        credentials=AwsCredentials(
            access_key="ASIA1", secret_key="s/e+c=r", session_token="t" * 300
        ),
        now=datetime.datetime(2026, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
    )
    assert json.loads(run.stdout) == ours
