"""The adapter's IAM proof: what it signs, how long it reuses it, and how it fails at init.

End to end against a gateway and moto's STS: tests/service/test_auth_iam.py.
"""

from __future__ import annotations

import base64
import datetime
import json

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from lambda_adapter import GatewayPersistenceLayer, idempotent
from lambda_adapter._iam import GET_CALLER_IDENTITY, IamAuthorization
from lambda_adapter._sigv4 import AwsCredentials

CREDENTIALS = AwsCredentials(access_key="ASIAEXAMPLE", secret_key="secret", session_token="tok")
SIGNED_AT = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


def _decode(header: str) -> dict[str, object]:
    scheme, _, proof = header.partition(" ")
    assert scheme == "AWS4-IAM"
    decoded: dict[str, object] = json.loads(base64.b64decode(proof, validate=True))
    return decoded


def test_the_proof_is_the_request_botocore_would_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    iam = IamAuthorization(
        server_id="gw-1", region="eu-west-1", credentials=lambda: CREDENTIALS, environ={}
    )
    proof = _decode(f"AWS4-IAM {iam.sign(SIGNED_AT.timestamp())}")
    assert proof["url"] == "https://sts.eu-west-1.amazonaws.com/"
    assert proof["body"] == GET_CALLER_IDENTITY
    headers = proof["headers"]
    assert isinstance(headers, dict)

    # botocore signs the same request at the same moment: the signatures must be equal.
    monkeypatch.setattr("botocore.auth.datetime.datetime", _Frozen)
    request = AWSRequest(
        method="POST",
        url="https://sts.eu-west-1.amazonaws.com/",
        data=GET_CALLER_IDENTITY.encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded; charset=utf-8",
            "x-idemgate-server-id": "gw-1",
        },
    )
    SigV4Auth(Credentials("ASIAEXAMPLE", "secret", "tok"), "sts", "eu-west-1").add_auth(request)
    assert headers["authorization"] == request.headers["Authorization"]
    assert headers["x-amz-security-token"] == "tok"


class _Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _Frozen:  # type: ignore[override]
        return cls.fromtimestamp(SIGNED_AT.timestamp(), tz)

    @classmethod
    def utcnow(cls) -> _Frozen:  # type: ignore[override]
        return cls.fromtimestamp(SIGNED_AT.timestamp(), datetime.UTC).replace(tzinfo=None)


def test_one_proof_is_reused_until_it_is_240_seconds_old() -> None:
    now = [1_000_000.0]
    iam = IamAuthorization(
        server_id="gw", region="us-east-1", credentials=lambda: CREDENTIALS, clock=lambda: now[0]
    )
    first = iam.header()
    now[0] += 239.9
    assert iam.header() == first
    now[0] += 0.1
    assert iam.header() != first


def test_the_sts_url_follows_the_environment() -> None:
    environ = {"AWS_REGION": "ap-south-1", "IDEMGATE_STS_URL": "https://sts.vpce.example/"}
    iam = IamAuthorization(server_id="gw", credentials=lambda: CREDENTIALS, environ=environ)
    assert (iam.region, iam.sts_url) == ("ap-south-1", "https://sts.vpce.example/")


@pytest.mark.parametrize(
    ("server_id", "region", "credentials", "says"),
    [
        ("", "us-east-1", CREDENTIALS, "server id"),
        ("gw", None, CREDENTIALS, "AWS_REGION"),
        ("gw", "us-east-1", None, "AWS_ACCESS_KEY_ID"),
    ],
)
def test_iam_auth_without_what_it_needs_fails_at_init(
    server_id: str, region: str | None, credentials: AwsCredentials | None, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        IamAuthorization(
            server_id=server_id, region=region, credentials=lambda: credentials, environ={}
        )


def test_the_store_sends_the_proof_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("IDEMGATE_AUTH_SERVER_ID", "gw-9")
    monkeypatch.setenv("IDEMGATE_TOKEN", "igt_not-sent-with-iam")
    seen: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if request.url.path.endswith("/claim"):
            return httpx.Response(
                201, json={"outcome": "claimed", "lease_token": "t", "attempt": 1}
            )
        return httpx.Response(200, json={"outcome": "completed", "attempt": 1})

    store = GatewayPersistenceLayer(
        url="http://gw", namespace="ns", auth="iam", transport=httpx.MockTransport(gateway)
    )

    @idempotent(persistence_store=store)
    def handler(event: dict[str, int], context: object) -> int:
        return event["n"]

    assert handler({"n": 1}, None) == 1  # claim, then complete
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert _decode(seen[0])["headers"]["x-idemgate-server-id"] == "gw-9"  # type: ignore[index]
    with pytest.raises(ValueError, match="auth must be"):
        GatewayPersistenceLayer(url="http://gw", namespace="ns", auth="basic")  # type: ignore[arg-type]
