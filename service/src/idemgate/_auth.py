"""Who may call: the policy file, bearer tokens, AWS IAM identities and namespace scopes.

``AuthGate`` is one ASGI layer in front of everything that serves requests (FastAPI's router
and the records fast lane alike), so no route can skip it. For each request it finds the
principal (a bearer token looked up by its SHA-256, or an AWS identity proven by a signed
``sts:GetCallerIdentity`` request), then decides from the path and method alone, before any
storage is touched, whether that principal may make the call. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from idemgate._exceptions import (
    AuthUnavailableError,
    ForbiddenError,
    PolicyError,
    ProblemError,
    UnauthenticatedError,
)
from idemgate._storage._connections import ConnectionPool, ExchangeError

__all__ = [
    "OPEN_PATHS",
    "TOKEN_PREFIX",
    "AuthGate",
    "IamVerifier",
    "Policy",
    "PolicyDocument",
    "PolicyFile",
    "Principal",
    "PrincipalEntry",
    "document_security",
    "dump_policy",
    "load_document",
    "load_policy",
    "new_token",
    "parse_policy",
    "token_sha256",
    "validation_text",
]

logger = logging.getLogger("idemgate.auth")

TOKEN_PREFIX = "igt_"
_TOKEN_BYTES = 32
# They carry no record data; the API's description is public anyway.
# The console page shows what /metrics does; its records views call the API with a token.
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/console",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
_OPEN_PREFIX = "/docs/assets/"  # Swagger UI's and ReDoc's own files
# What the client role may do under /v1/records/{namespace}/{key}: the records lifecycle.
_CLIENT_CALLS = frozenset(
    {("GET", ""), ("POST", "claim"), ("POST", "complete"), ("POST", "release"), ("POST", "extend")}
)
_RECORDS_PREFIX = ["", "v1", "records"]
_RELOAD_CHECK_INTERVAL_S = 1.0
Role = Literal["client", "admin"]


# --- the policy file -------------------------------------------------------------------------


class PrincipalEntry(BaseModel):
    """One ``[[principals]]`` entry: a bearer token's hash or an AWS ARN pattern, not both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    role: Role
    namespaces: tuple[str, ...] = Field(min_length=1)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    aws_arn: str | None = Field(default=None, pattern=r"^arn:")

    @model_validator(mode="after")
    def _one_credential(self) -> PrincipalEntry:
        if (self.token_sha256 is None) == (self.aws_arn is None):
            raise ValueError("give exactly one of token_sha256 and aws_arn")
        return self


class PolicyDocument(BaseModel):
    """The whole policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_id: str | None = Field(default=None, min_length=1, max_length=256)
    principals: tuple[PrincipalEntry, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> PolicyDocument:
        names = [entry.name for entry in self.principals]
        if len(set(names)) != len(names):
            raise ValueError("principal names must be unique")
        hashes = [entry.token_sha256 for entry in self.principals if entry.token_sha256]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two principals have the same token")
        return self


def _namespace_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    wild = [fnmatch.translate(p) for p in patterns if p not in exact]
    if not wild:
        return exact.__contains__
    pattern = re.compile("|".join(f"(?:{w})" for w in wild))
    return lambda namespace: namespace in exact or pattern.match(namespace) is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from, what it may do (its role) and where (its namespaces)."""

    name: str
    role: Role
    namespaces: tuple[str, ...]
    may_use: Callable[[str], bool] = field(repr=False, compare=False)

    @classmethod
    def of(cls, entry: PrincipalEntry) -> Principal:
        return cls(entry.name, entry.role, entry.namespaces, _namespace_matcher(entry.namespaces))


