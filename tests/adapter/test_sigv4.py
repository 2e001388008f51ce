"""The adapter's own SigV4 against AWS's published test suite and botocore's ``SigV4Auth``."""

from __future__ import annotations

import datetime

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from lambda_adapter._sigv4 import AwsCredentials, sign_headers

# The credentials and clock of AWS's SigV4 test suite (aws-sig-v4-test-suite, 2015-08-30).
SUITE_CREDENTIALS = AwsCredentials(
    access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
)
SUITE_NOW = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.UTC)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "signature"),
    [
        pytest.param(
            "GET",
            "https://example.amazonaws.com/",
            {},
            b"",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            id="get-vanilla",
        ),
        pytest.param(
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            {},
            b"",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            id="get-vanilla-query-order-key-case",
        ),
        pytest.param(
            "POST",
            "https://example.amazonaws.com/",
            {},
            b"",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            id="post-vanilla",
        ),
        pytest.param(
            "POST",
            "https://example.amazonaws.com/",
            FORM,
            b"Param1=value1",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            id="post-x-www-form-urlencoded",
        ),
    ],
)
def test_signature_matches_the_published_test_suite(
    method: str, url: str, headers: dict[str, str], body: bytes, signature: str
) -> None:
    signed = sign_headers(
        method=method,
        url=url,
        headers=headers,
        body=body,
        credentials=SUITE_CREDENTIALS,
        region="us-east-1",
        service="service",
        now=SUITE_NOW,
    )
    assert signed["authorization"].endswith(f"Signature={signature}")


def _botocore_headers(
    monkeypatch: pytest.MonkeyPatch,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: datetime.datetime,
) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, headers=headers, data=body)
    auth = SigV4Auth(
        Credentials(credentials.access_key, credentials.secret_key, credentials.session_token),
        service,
        region,
    )
    # botocore reads the clock itself, as naive UTC.
    utc = now.astimezone(datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: utc)
    auth.add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


TEMPORARY = AwsCredentials(
    access_key="ASIAEXAMPLEEXAMPLE01",
    secret_key="secret/with+odd=chars",
    session_token="IQoJb3JpZ2luX2VjE" + "x" * 600 + "==",
)
PERMANENT = AwsCredentials(access_key="AKIAEXAMPLEEXAMPLE01", secret_key="s3cr3t")


@pytest.mark.parametrize("credentials", [PERMANENT, TEMPORARY], ids=["keys", "session-token"])
@pytest.mark.parametrize(
    "region", ["us-east-1", "eu-west-3", "cn-north-1", "us-gov-west-1", "ap-southeast-5"]
)
@pytest.mark.parametrize(
    "now",
    [
        datetime.datetime(2026, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
        datetime.datetime(2027, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),
        # A local time whose date differs from UTC's: the scope must use UTC's.
        datetime.datetime(2027, 1, 1, 1, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=3))),
    ],
    ids=["before-midnight", "midnight", "non-utc-clock"],
)
def test_signature_matches_botocore(
    monkeypatch: pytest.MonkeyPatch,
    credentials: AwsCredentials,
    region: str,
    now: datetime.datetime,
) -> None:
    request = {
        "method": "POST",
        "url": f"https://sqs.{region}.amazonaws.com/123456789012/orders-queue",
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Idemgate-Server-Id": "  gateway.example   internal  ",
        },
        "body": b"Action=ChangeMessageVisibility&VisibilityTimeout=120",
        "credentials": credentials,
        "region": region,
        "service": "sqs",
        "now": now,
    }
    ours = sign_headers(**request)  # type: ignore[arg-type]
    reference = _botocore_headers(monkeypatch, **request)  # type: ignore[arg-type]
    assert ours["authorization"] == reference["authorization"]
    assert ours["x-amz-date"] == reference["x-amz-date"]
    assert ours.get("x-amz-security-token") == reference.get("x-amz-security-token")


def test_query_and_path_are_canonicalised_as_botocore_does(monkeypatch: pytest.MonkeyPatch) -> None:
    request = {
        "method": "GET",
        "url": "https://sts.eu-west-1.amazonaws.com/a%20b/c?b=2&a=1&a=0&Action=GetCallerIdentity",
        "headers": {},
        "body": b"",
        "credentials": TEMPORARY,
        "region": "eu-west-1",
        "service": "sts",
        "now": datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC),
    }
    ours = sign_headers(**request)  # type: ignore[arg-type]
    reference = _botocore_headers(monkeypatch, **request)  # type: ignore[arg-type]
    assert ours["authorization"] == reference["authorization"]


def test_credentials_from_the_lambda_environment() -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "ASIA1",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    credentials = AwsCredentials.from_environment(environ)
    assert credentials == AwsCredentials(
        access_key="ASIA1", secret_key="secret", session_token="token"
    )
    assert "secret" not in repr(credentials)
    assert AwsCredentials.from_environment({"AWS_ACCESS_KEY_ID": "ASIA1"}) is None
