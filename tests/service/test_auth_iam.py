"""AWS IAM identities end to end: the adapter's signed GetCallerIdentity, a real gateway, and
moto's STS on loopback checking every signature. On both backends."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import httpx
import pytest

from idemgate.testing import GatewayServer, free_port
from lambda_adapter import GatewayPersistenceLayer, IdempotencyConfig, idempotent
from lambda_adapter._iam import IamAuthorization
from lambda_adapter._sigv4 import AwsCredentials

if TYPE_CHECKING:  # at run time, `conftest` may be tests/stack's: only the fixture is needed
    from conftest import MotoServer

SERVER_ID = "idemgate-test"
ALLOWED_ROLE = "orders-fn-role"
POLICY = """\
[[principals]]
name = "orders-lambda"
role = "client"
namespaces = ["orders-*"]
aws_arn = "arn:aws:sts::*:assumed-role/{role}/*"
"""


@dataclass(frozen=True)
class Roles:
    allowed: AwsCredentials
    unknown: AwsCredentials


def _credentials(moto: MotoServer, role: str) -> AwsCredentials:
    issued = moto.temporary_credentials(role, actions=["sts:GetCallerIdentity"])
    return AwsCredentials(
        access_key=issued["aws_access_key_id"],
        secret_key=issued["aws_secret_access_key"],
        session_token=issued["aws_session_token"],
    )


@pytest.fixture(scope="session")
def roles(moto_server: MotoServer) -> Roles:
    return Roles(_credentials(moto_server, ALLOWED_ROLE), _credentials(moto_server, "stranger"))


def _gateway_env(policy: Path, sts_url: str) -> dict[str, str]:
    return {
        "IDEMGATE_AUTH_FILE": str(policy),
        "IDEMGATE_AUTH_SERVER_ID": SERVER_ID,
        "IDEMGATE_STS_URL": sts_url,
        "IDEMGATE_STS_TIMEOUT_MS": "3000",
    }


@pytest.fixture(scope="session")
def iam_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    policy = tmp_path_factory.mktemp("iam") / "policy.toml"
    policy.write_text(POLICY.format(role=ALLOWED_ROLE))
    return policy


@pytest.fixture(scope="session")
def iam_gateway(
    storage_url: str, iam_policy: Path, moto_server: MotoServer
) -> Iterator[GatewayServer]:
    env = _gateway_env(iam_policy, f"{moto_server.endpoint_url}/")
    with GatewayServer(storage=storage_url, env=env) as server:
        yield server


def _proof(
    moto: MotoServer,
    credentials: AwsCredentials,
    *,
    server_id: str = SERVER_ID,
    signed_at: float | None = None,
) -> str:
    authorization = IamAuthorization(
        server_id=server_id,
        region=moto.REGION,
        sts_url=f"{moto.endpoint_url}/",
        credentials=lambda: credentials,
    )
    return f"AWS4-IAM {authorization.sign(time.time() if signed_at is None else signed_at)}"


def _claim(gateway: GatewayServer, authorization: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/records/orders-{uuid.uuid4().hex[:8]}/k/claim",
        headers={"Authorization": authorization},
        timeout=15,
    )


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def _altered(proof: str, change: Callable[[dict[str, object]], None]) -> str:
    scheme, _, encoded = proof.partition(" ")
    request = json.loads(base64.b64decode(encoded))
    change(request)
    return f"{scheme} {base64.b64encode(json.dumps(request).encode()).decode()}"


def test_an_allowed_role_runs_claim_complete_and_get_through_the_adapter(
    iam_gateway: GatewayServer,
    roles: Roles,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", roles.allowed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", roles.allowed.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", roles.allowed.session_token or "")
    monkeypatch.setenv("AWS_REGION", moto_server.REGION)
    monkeypatch.setenv("IDEMGATE_STS_URL", f"{moto_server.endpoint_url}/")
    monkeypatch.setenv("IDEMGATE_AUTH_SERVER_ID", SERVER_ID)
    namespace = f"orders-{uuid.uuid4().hex[:8]}"
    store = GatewayPersistenceLayer(url=iam_gateway.url, namespace=namespace, auth="iam")
    runs: list[str] = []

    @idempotent(persistence_store=store, config=IdempotencyConfig(event_key_jmespath="id"))
    def handler(event: dict[str, str], context: object) -> dict[str, str]:
        runs.append(event["id"])
        return {"charged": event["id"]}

    assert handler({"id": "o-1"}, None) == {"charged": "o-1"}
    assert handler({"id": "o-1"}, None) == {"charged": "o-1"}  # replayed, same proof
    assert runs == ["o-1"]
    proof = store._iam.header() if store._iam else ""
    with httpx.Client(base_url=iam_gateway.url, headers={"Authorization": proof}) as http:
        lease = http.post(f"/v1/records/{namespace}/raw/claim", json={}).json()["lease_token"]
        completed = http.post(
            f"/v1/records/{namespace}/raw/complete", json={"lease_token": lease, "result": 5}
        )
        assert completed.status_code == 200
        assert http.get(f"/v1/records/{namespace}/raw").json()["result"] == 5
        assert http.get(f"/v1/records/{namespace}/missing").status_code == 404
        _assert_problem(http.get("/v1/records/payments-1/x"), 403, "FORBIDDEN")
        _assert_problem(http.delete(f"/v1/records/{namespace}/x"), 403, "FORBIDDEN")


def test_a_role_missing_from_the_policy_is_403(
    iam_gateway: GatewayServer, roles: Roles, moto_server: MotoServer
) -> None:
    _assert_problem(_claim(iam_gateway, _proof(moto_server, roles.unknown)), 403, "FORBIDDEN")


def test_a_forged_or_altered_signature_is_401(
    iam_gateway: GatewayServer, roles: Roles, moto_server: MotoServer
) -> None:
    forged = AwsCredentials(
        access_key=roles.allowed.access_key,
        secret_key="not-the-secret",
        session_token=roles.allowed.session_token,
    )
    _assert_problem(_claim(iam_gateway, _proof(moto_server, forged)), 401, "UNAUTHENTICATED")

    def flip_signature(request: dict[str, object]) -> None:
        headers = request["headers"]
        assert isinstance(headers, dict)
        last = headers["authorization"][-1]
        headers["authorization"] = headers["authorization"][:-1] + ("0" if last != "0" else "1")

    def claim_another_token(request: dict[str, object]) -> None:
        headers = request["headers"]
        assert isinstance(headers, dict)
        headers["x-amz-security-token"] = roles.unknown.session_token

    valid = _proof(moto_server, roles.allowed)
    for change in (flip_signature, claim_another_token):
        altered = _claim(iam_gateway, _altered(valid, change))
        _assert_problem(altered, 401, "UNAUTHENTICATED")
        assert altered.headers["www-authenticate"] == "Bearer"
    assert _claim(iam_gateway, valid).status_code == 201


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: r.update(body="Action=AssumeRole&Version=2011-06-15"), id="action"),
        pytest.param(lambda r: r["headers"].pop("x-idemgate-server-id"), id="no-server-id"),
        pytest.param(lambda r: r["headers"].update(host="sts.amazonaws.com"), id="other-sts"),
        pytest.param(lambda r: r["headers"].update({"x-a": "b\r\nx-c: d"}), id="header-smuggle"),
        pytest.param(
            lambda r: r["headers"].update(
                {
                    "transfer-encoding": "chunked",
                    "authorization": r["headers"]["authorization"].replace(
                        "SignedHeaders=", "SignedHeaders=transfer-encoding;"
                    ),
                }
            ),
            id="framing-header",
        ),
    ],
)
def test_a_proof_of_the_wrong_shape_is_401_before_sts_is_asked(
    iam_gateway: GatewayServer,
    roles: Roles,
    moto_server: MotoServer,
    change: Callable[[dict[str, object]], None],
) -> None:
    altered = _altered(_proof(moto_server, roles.allowed), change)
    _assert_problem(_claim(iam_gateway, altered), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("garbage", ["AWS4-IAM", "AWS4-IAM !!!", "AWS4-IAM " + "A" * 12_000])
def test_a_proof_that_is_not_base64_json_is_401(iam_gateway: GatewayServer, garbage: str) -> None:
    _assert_problem(_claim(iam_gateway, garbage), 401, "UNAUTHENTICATED")


def test_a_proof_past_the_header_limit_is_refused_before_it_is_read(
    iam_gateway: GatewayServer,
) -> None:
    _assert_problem(_claim(iam_gateway, "AWS4-IAM " + "A" * 20_000), 431, "HEADERS_TOO_LARGE")


def test_a_proof_for_another_server_id_is_401(
    iam_gateway: GatewayServer, roles: Roles, moto_server: MotoServer
) -> None:
    proof = _proof(moto_server, roles.allowed, server_id="another-service")
    _assert_problem(_claim(iam_gateway, proof), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("age_s", [301, 3600, -600])
def test_an_expired_or_future_proof_is_401(
    iam_gateway: GatewayServer, roles: Roles, moto_server: MotoServer, age_s: int
) -> None:
    proof = _proof(moto_server, roles.allowed, signed_at=time.time() - age_s)
    answer = _claim(iam_gateway, proof)
    _assert_problem(answer, 401, "UNAUTHENTICATED")
    if age_s > 0:
        assert "expired" in answer.json()["detail"]


def test_sts_unreachable_is_503_not_500(
    sqlite_storage_url: str, iam_policy: Path, roles: Roles, moto_server: MotoServer
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/"
    env = _gateway_env(iam_policy, nowhere)
    with GatewayServer(storage=sqlite_storage_url, env=env) as gateway:
        authorization = IamAuthorization(
            server_id=SERVER_ID,
            region=moto_server.REGION,
            sts_url=nowhere,
            credentials=lambda: roles.allowed,
        )
        answer = _claim(gateway, authorization.header())
        _assert_problem(answer, 503, "AUTH_UNAVAILABLE")
        assert answer.headers["retry-after"] == "1"


class _CountingSts(http.server.BaseHTTPRequestHandler):
    """A scripted STS: every GetCallerIdentity is the allowed role, and each call is counted."""

    calls: ClassVar[list[str]] = []
    ARN = f"arn:aws:sts::123456789012:assumed-role/{ALLOWED_ROLE}/counted"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.calls.append(body.decode())
        answer = (
            "<GetCallerIdentityResponse><GetCallerIdentityResult>"
            f"<Arn>{self.ARN}</Arn><UserId>x</UserId><Account>123456789012</Account>"
            "</GetCallerIdentityResult></GetCallerIdentityResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/xml")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_one_proof_costs_one_sts_call_however_many_requests_carry_it(
    sqlite_storage_url: str, iam_policy: Path, roles: Roles
) -> None:

    sts = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingSts)
    thread = threading.Thread(target=sts.serve_forever, daemon=True)
    thread.start()
    sts_url = f"http://127.0.0.1:{sts.server_address[1]}/"
    try:
        env = _gateway_env(iam_policy, sts_url)
        with GatewayServer(storage=sqlite_storage_url, env=env) as gateway:
            authorization = IamAuthorization(
                server_id=SERVER_ID,
                region="us-east-1",
                sts_url=sts_url,
                credentials=lambda: roles.allowed,
            )
            proof = authorization.header()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: _claim(gateway, proof), range(40)))
            assert [a.status_code for a in answers] == [201] * 40
            assert _CountingSts.calls == ["Action=GetCallerIdentity&Version=2011-06-15"]
            assert authorization.header() == proof  # the adapter reuses it, too
    finally:
        sts.shutdown()
        sts.server_close()
