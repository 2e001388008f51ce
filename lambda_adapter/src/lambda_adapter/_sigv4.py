"""AWS Signature Version 4 for the few AWS calls the adapter makes itself, without botocore.

A Lambda function already holds temporary credentials in its environment; the adapter signs
with them to prove its identity to the gateway (``sts:GetCallerIdentity``) and to call SQS.
Importing botocore would cost a cold start more than everything else the adapter does, so the
signature is computed here and tested against botocore's ``SigV4Auth`` and AWS's published
test-suite vectors (tests/adapter/test_sigv4.py).

Only what those calls need is supported: header-signed requests whose URL has an absolute
path and an optional query, with the payload hashed in full.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

__all__ = ["AwsCredentials", "sign_headers"]

_ALGORITHM = "AWS4-HMAC-SHA256"
# Percent-encoding per SigV4: everything but unreserved characters.
_UNRESERVED = "-_.~"


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsCredentials:
    """An access key, its secret and, for temporary credentials, the session token."""

    access_key: str
    secret_key: str
    session_token: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> AwsCredentials | None:
        """The credentials Lambda sets for the execution role, or None when they are absent."""
        access_key = environ.get("AWS_ACCESS_KEY_ID")
        secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
        if not access_key or not secret_key:
            return None
        return cls(
            access_key=access_key,
            secret_key=secret_key,
            session_token=environ.get("AWS_SESSION_TOKEN") or None,
        )

    def __repr__(self) -> str:  # never print a secret
        return f"AwsCredentials(access_key={self.access_key!r}, ...)"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        pairs.append(
            (quote(unquote(name), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED))
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _canonical_value(value: str) -> str:
    return " ".join(value.split())


def sign_headers(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The request's headers with ``host``, ``x-amz-date``, the session token and the signature.

    Every header passed in is signed; names come back lower-case. ``now`` defaults to the
    current UTC time.
    """
    parts = urlsplit(url)
    moment = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    signed: dict[str, str] = {name.lower(): value for name, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    signed_names = ";".join(names)
    canonical_request = "\n".join(
        (
            method.upper(),
            quote(parts.path or "/", safe="/" + _UNRESERVED),
            _canonical_query(parts.query),
            "".join(f"{name}:{_canonical_value(signed[name])}\n" for name in names),
            signed_names,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{credentials.secret_key}".encode(), date), region), service),
        "aws4_request",
    )
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return signed
