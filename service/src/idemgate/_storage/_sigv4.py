"""AWS Signature Version 4 for requests signed in their headers, as the DynamoDB client sends.

Only what a JSON-protocol call needs: a path without query parameters and a body hashed
whole. Every header handed to ``sign`` is signed, ``x-amz-security-token`` included when the
credentials carry one: DynamoDB requires the token in the signature. Header names are
lower-cased and sorted, values trimmed with inner runs of whitespace folded to one space, as
the specification says; ``tests/service/test_sigv4.py`` holds this to botocore's ``SigV4Auth``
and to the published test-suite vectors.

The signing key depends only on the secret key, the date, the region and the service, so it
is derived once per secret and UTC day instead of four HMACs per request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import MutableMapping
from dataclasses import dataclass

__all__ = ["ALGORITHM", "Credentials", "SigV4Signer"]

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of AWS credentials; ``token`` is the session token of temporary ones."""

    access_key: str
    secret_key: str
    token: str | None = None


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """Signs requests to ``service`` in ``region``."""

    def __init__(self, *, region: str, service: str) -> None:
        self.region = region
        self.service = service
        self._scope_suffix = f"/{region}/{service}/aws4_request"
        self._signing_key_for: tuple[str, str] = ("", "")
        self._signing_key = b""

    def signing_key(self, secret_key: str, date: str) -> bytes:
        """The key of ``secret_key`` on ``date`` (``YYYYMMDD``); the last one is kept."""
        if self._signing_key_for != (secret_key, date):
            key = _hmac(f"AWS4{secret_key}".encode(), date)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._signing_key_for, self._signing_key = (secret_key, date), key
        return self._signing_key

    def sign(
        self,
        method: str,
        path: str,
        headers: MutableMapping[str, str],
        body: bytes,
        *,
        credentials: Credentials,
        amz_date: str,
    ) -> None:
        """Add ``x-amz-date``, the session token if any, and ``authorization`` to ``headers``.

        ``amz_date`` is the UTC time as ``YYYYMMDDTHHMMSSZ``; ``headers`` must include ``host``.
        """
        headers["x-amz-date"] = amz_date
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        # List comprehensions, not generators: one call each instead of one per header.
        canonical = sorted(
            [(name.lower(), " ".join(value.split())) for name, value in headers.items()]
        )
        signed_headers = ";".join([name for name, _ in canonical])
        canonical_request = "\n".join(
            (
                method,
                path,
                "",
                "".join([f"{name}:{value}\n" for name, value in canonical]),
                signed_headers,
                hashlib.sha256(body).hexdigest(),
            )
        )
        date = amz_date[:8]
        scope = f"{date}{self._scope_suffix}"
        string_to_sign = "\n".join(
            (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
        )
        signature = hmac.new(
            self.signing_key(credentials.secret_key, date),
            string_to_sign.encode(),
            hashlib.sha256,
        ).hexdigest()
        headers["authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
