"""The function's AWS identity as gateway credentials: a signed ``sts:GetCallerIdentity``.

As HashiCorp Vault's ``aws`` auth method does, the adapter signs (but never sends) a
GetCallerIdentity request with the execution role's credentials, and sends that signed request
to the gateway in ``Authorization: AWS4-IAM <base64 JSON>``. The gateway forwards it to STS,
which answers with the caller's ARN; no secret is ever shared. A signed ``X-Idemgate-Server-Id``
header ties the proof to one gateway, and the gateway refuses proofs older than a few minutes,
so the adapter signs once per container and re-signs shortly before that.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

from ._sigv4 import AwsCredentials, sign_headers

__all__ = ["GET_CALLER_IDENTITY", "IAM_SCHEME", "SERVER_ID_HEADER", "IamAuthorization"]

IAM_SCHEME = "AWS4-IAM"
SERVER_ID_HEADER = "x-idemgate-server-id"
GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"
# The gateway accepts a proof for IDEMGATE_IAM_MAX_AGE_S (300 s by default): re-sign well
# before, so a proof never expires between leaving the function and reaching the gateway.
DEFAULT_REUSE_S = 240.0
_NO_CREDENTIALS = (
    "IAM auth needs AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Lambda sets "
    "them for the execution role)"
)


class IamAuthorization:
    """The ``Authorization`` header proving this function's IAM identity, re-signed as it ages.

    ``credentials`` and ``region`` default to what Lambda sets (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``), read again at each
    signing; ``sts_url`` to the region's STS endpoint (``IDEMGATE_STS_URL`` overrides it).
    """

    def __init__(
        self,
        *,
        server_id: str,
        region: str | None = None,
        sts_url: str | None = None,
        credentials: Callable[[], AwsCredentials | None] = AwsCredentials.from_environment,
        reuse_s: float = DEFAULT_REUSE_S,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        region = region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise ValueError("IAM auth needs the region: set AWS_REGION (Lambda sets it)")
        if not server_id:
            raise ValueError(
                "IAM auth needs the gateway's server id: pass server_id= or set "
                "IDEMGATE_AUTH_SERVER_ID to the gateway's value"
            )
        self.server_id = server_id
        self.region = region
        self.sts_url = (
            sts_url or environ.get("IDEMGATE_STS_URL") or (f"https://sts.{region}.amazonaws.com/")
        )
        if credentials() is None:
            raise ValueError(_NO_CREDENTIALS)
        self._credentials = credentials
        self._reuse_s = reuse_s
        self._clock = clock
        self._signed_at = float("-inf")
        self._header = ""

    def header(self) -> str:
        """``AWS4-IAM <proof>``, signed now or reused while younger than ``reuse_s``."""
        now = self._clock()
        if now - self._signed_at >= self._reuse_s:
            self._header = f"{IAM_SCHEME} {self.sign(now)}"
            self._signed_at = now
        return self._header

    def headers(self, base: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``base`` (raw header fields) with this identity's ``authorization`` instead of any."""
        headers = [field for field in base if field[0].lower() != b"authorization"]
        headers.append((b"authorization", self.header().encode("ascii")))
        return headers

    def sign(self, now: float) -> str:
        """A proof signed at ``now`` (epoch seconds): base64 of the signed request as JSON."""
        credentials = self._credentials()
        if credentials is None:
            raise ValueError(_NO_CREDENTIALS)
        signed = sign_headers(
            method="POST",
            url=self.sts_url,
            headers={
                "content-type": "application/x-www-form-urlencoded; charset=utf-8",
                SERVER_ID_HEADER: self.server_id,
            },
            body=GET_CALLER_IDENTITY.encode(),
            credentials=credentials,
            region=self.region,
            service="sts",
            now=datetime.datetime.fromtimestamp(now, datetime.UTC),
        )
        request = {"url": self.sts_url, "headers": signed, "body": GET_CALLER_IDENTITY}
        return base64.b64encode(json.dumps(request, separators=(",", ":")).encode()).decode()
