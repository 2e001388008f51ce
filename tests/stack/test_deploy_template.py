"""deploy/idemgate.yaml: the table the gateway's code expects, and exactly the IAM it needs."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from idemgate._cli import main as idemgate
from idemgate._storage._dynamodb import (
    NAMESPACE_ATTRIBUTE,
    NAMESPACE_INDEX,
    PARTITION_KEY,
    TTL_ATTRIBUTE,
)
from idemgate.testing import DynamoDBLocal, GatewayServer


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, read as their long form (!Ref x: {Ref: x})."""


def _intrinsic(loader: yaml.SafeLoader, tag: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {tag if tag in ("Ref", "Condition") else f"Fn::{tag}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template(root: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(
        (root / "deploy" / "idemgate.yaml").read_text(), Loader=CloudFormationLoader
    )
    return document


class _RecordingProxy(ThreadingHTTPServer):
    """A loopback HTTP proxy in front of DynamoDB Local that notes every API action it relays."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = urlsplit(upstream)
        self.actions: set[str] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(BaseHTTPRequestHandler):
    server: _RecordingProxy

    def do_POST(self) -> None:
        # boto3 names the operation in X-Amz-Target, e.g. "DynamoDB_20120810.PutItem".
        self.server.actions.add(self.headers["X-Amz-Target"].rpartition(".")[2])
        body = self.rfile.read(int(self.headers["Content-Length"]))
        upstream = self.server.upstream
        connection = http.client.HTTPConnection(upstream.hostname or "", upstream.port, timeout=10)
        try:
            connection.request("POST", self.path, body, dict(self.headers))
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the recorded actions, not an access log."""


@pytest.fixture
def recording_proxy(dynamodb_local: DynamoDBLocal) -> Iterator[_RecordingProxy]:
    proxy = _RecordingProxy(dynamodb_local.endpoint_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join()


def test_table_has_the_key_schema_and_ttl_attribute_the_code_uses(
    template: dict[str, Any],
) -> None:
    table = template["Resources"]["RecordsTable"]
    properties = table["Properties"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert properties["KeySchema"] == [{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}]
    assert properties["AttributeDefinitions"] == [
        {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
        {"AttributeName": NAMESPACE_ATTRIBUTE, "AttributeType": "S"},
        {"AttributeName": "lease_expires_at", "AttributeType": "N"},
    ]
    assert properties["GlobalSecondaryIndexes"] == [
        {
            "IndexName": NAMESPACE_INDEX,
            "KeySchema": [
                {"AttributeName": NAMESPACE_ATTRIBUTE, "KeyType": "HASH"},
                {"AttributeName": "lease_expires_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }
    ]
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": TTL_ATTRIBUTE,
        "Enabled": True,
    }
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["DeletionPolicy"] == "Retain"


def test_policy_grants_exactly_what_the_gateway_does_and_only_on_its_table(
    template: dict[str, Any],
    dynamodb_local: DynamoDBLocal,
    recording_proxy: _RecordingProxy,
) -> None:
    table = f"iam-{uuid.uuid4().hex[:8]}"
    # The deployed table comes from CloudFormation, so creating it is not the gateway's job.
    assert idemgate(["create-table", "--storage", dynamodb_local.storage_url(table)]) == 0
    storage = f"dynamodb://{table}?region=us-east-1&endpoint_url={recording_proxy.endpoint_url}"
    with GatewayServer(storage=storage) as gateway, httpx.Client(base_url=gateway.url) as http:
        # Every route that touches storage, through each of its paths to DynamoDB.
        first = http.post("/v1/records/iam/k1/claim", json={}).json()
        assert http.post("/v1/records/iam/k1/claim", json={}).status_code == 409
        complete = {"lease_token": first["lease_token"], "result": {"ok": True}}
        assert http.post("/v1/records/iam/k1/complete", json=complete).status_code == 200
        assert http.post("/v1/records/iam/k1/claim", json={}).status_code == 200
        assert http.get("/v1/records/iam/k1").status_code == 200
        assert http.delete("/v1/records/iam/k1").status_code == 204
        short = http.post("/v1/records/iam/k2/claim", json={"lease_ms": 1}).json()
        time.sleep(0.01)
        second = http.post("/v1/records/iam/k2/claim", json={}).json()
        assert second["attempt"] == short["attempt"] + 1
        held = {"lease_token": second["lease_token"]}
        assert http.post("/v1/records/iam/k2/extend", json={**held, "lease_ms": 5000}).is_success
        assert http.post("/v1/records/iam/k2/release", json=held).status_code == 204
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/records/iam/k3/claim", json={}).status_code == 201
        assert http.post("/v1/records/iam/k3/expire").status_code == 200
        assert http.get("/v1/records/iam").json()["items"][0]["key"] == "k3"

    items, listing = template["Resources"]["GatewayPolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    assert items["Effect"] == listing["Effect"] == "Allow"
    assert items["Resource"] == {"Fn::GetAtt": ["RecordsTable", "Arn"]}
    assert listing["Resource"] == {"Fn::Sub": f"${{RecordsTable.Arn}}/index/{NAMESPACE_INDEX}"}
    assert listing["Action"] == ["dynamodb:Query"]
    assert {
        action.removeprefix("dynamodb:") for action in items["Action"] + listing["Action"]
    } == recording_proxy.actions