class Policy:
    """A parsed policy: principals by token hash, and AWS ARN patterns in file order."""

    def __init__(self, document: PolicyDocument, *, server_id: str | None = None) -> None:
        self.document = document
        self.server_id = server_id or document.server_id
        self._by_token_hash: dict[bytes, Principal] = {}
        arns: list[tuple[re.Pattern[str], Principal]] = []
        for entry in document.principals:
            principal = Principal.of(entry)
            if entry.token_sha256:
                self._by_token_hash[bytes.fromhex(entry.token_sha256)] = principal
            else:
                assert entry.aws_arn is not None
                arns.append((re.compile(fnmatch.translate(entry.aws_arn)), principal))
        self._arns = arns
        self._by_arn: dict[str, Principal | None] = {}
        if arns and not self.server_id:
            raise PolicyError(
                "AWS principals need a server id: set server_id in the policy file or "
                "IDEMGATE_AUTH_SERVER_ID, and the same value in the callers"
            )

    @property
    def has_aws_principals(self) -> bool:
        return bool(self._arns)

    def by_token(self, token: str) -> Principal | None:
        """The token's principal. Only the SHA-256 of the token is compared, never the token:
        a dict lookup on it takes the same time whatever the secret (it reveals nothing but
        bits of a hash, which do not help find a token)."""
        return self._by_token_hash.get(hashlib.sha256(token.encode()).digest())

    def by_arn(self, arn: str) -> Principal | None:
        """The first principal whose ARN pattern matches ``arn``."""
        try:
            return self._by_arn[arn]
        except KeyError:
            found = next((p for pattern, p in self._arns if pattern.match(arn)), None)
            if len(self._by_arn) < 10_000:  # bounded: only STS-proven ARNs get here
                self._by_arn[arn] = found
            return found


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def parse_policy(text: bytes, *, json_format: bool, server_id: str | None = None) -> Policy:
    """The policy in ``text`` (TOML, or JSON when ``json_format``), or ``PolicyError``."""
    return Policy(_document(text, json_format=json_format), server_id=server_id)


def validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
        for error in exc.errors()
    )


def load_document(path: Path) -> PolicyDocument:
    """The policy file as written, or ``PolicyError`` saying what is wrong with it."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc.strerror}") from exc
    return _document(text, json_format=_is_json(path), origin=f"{path}: ")


def _document(text: bytes, *, json_format: bool, origin: str = "") -> PolicyDocument:
    try:
        data = json.loads(text) if json_format else tomllib.loads(text.decode())
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{origin}invalid policy: {validation_text(exc)}") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # UnicodeDecodeError is a ValueError
        raise PolicyError(f"{origin}invalid policy: {exc}") from exc


def load_policy(path: Path, *, server_id: str | None = None) -> Policy:
    document = load_document(path)
    try:
        return Policy(document, server_id=server_id)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def dump_policy(document: PolicyDocument, path: Path) -> None:
    """Write ``document`` to ``path`` (JSON or TOML by its suffix), atomically, owner-only."""
    data = document.model_dump(exclude_none=True)
    if _is_json(path):
        text = json.dumps(data, indent=2) + "\n"
    else:
        lines = [] if document.server_id is None else [f"server_id = {_toml(document.server_id)}"]
        for entry in data["principals"]:
            lines += ["", "[[principals]]"]
            lines += [f"{name} = {_toml(value)}" for name, value in entry.items()]
        text = "\n".join(lines).lstrip("\n") + "\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _toml(value: str | tuple[str, ...] | list[str]) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def new_token() -> str:
    """A fresh bearer token: ``igt_`` and 32 random bytes, base64url without padding."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(
        secrets.token_bytes(_TOKEN_BYTES)
    ).decode().rstrip("=")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PolicyFile:
    """The policy file as it is now: re-read when it changes, at most once per ``interval_s``.

    A new version that does not parse (or a file that vanished) is logged as an error and the
    last good policy stays in force. Each worker process checks on its own.
    """

    def __init__(
        self,
        path: Path,
        *,
        server_id: str | None = None,
        interval_s: float = _RELOAD_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._server_id = server_id
        self._interval_s = interval_s
        self._clock = clock
        self._seen = self._stat()
        self.policy = load_policy(path, server_id=server_id)
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def current(self) -> Policy:
        now = self._clock()
        if now - self._checked >= self._interval_s:
            self._checked = now
            self._reload_if_changed()
        return self.policy

    def _reload_if_changed(self) -> None:
        seen = self._stat()
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self.policy = load_policy(self.path, server_id=self._server_id)
        except PolicyError as exc:
            logger.error("keeping the last good policy: %s", exc)  # noqa: TRY400 - no traceback needed
        else:
            logger.info("policy reloaded from %s", self.path)


# --- AWS IAM identities ----------------------------------------------------------------------

IAM_SCHEME = "AWS4-IAM"
SERVER_ID_HEADER = "x-idemgate-server-id"
GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"
_MAX_PROOF_CHARS = 16_384
_MAX_PROOF_HEADERS = 32
_FUTURE_SKEW_S = 60
_CACHE_LIMIT = 10_000
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]{0,4096}")
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[a-z0-9-]+/sts/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}"
)
_ARN = re.compile(rb"<Arn>\s*(arn:[^<\s]+)\s*</Arn>")
# The gateway frames the request to STS itself (content-length, one keep-alive connection).
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade", "expect"}
)


def default_sts_url(environ: Mapping[str, str] = os.environ) -> str:
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return f"https://sts.{region}.amazonaws.com/"


@dataclass(frozen=True, slots=True)
class _Proven:
    arn: str
    valid_until_s: float
    server_id: str  # what it was checked against: a reload may change it


