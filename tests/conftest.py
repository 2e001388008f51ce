"""Shared fixtures: real DynamoDB Local and real gateways on loopback, one per storage backend,
and a moto server (``moto_server``) for what DynamoDB Local cannot check.

The DynamoDB suite never skips: if DynamoDB Local or Java is missing, the session fails and says
what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from idemgate.testing import (
    DynamoDBLocal,
    DynamoDBLocalMissingError,
    GatewayServer,
    _ServerProcess,
    free_port,
)

# DynamoDB Local accepts any credentials; the gateways started here inherit these.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

BACKENDS = ["sqlite", "dynamodb"]


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    try:
        server = DynamoDBLocal().start()
    except DynamoDBLocalMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dynamodb_storage_url(dynamodb_local: DynamoDBLocal) -> str:
    """A DynamoDB table created with ``idemgate create-table``, shared by the session."""
    from idemgate._cli import main

    url = dynamodb_local.storage_url("idemgate-test")
    assert main(["create-table", "--storage", url]) == 0
    return url


@pytest.fixture(scope="session")
def sqlite_storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "idemgate.db"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session", params=BACKENDS)
def storage_url(request: pytest.FixtureRequest) -> str:
    """The storage URL of each backend in turn."""
    url: str = request.getfixturevalue(f"{request.param}_storage_url")
    return url


@pytest.fixture(scope="session")
def gateway(storage_url: str) -> Iterator[GatewayServer]:
    """A real ``idemgate serve`` on loopback, once per backend."""
    with GatewayServer(storage=storage_url) as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests sharing a gateway never collide."""
    return f"t-{uuid.uuid4().hex[:12]}"


class MotoServer(_ServerProcess):
    """moto's server mode on loopback: AWS APIs (IAM, STS, SQS, DynamoDB, ...) in one process.

    DynamoDB Local accepts any signature; this server checks SigV4 once ``start`` has created an
    administrator and turned authentication on. ``temporary_credentials`` then hands out STS
    ``AssumeRole`` credentials (with a session token) for a role allowed only ``actions``::

        creds = moto_server.temporary_credentials("orders-fn", actions=["dynamodb:*"])
        moto_server.client("dynamodb", **creds).list_tables()
    """

    REGION = "us-east-1"

    def __init__(self) -> None:
        self.port = free_port()
        self.admin: dict[str, str] = {}
        self.admin_arn = ""

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch(self) -> subprocess.Popen[bytes]:
        command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1"]
        return subprocess.Popen(
            [*command, "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ready(self, deadline: float) -> None:
        """Make an administrator while anyone may call, then turn signature checks on."""
        iam = self.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup")
        self.admin_arn = iam.create_user(UserName="idemgate-test-admin")["User"]["Arn"]
        iam.put_user_policy(
            UserName="idemgate-test-admin",
            PolicyName="everything",
            PolicyDocument=json.dumps(_allow(["*"])),
        )
        key = iam.create_access_key(UserName="idemgate-test-admin")["AccessKey"]
        self.admin = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{self.endpoint_url}/moto-api/reset-auth",
                data=b"0",
                headers={"Content-Type": "text/plain"},
            ),
            timeout=10,
        ) as answer:
            assert answer.status == 200

    def client(self, service: str, **credentials: str) -> Any:
        """A boto3 client of this server, with the administrator's credentials by default."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.REGION,
            **(credentials or self.admin),
        )

    def temporary_credentials(self, role: str, *, actions: Sequence[str]) -> dict[str, str]:
        """AssumeRole credentials for a role allowed ``actions``, as boto3 client arguments."""
        iam = self.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": self.admin_arn},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(
            RoleName=role, PolicyName="allowed", PolicyDocument=json.dumps(_allow(actions))
        )
        assumed = self.client("sts").assume_role(
            RoleArn=arn["Arn"], RoleSessionName=f"{role}-session"
        )["Credentials"]
        return {
            "aws_access_key_id": assumed["AccessKeyId"],
            "aws_secret_access_key": assumed["SecretAccessKey"],
            "aws_session_token": assumed["SessionToken"],
        }


def _allow(actions: Sequence[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": ["*"]}],
    }


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session, checking signatures (see ``MotoServer``)."""
    server = MotoServer().start()
    yield server
    server.stop()
