"""What an operator meets: create-table, storage outages, bad configuration."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest

from idemgate._cli import main
from idemgate._storage._dynamodb import PARTITION_KEY, TTL_ATTRIBUTE
from idemgate.testing import DynamoDBLocal, GatewayServer, free_port


def test_create_table_is_on_demand_with_ttl_and_harmless_to_repeat(
    dynamodb_local: DynamoDBLocal,
) -> None:
    url = dynamodb_local.storage_url("create-twice")
    assert main(["create-table", "--storage", url]) == 0
    assert main(["create-table", "--storage", url]) == 0
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint_url)
    table = client.describe_table(TableName="create-twice")["Table"]
    assert table["KeySchema"] == [{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName="create-twice")["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", TTL_ATTRIBUTE)


def test_create_table_refuses_a_non_dynamodb_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-table", "--storage", "sqlite:///x.db"]) == 1
    assert "dynamodb://" in capsys.readouterr().err


def assert_unavailable(gateway: GatewayServer, namespace: str) -> None:
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "STORAGE_UNAVAILABLE"
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/records/{namespace}/k/claim", json={}, timeout=10)
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "STORAGE_UNAVAILABLE"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'idemgate_storage_errors_total{backend="dynamodb"}' in metrics


def test_a_dead_dynamodb_is_a_quick_503_and_not_ready(namespace: str) -> None:
    storage = f"dynamodb://gone?region=us-east-1&endpoint_url=http://127.0.0.1:{free_port()}"
    env = {"IDEMGATE_STORAGE_TIMEOUT_MS": "300", "IDEMGATE_STORAGE_MAX_ATTEMPTS": "1"}
    with GatewayServer(storage=storage, env=env, ready_path="/healthz") as gateway:
        assert_unavailable(gateway, namespace)


def test_a_missing_table_is_503_not_500(dynamodb_local: DynamoDBLocal, namespace: str) -> None:
    storage = dynamodb_local.storage_url("never-created")
    with GatewayServer(storage=storage, ready_path="/healthz") as gateway:
        assert_unavailable(gateway, namespace)


def test_an_idle_client_connection_stays_open_for_keep_alive_s(tmp_path: Path) -> None:
    env = {"IDEMGATE_KEEP_ALIVE_S": "1"}
    with GatewayServer(storage=f"sqlite:///{tmp_path}/records.db", env=env) as gateway:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        with contextlib.closing(connection):
            connection.request("GET", "/healthz")
            assert connection.getresponse().read()
            assert connection.sock is not None
            idle: socket.socket = connection.sock
            idle.settimeout(0.3)
            with pytest.raises(TimeoutError):
                idle.recv(1)  # nothing to read, and not closed
            idle.settimeout(3)  # uvicorn's own default would keep it open for 5 s
            assert idle.recv(1) == b""  # the gateway closed it, a second after its answer


@pytest.mark.parametrize(
    "storage", ["postgres://nope", "sqlite://", "dynamodb://t?colour=blue", "dynamodb://"]
)
def test_bad_storage_urls_stop_serve_with_a_message(storage: str) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "idemgate",
            "serve",
            "--port",
            str(free_port()),
            "--storage",
            storage,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 1
    assert "storage URL" in completed.stderr
