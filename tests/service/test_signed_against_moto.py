"""End to end against a server that verifies SigV4: moto, with IAM authentication on.

DynamoDB Local accepts any signature, so this is where the gateway's signing meets a
verifier. The credentials are temporary ones from moto's STS ``AssumeRole`` (with a session
token, as ECS, EC2, EKS and Lambda roles give), for a role allowed DynamoDB only.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import httpx
import pytest

from idemgate.testing import GatewayServer

if TYPE_CHECKING:
    from conftest import MotoServer  # the fixture's class, in tests/conftest.py


@pytest.fixture(scope="module")
def table(moto_server: MotoServer) -> str:
    name = f"idemgate-{uuid.uuid4().hex[:8]}"
    moto_server.client("dynamodb").create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture(scope="module")
def role_credentials(moto_server: MotoServer) -> dict[str, str]:
    """Temporary credentials (with a session token) of a role allowed DynamoDB only."""
    return moto_server.temporary_credentials(
        f"gateway-{uuid.uuid4().hex[:8]}", actions=["dynamodb:*"]
    )


def describe(moto_server: MotoServer, table: str, **credentials: str) -> Any:
    return moto_server.client("dynamodb", **credentials).describe_table(TableName=table)


def test_moto_verifies_signatures(
    moto_server: MotoServer, table: str, role_credentials: dict[str, str]
) -> None:
    """Without this, the gateway's test below would prove nothing."""
    assert describe(moto_server, table, **role_credentials)["Table"]["TableName"] == table
    wrong_secret = {**role_credentials, "aws_secret_access_key": "not-the-secret"}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        describe(moto_server, table, **wrong_secret)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)
    forged = httpx.post(
        moto_server.endpoint_url,
        headers={
            "x-amz-target": "DynamoDB_20120810.DescribeTable",
            "content-type": "application/x-amz-json-1.0",
            "x-amz-date": "20261130T120000Z",
            "x-amz-security-token": role_credentials["aws_session_token"],
            "authorization": (
                f"AWS4-HMAC-SHA256 Credential={role_credentials['aws_access_key_id']}/20261130/"
                "us-east-1/dynamodb/aws4_request, "
                "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, "
                "Signature=deadbeef"
            ),
        },
        content=json.dumps({"TableName": table}),
    )
    assert forged.status_code in (400, 403), forged.text


def test_gateway_claims_completes_and_reads_through_a_verifying_server(
    moto_server: MotoServer, table: str, role_credentials: dict[str, str]
) -> None:
    env = {name.upper(): value for name, value in role_credentials.items()}
    storage = f"dynamodb://{table}?region=us-east-1&endpoint_url={moto_server.endpoint_url}"
    with (
        GatewayServer(storage=storage, env=env) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30) as client,
    ):
        assert client.get("/readyz").status_code == 200  # DescribeTable, signed
        claim = client.post("/v1/records/moto/order-1/claim", json={"fingerprint": "f1"})
        assert claim.status_code == 201, claim.text
        token = claim.json()["lease_token"]
        done = client.post(
            "/v1/records/moto/order-1/complete",
            json={"lease_token": token, "result": {"charged": 42}},
        )
        assert done.status_code == 200, done.text
        record = client.get("/v1/records/moto/order-1")
        assert record.status_code == 200, record.text
        assert record.json()["result"] == {"charged": 42}
        replay = client.post("/v1/records/moto/order-1/claim", json={"fingerprint": "f1"})
        assert replay.status_code == 200, replay.text