class IamVerifier:
    """Checks an ``AWS4-IAM`` proof: a signed ``sts:GetCallerIdentity`` request, base64 JSON.

    The proof must be signed for this gateway's STS endpoint, with a signed server-id header
    of this gateway's value and an ``x-amz-date`` at most ``max_age_s`` old. It is then sent
    to STS, which checks the signature and answers with the caller's ARN. That answer is
    cached by the proof itself until the proof is too old, so a container's proof costs one
    STS call per ``max_age_s``, and concurrent requests with one new proof share one call.
    """

    def __init__(
        self,
        *,
        sts_url: str,
        timeout_ms: int,
        max_age_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = ConnectionPool(sts_url, size=8)
        self._timeout_s = timeout_ms / 1000
        self._max_age_s = max_age_s
        self._clock = clock
        self._proven: dict[str, _Proven] = {}
        self._pending: dict[str, asyncio.Future[_Proven]] = {}

    async def close(self) -> None:
        await self._pool.close()

    async def arn_of(self, proof: str, server_id: str) -> str:
        """The caller's ARN, or ``UnauthenticatedError`` / ``AuthUnavailableError``."""
        proven = self._proven.get(proof)
        if (
            proven is not None
            and self._clock() < proven.valid_until_s
            and proven.server_id == server_id
        ):
            return proven.arn
        headers, signed_at = self._check(proof, server_id)
        pending = self._pending.get(proof)
        if pending is None:
            pending = asyncio.ensure_future(self._prove(proof, headers, signed_at, server_id))
            self._pending[proof] = pending
            pending.add_done_callback(lambda _: self._pending.pop(proof, None))
        proven = await asyncio.shield(pending)
        return proven.arn

    async def _prove(
        self, proof: str, headers: dict[str, str], signed_at: float, server_id: str
    ) -> _Proven:
        arn = await self._ask_sts(headers)
        proven = _Proven(arn, signed_at + self._max_age_s, server_id)
        self._remember(proof, proven)  # before the pending call is dropped: no gap between
        return proven

    def _remember(self, proof: str, proven: _Proven) -> None:
        if len(self._proven) >= _CACHE_LIMIT:
            now = self._clock()
            self._proven = {p: v for p, v in self._proven.items() if v.valid_until_s > now}
            while len(self._proven) >= _CACHE_LIMIT:
                del self._proven[next(iter(self._proven))]
        self._proven[proof] = proven

    def _check(self, proof: str, server_id: str) -> tuple[dict[str, str], float]:
        """The headers to send STS and the signing time, once target and age are right."""
        headers = _proof_headers(proof)
        signature = _SIGV4.fullmatch(headers.get("authorization", ""))
        if signature is None:
            raise UnauthenticatedError("The AWS4-IAM proof is not a SigV4-signed STS request.")
        signed = set(signature.group(1).split(";"))
        if not {"host", "x-amz-date", SERVER_ID_HEADER} <= signed or not signed <= set(headers):
            raise UnauthenticatedError(
                f"The AWS4-IAM proof must sign host, x-amz-date and {SERVER_ID_HEADER}."
            )
        if signed & _FRAMING_HEADERS:
            raise UnauthenticatedError("The AWS4-IAM proof signs a connection-level header.")
        if headers["host"] != self._pool.authority:
            raise UnauthenticatedError("The AWS4-IAM proof is signed for another STS endpoint.")
        if headers[SERVER_ID_HEADER] != server_id:
            raise UnauthenticatedError("The AWS4-IAM proof is signed for another server id.")
        try:
            signed_at = (
                datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
                .replace(tzinfo=datetime.UTC)
                .timestamp()
            )
        except ValueError as exc:
            raise UnauthenticatedError("The AWS4-IAM proof has a malformed x-amz-date.") from exc
        age_s = self._clock() - signed_at
        if not -_FUTURE_SKEW_S <= age_s <= self._max_age_s:
            raise UnauthenticatedError(
                f"The AWS4-IAM proof has expired: sign a new one at most {self._max_age_s} s "
                "before use."
            )
        # Only what STS needs goes on: the signed headers and the signature itself.
        forwarded = {name: headers[name] for name in (*sorted(signed), "authorization")}
        return forwarded, signed_at

    async def _ask_sts(self, headers: dict[str, str]) -> str:
        """The caller's ARN, as STS answers the signed request."""
        sent = {"content-type": "application/x-www-form-urlencoded; charset=utf-8", **headers}
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await self._pool.post(sent, GET_CALLER_IDENTITY.encode())
        except (TimeoutError, ExchangeError, OSError) as exc:
            raise AuthUnavailableError(f"STS did not answer: {exc or 'timed out'}") from exc
        if answer.status >= 500 or answer.status == 429 or b"<Code>Throttling" in answer.body:
            raise AuthUnavailableError(f"STS answered {answer.status}: busy or failing")
        found = _ARN.search(answer.body) if answer.status == 200 else None
        if found is None:
            raise UnauthenticatedError("STS refused the AWS4-IAM proof.")
        return found.group(1).decode()


def _proof_headers(proof: str) -> dict[str, str]:
    """The headers of a well-formed proof, names lower-cased, or ``UnauthenticatedError``."""
    if len(proof) > _MAX_PROOF_CHARS:
        raise UnauthenticatedError("The AWS4-IAM proof is too long.")
    try:
        request = json.loads(base64.b64decode(proof, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise UnauthenticatedError("The AWS4-IAM proof is not base64 JSON.") from exc
    if not isinstance(request, dict) or request.get("body") != GET_CALLER_IDENTITY:
        raise UnauthenticatedError("The AWS4-IAM proof is not a GetCallerIdentity request.")
    raw_headers = request.get("headers")
    if not isinstance(raw_headers, dict) or len(raw_headers) > _MAX_PROOF_HEADERS:
        raise UnauthenticatedError("The AWS4-IAM proof has no valid headers.")
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        lower = name.lower() if isinstance(name, str) else ""
        if not (
            _HEADER_NAME.fullmatch(lower)
            and isinstance(value, str)
            and _HEADER_VALUE.fullmatch(value)
        ):
            raise UnauthenticatedError("The AWS4-IAM proof has a malformed header.")
        headers[lower] = value
    return headers


# --- the ASGI layer --------------------------------------------------------------------------


class AuthGate:
    """Authenticates and authorises every HTTP request but those to ``OPEN_PATHS``.

    Records calls (``/v1/records/{namespace}/...``) need a principal whose namespaces match;
    ``DELETE`` and every other path need the ``admin`` role too. The decision uses the path
    and method only, so a refusal is the same whether a record exists or not. In open mode
    (no policy) the gateway has no gate at all.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: PolicyFile,
        iam: IamVerifier | None,
        error_response: Callable[[ProblemError], Response],
    ) -> None:
        self.app = app
        self.policy = policy
        self.iam = iam
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        if path in OPEN_PATHS or path.startswith(_OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope, self.policy.current())
            scope.setdefault("state", {})["principal"] = principal.name
            _authorise(principal, scope["method"], path)
        except ProblemError as error:
            scope.setdefault("state", {})["outcome"] = error.code
            await self.error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope, policy: Policy) -> Principal:
        credentials = next((v for n, v in scope["headers"] if n == b"authorization"), None)
        if credentials is None:
            raise UnauthenticatedError(
                "This gateway needs credentials: Authorization: Bearer <token>, or AWS4-IAM."
            )
        scheme, _, secret = credentials.decode("latin-1").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            principal = policy.by_token(secret.strip())
            if principal is None:
                raise UnauthenticatedError("The bearer token is not known to this gateway.")
            return principal
        if scheme == IAM_SCHEME.lower() and self.iam is not None and policy.server_id:
            arn = await self.iam.arn_of(secret.strip(), policy.server_id)
            principal = policy.by_arn(arn)
            if principal is None:
                raise ForbiddenError(f"The AWS identity {arn} is not a principal of this gateway.")
            return principal
        raise UnauthenticatedError(
            "Unsupported Authorization scheme: use Bearer <token>, or AWS4-IAM when the policy "
            "has AWS principals."
        )


def _authorise(principal: Principal, method: str, path: str) -> None:
    names = path.split("/")
    if len(names) >= 4 and names[:3] == _RECORDS_PREFIX and names[3]:
        namespace = names[3]
        if not principal.may_use(namespace):
            raise ForbiddenError(f"{principal.name!r} may not use the namespace {namespace!r}.")
        if principal.role == "admin":
            return
        if len(names) in (5, 6) and (method, "/".join(names[5:])) in _CLIENT_CALLS:
            return
    elif principal.role == "admin":
        return
    raise ForbiddenError(f"{principal.name!r} is a client; this call needs the admin role.")


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document) with the credentials every guarded path needs."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `idemgate token create` (docs/security.md).",
    }
    schemes["aws4Iam"] = {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`AWS4-IAM <proof>`: a signed sts:GetCallerIdentity (docs/security.md).",
    }
    for path, operations in schema.get("paths", {}).items():
        if path not in OPEN_PATHS:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"aws4Iam": []}]
    return schema
