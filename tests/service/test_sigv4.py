"""SigV4 as the gateway signs it, held to botocore's ``SigV4Auth`` and the AWS test suite.

The vectors in ``data/aws4_testsuite.json`` come from the AWS Signature Version 4 Test Suite
(Apache-2.0, as botocore's repository carries it; the file names its source).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest

from idemgate._storage import DynamoDBLocation
from idemgate._storage._dynamodb import DynamoDBClient
from idemgate._storage._sigv4 import Credentials, SigV4Signer

from .fake_dynamodb import FakeDynamoDB, Seen

SUITE = json.loads((Path(__file__).parent / "data" / "aws4_testsuite.json").read_text())
TOKEN = "FwoGZXIvYXdzEBYaDH//////////wEaDOBSCURE+token/with=padding=="
KEY = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
TEMPORARY = Credentials("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", TOKEN)


@pytest.mark.parametrize("vector", SUITE["vectors"], ids=lambda vector: vector["name"])
def test_published_vectors(vector: dict[str, Any]) -> None:
    headers: dict[str, str] = {}
    amz_date = token = None
    for name, value in vector["headers"]:
        if name.lower() == "x-amz-date":
            amz_date = value
        elif name.lower() == "x-amz-security-token":
            token = value
        else:
            headers[name] = value
    assert amz_date is not None
    credentials = Credentials(**SUITE["credentials"], token=token)
    signer = SigV4Signer(region=SUITE["region"], service=SUITE["service"])
    signer.sign(
        vector["method"],
        vector["path"],
        headers,
        vector["body"].encode(),
        credentials=credentials,
        amz_date=amz_date,
    )
    assert headers["authorization"] == vector["authorization"]


def botocore_headers(
    monkeypatch: pytest.MonkeyPatch,
    *,
    region: str,
    headers: dict[str, str],
    body: bytes,
    credentials: Credentials,
    now: datetime.datetime,
) -> dict[str, str]:
    """The headers botocore's ``SigV4Auth`` signs the same request with, at ``now``."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda **_: now)
    reference = botocore.credentials.Credentials(
        credentials.access_key, credentials.secret_key, credentials.token
    )
    request = AWSRequest("POST", f"https://{headers['host']}/", data=body, headers=headers)
    botocore.auth.SigV4Auth(reference, "dynamodb", region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


REGIONS = [
    "us-east-1",
    "eu-west-1",
    "ap-southeast-2",
    "cn-north-1",
    "us-gov-west-1",
    "il-central-1",
]
MOMENTS = [
    datetime.datetime(2026, 11, 30, 12, 0, 0),
    datetime.datetime(2026, 12, 31, 23, 59, 59),
    datetime.datetime(2027, 1, 1, 0, 0, 0),
    datetime.datetime(2028, 2, 29, 0, 0, 0),
]


def dynamodb_headers(region: str, target: str = "DynamoDB_20120810.PutItem") -> dict[str, str]:
    return {
        "content-type": "application/x-amz-json-1.0",
        "host": f"dynamodb.{region}.amazonaws.com",
        "x-amz-target": target,
    }


def amz_date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


@pytest.mark.parametrize("credentials", [KEY, TEMPORARY], ids=["long-term", "session-token"])
@pytest.mark.parametrize("region", REGIONS)
def test_agrees_with_botocore_in_every_region(
    monkeypatch: pytest.MonkeyPatch, region: str, credentials: Credentials
) -> None:
    body = b'{"TableName":"t","Item":{"pk":{"S":"n#k \\u00e9"}}}'
    for moment in MOMENTS:
        headers = dynamodb_headers(region)
        SigV4Signer(region=region, service="dynamodb").sign(
            "POST", "/", headers, body, credentials=credentials, amz_date=amz_date(moment)
        )
        expected = botocore_headers(
            monkeypatch,
            region=region,
            headers=dynamodb_headers(region),
            body=body,
            credentials=credentials,
            now=moment,
        )
        assert headers == expected


@pytest.mark.parametrize(
    "extra",
    [
        {"x-amz-target": "  DynamoDB_20120810.GetItem  "},
        {"x-custom": "a   b\tc"},
        {"X-Mixed-Case": "Value With  Spaces"},
        {"host": "127.0.0.1:8000"},
        {"x-empty": ""},
    ],
    ids=["padded", "inner-whitespace", "mixed-case-name", "host-with-port", "empty-value"],
)
def test_agrees_with_botocore_on_odd_header_values(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]
) -> None:
    moment = MOMENTS[0]
    headers = {**dynamodb_headers("eu-west-1"), **extra}
    expected = botocore_headers(
        monkeypatch,
        region="eu-west-1",
        headers=dict(headers),
        body=b"{}",
        credentials=TEMPORARY,
        now=moment,
    )
    SigV4Signer(region="eu-west-1", service="dynamodb").sign(
        "POST", "/", headers, b"{}", credentials=TEMPORARY, amz_date=amz_date(moment)
    )
    assert {name.lower(): value for name, value in headers.items()} == expected


def test_signing_key_follows_the_date_and_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """One signer across midnight and a key rotation: the cached key never outlives either."""
    signer = SigV4Signer(region="us-east-1", service="dynamodb")
    rotated = Credentials("ASIAROTATED", "another/secret", "another-token")
    for moment, credentials in [
        (MOMENTS[1], TEMPORARY),
        (MOMENTS[2], TEMPORARY),
        (MOMENTS[2], rotated),
        (MOMENTS[1], TEMPORARY),
    ]:
        headers = dynamodb_headers("us-east-1")
        signer.sign("POST", "/", headers, b"{}", credentials=credentials, amz_date=amz_date(moment))
        assert headers == botocore_headers(
            monkeypatch,
            region="us-east-1",
            headers=dynamodb_headers("us-east-1"),
            body=b"{}",
            credentials=credentials,
            now=moment,
        )


@pytest.fixture
def fake() -> Iterator[FakeDynamoDB]:
    with FakeDynamoDB() as server:
        yield server


@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term", "session-token"])
def test_client_requests_verify_as_botocore_signs_them(
    monkeypatch: pytest.MonkeyPatch, fake: FakeDynamoDB, token: str | None
) -> None:
    """What the DynamoDB client sends on the wire carries the signature botocore would make."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEMPORARY.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEMPORARY.secret_key)
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    location = DynamoDBLocation("t", "eu-central-1", fake.url)

    async def scenario() -> None:
        client = DynamoDBClient(location, pool_size=1, timeout_ms=5000, max_attempts=1)
        try:
            await client.call("GetItem", Key={"pk": {"S": "n#k"}})
        finally:
            await client.close()

    asyncio.run(scenario())
    [seen] = fake.requests
    assert_signed_as_botocore_would(monkeypatch, seen, "eu-central-1", TEMPORARY.secret_key)
    assert seen.headers.get("x-amz-security-token") == token


def assert_signed_as_botocore_would(
    monkeypatch: pytest.MonkeyPatch, seen: Seen, region: str, secret_key: str
) -> None:
    authorization = seen.headers["authorization"]
    access_key = authorization.split("Credential=")[1].split("/")[0]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    now = datetime.datetime.strptime(seen.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    expected = botocore_headers(
        monkeypatch,
        region=region,
        headers={
            name: seen.headers[name]
            for name in signed
            if name not in ("x-amz-date", "x-amz-security-token")
        },
        body=seen.body,
        credentials=Credentials(access_key, secret_key, seen.headers.get("x-amz-security-token")),
        now=now,
    )
    assert authorization == expected["authorization"]
