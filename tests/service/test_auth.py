"""Who may call: bearer tokens, namespace scopes, roles, reloads and open mode, on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate._auth import TOKEN_PREFIX
from idemgate._cli import main
from idemgate.testing import DelayingProxy, DynamoDBLocal, GatewayServer, free_port

OPEN_PATHS = ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"]
RELOAD_TIMEOUT_S = 20.0


@dataclass
class AuthGateway:
    server: GatewayServer
    policy: Path
    log: Path
    client_token: str  # orders-* and the exact namespace "billing"
    admin_token: str  # every namespace
    billing_token: str  # exactly "billing"


@pytest.fixture(scope="session")
def auth_gateway(
    storage_url: str, tmp_path_factory: pytest.TempPathFactory, make_token: Callable[..., str]
) -> Iterator[AuthGateway]:
    """A gateway with a policy file of three tokens, its log lines kept in a file."""
    directory = tmp_path_factory.mktemp("auth")
    policy = directory / "policy.toml"
    client = make_token(policy, "orders-fn", namespaces="orders-*,billing")
    admin = make_token(policy, "ops", role="admin", namespaces="*")
    billing = make_token(policy, "billing-fn", namespaces="billing")
    log = directory / "gateway.log"
    with (
        log.open("wb") as output,
        GatewayServer(
            storage=storage_url, env={"IDEMGATE_AUTH_FILE": str(policy)}, stderr=output
        ) as server,
    ):
        yield AuthGateway(server, policy, log, client, admin, billing)


def _http(gateway: AuthGateway, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.server.url, headers=headers, timeout=10)


def _calls(namespace: str, key: str = "k-1") -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"/v1/records/{namespace}/{key}"
    lease = {"lease_token": "t"}
    return [
        ("POST", f"{base}/claim", {}),
        ("POST", f"{base}/complete", {**lease, "result": 1}),
        ("POST", f"{base}/release", lease),
        ("POST", f"{base}/extend", {**lease, "lease_ms": 1000}),
        ("GET", base, None),
        ("DELETE", base, None),
    ]


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer igt_not-a-known-token", "Basic b3BzOm9wcw==", "Bearer"]
)
def test_every_records_endpoint_is_401_without_known_credentials(
    auth_gateway: AuthGateway, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=auth_gateway.server.url, headers=headers, timeout=10) as http:
        for method, path, body in _calls("orders-a"):
            response = http.request(method, path, json=body)
            _assert_problem(response, 401, "UNAUTHENTICATED")
            assert response.headers["www-authenticate"] == "Bearer"


def test_health_metrics_and_api_description_stay_open(auth_gateway: AuthGateway) -> None:
    with _http(auth_gateway) as http:
        for path in OPEN_PATHS:
            assert http.get(path).status_code == 200, path
        document = http.get("/openapi.json")
    schema = document.json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "aws4Iam"}
    claim = schema["paths"]["/v1/records/{namespace}/{key}/claim"]["post"]
    assert claim["security"] == [{"bearer": []}, {"aws4Iam": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert TOKEN_PREFIX not in document.text


def test_a_client_runs_the_whole_protocol_in_its_namespaces(auth_gateway: AuthGateway) -> None:
    namespace = f"orders-{uuid.uuid4().hex[:8]}"
    with _http(auth_gateway, auth_gateway.client_token) as http:
        claimed = http.post(f"/v1/records/{namespace}/k/claim", json={})
        assert claimed.status_code == 201
        lease = claimed.json()["lease_token"]
        extended = http.post(
            f"/v1/records/{namespace}/k/extend", json={"lease_token": lease, "lease_ms": 5000}
        )
        assert extended.status_code == 200
        completed = http.post(
            f"/v1/records/{namespace}/k/complete", json={"lease_token": lease, "result": [1]}
        )
        assert completed.status_code == 200
        assert http.get(f"/v1/records/{namespace}/k").json()["result"] == [1]
        again = http.post(f"/v1/records/{namespace}/k2/claim", json={}).json()["lease_token"]
        released = http.post(f"/v1/records/{namespace}/k2/release", json={"lease_token": again})
        assert released.status_code == 204


@pytest.mark.parametrize(
    ("token_name", "namespace", "allowed"),
    [
        ("client_token", "orders-eu", True),
        ("client_token", "orders-", True),
        ("client_token", "billing", True),
        ("client_token", "orders", False),  # "orders-*" needs the dash
        ("client_token", "billing-2", False),  # an exact name is no prefix
        ("client_token", "payments", False),
        ("billing_token", "billing", True),
        ("billing_token", "orders-eu", False),
        ("admin_token", "anything.at-all", True),
    ],
)
def test_namespace_scopes_are_exact_names_or_shell_patterns(
    auth_gateway: AuthGateway, token_name: str, namespace: str, allowed: bool
) -> None:
    key = uuid.uuid4().hex
    with _http(auth_gateway, getattr(auth_gateway, token_name)) as http:
        for method, path, body in _calls(namespace, key):
            if method == "DELETE":
                continue
            response = http.request(method, path, json=body)
            if allowed:
                assert response.status_code not in (401, 403), (path, response.text)
            else:
                _assert_problem(response, 403, "FORBIDDEN")


def test_delete_and_operator_paths_need_the_admin_role(auth_gateway: AuthGateway) -> None:
    namespace = f"orders-{uuid.uuid4().hex[:8]}"
    with (
        _http(auth_gateway, auth_gateway.client_token) as client,
        _http(auth_gateway, auth_gateway.admin_token) as admin,
    ):
        assert client.post(f"/v1/records/{namespace}/k/claim", json={}).status_code == 201
        _assert_problem(client.delete(f"/v1/records/{namespace}/k"), 403, "FORBIDDEN")
        assert client.get(f"/v1/records/{namespace}/k").status_code == 200  # still there
        _assert_problem(client.get("/v1/admin/anything"), 403, "FORBIDDEN")
        # Listing a namespace and ending a lease are operators' calls, even in one's namespace.
        _assert_problem(client.get(f"/v1/records/{namespace}"), 403, "FORBIDDEN")
        _assert_problem(client.post(f"/v1/records/{namespace}/k/expire"), 403, "FORBIDDEN")
        assert client.get(f"/v1/records/{namespace}/k").json()["status"] == "in_progress"
        assert [item["key"] for item in admin.get(f"/v1/records/{namespace}").json()["items"]] == [
            "k"
        ]
        assert admin.post(f"/v1/records/{namespace}/k/expire").status_code == 200
        assert admin.delete(f"/v1/records/{namespace}/k").status_code == 204
        _assert_problem(admin.get("/v1/admin/anything"), 404, "NOT_FOUND")
        _assert_problem(admin.get(f"/v1/records/{namespace}/k"), 404, "NOT_FOUND")


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    body = response.json()
    body.pop("request_id")
    return response.status_code, headers, body


def test_a_refusal_says_nothing_about_whether_the_record_exists(
    auth_gateway: AuthGateway,
) -> None:
    namespace = f"payments-{uuid.uuid4().hex[:8]}"
    with (
        _http(auth_gateway, auth_gateway.client_token) as client,
        _http(auth_gateway, auth_gateway.admin_token) as admin,
    ):
        claimed = admin.post(f"/v1/records/{namespace}/exists/claim", json={})
        lease = claimed.json()["lease_token"]
        admin.post(
            f"/v1/records/{namespace}/exists/complete", json={"lease_token": lease, "result": 7}
        )
        for (method, existing, body), (_, missing, _) in zip(
            _calls(namespace, "exists"), _calls(namespace, "missing"), strict=True
        ):
            answers = [client.request(method, path, json=body) for path in (existing, missing)]
            assert _comparable(answers[0]) == _comparable(answers[1])
            assert answers[0].status_code == 403

        assert admin.get(f"/v1/records/{namespace}/exists").json()["result"] == 7


def test_a_refusal_is_answered_before_storage_is_asked(
    dynamodb_local: DynamoDBLocal,
    dynamodb_storage_url: str,
    tmp_path: Path,
    make_token: Callable[..., str],
) -> None:
    """So neither its answer nor its timing can tell whether a record exists.

    Storage is held unreachable behind a proxy: every refused call is still answered 403 and
    none of them sends storage a request, while an allowed call waits for storage and gets 503.
    The gate stands in front of the records routes whatever the backend, so one backend shows it.
    """
    policy = tmp_path / "policy.toml"
    token = make_token(policy, "orders-fn", namespaces="orders-*")
    env = {
        "IDEMGATE_AUTH_FILE": str(policy),
        "IDEMGATE_STORAGE_TIMEOUT_MS": "300",
        "IDEMGATE_SWEEP_INTERVAL_S": "3600",  # no background call to storage meanwhile
    }
    namespace = f"payments-{uuid.uuid4().hex[:8]}"
    with (
        DelayingProxy(dynamodb_local.port) as proxy,
        GatewayServer(
            storage=proxy.routed(dynamodb_storage_url),
            env=env,
        ) as gateway,
        httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client,
    ):
        proxy.hold()
        for method, path, body in [*_calls(namespace, "exists"), *_calls(namespace, "missing")]:
            _assert_problem(client.request(method, path, json=body), 403, "FORBIDDEN")
        assert proxy.held_requests == 0
        allowed = client.post(f"/v1/records/orders-{namespace}/k/claim", json={})
        _assert_problem(allowed, 503, "STORAGE_UNAVAILABLE")
        assert proxy.held_requests > 0
        proxy.release()


def test_log_lines_name_the_principal_and_never_carry_a_token(
    auth_gateway: AuthGateway,
) -> None:
    wrong = "igt_" + "w" * 43
    namespace = f"orders-{uuid.uuid4().hex[:8]}"
    marker = f"/v1/records/{namespace}/log-check"
    with (
        _http(auth_gateway, auth_gateway.client_token) as client,
        _http(auth_gateway, wrong) as stranger,
    ):
        assert client.get(marker).status_code == 404
        assert stranger.get(marker).status_code == 401
        # Wait for both access lines: the log is written after the answer is sent.
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while auth_gateway.log.read_text().count(marker) < 2:
            assert time.monotonic() < deadline, "the access log lines never came"
            time.sleep(0.05)
    text = auth_gateway.log.read_text()
    for token in (
        auth_gateway.client_token,
        auth_gateway.admin_token,
        auth_gateway.billing_token,
        wrong,
    ):
        assert token not in text
        assert token.removeprefix("igt_")[:12] not in text
    lines = [json.loads(line) for line in text.splitlines() if marker in line]
    assert {(line["status"], line["principal"]) for line in lines} == {
        (404, "orders-fn"),
        (401, None),
    }


# --- reloads ---------------------------------------------------------------------------------


@dataclass
class ReloadingGateway:
    server: GatewayServer
    policy: Path
    log: Path
    first_token: str  # in the policy both workers loaded at start


@pytest.fixture(scope="module")
def reloading_gateway(
    storage_url: str, tmp_path_factory: pytest.TempPathFactory, make_token: Callable[..., str]
) -> Iterator[ReloadingGateway]:
    """Two workers with a policy file (its JSON form) that the tests change under them."""
    directory = tmp_path_factory.mktemp("reload")
    policy = directory / "policy.json"
    first = make_token(policy, "first", namespaces="*")
    log = directory / "gateway.log"
    with (
        log.open("wb") as output,
        GatewayServer(
            storage=storage_url,
            workers=2,
            env={"IDEMGATE_AUTH_FILE": str(policy)},
            stderr=output,
        ) as server,
    ):
        yield ReloadingGateway(server, policy, log, first)


def _claim_status(server: GatewayServer, token: str) -> int:
    return httpx.post(
        f"{server.url}/v1/records/reload-{uuid.uuid4().hex}/k/claim",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).status_code


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_new_and_revoked_tokens_take_effect_without_restart_in_every_worker(
    reloading_gateway: ReloadingGateway, make_token: Callable[..., str]
) -> None:
    server, policy = reloading_gateway.server, reloading_gateway.policy
    pid = server.pid
    new = make_token(policy, "second", namespaces="*")
    # New connections land on either worker: a run of 20 successes covers both.
    _until(
        lambda: all(_claim_status(server, new) == 201 for _ in range(20)),
        "the new token was never accepted",
    )
    assert main(["token", "revoke", "--file", str(policy), "second"]) == 0
    _until(
        lambda: all(_claim_status(server, new) == 401 for _ in range(20)),
        "the revoked token was still accepted",
    )
    assert server.pid == pid


def test_a_bad_new_policy_is_logged_and_the_last_good_one_kept(
    reloading_gateway: ReloadingGateway,
) -> None:
    server, log, token = (
        reloading_gateway.server,
        reloading_gateway.log,
        reloading_gateway.first_token,
    )
    reloading_gateway.policy.write_text('{"principals": [{"name": "broken"')
    # A worker looks at the file when requests come, at most once a second: keep asking.
    _until(
        lambda: (
            _claim_status(server, token) == 201
            and log.read_text().count("keeping the last good policy") >= 2
        ),
        "the bad policy was not logged, or the good one was dropped",
    )
    assert [_claim_status(server, token) for _ in range(20)] == [201] * 20


# --- open mode -------------------------------------------------------------------------------


def test_without_a_policy_a_loopback_gateway_is_open_and_warns(
    sqlite_storage_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with log.open("wb") as output, GatewayServer(storage=sqlite_storage_url, stderr=output) as gw:
        claimed = httpx.post(f"{gw.url}/v1/records/open-{uuid.uuid4().hex}/k/claim", timeout=10)
        assert claimed.status_code == 201
    warnings = [json.loads(line) for line in log.read_text().splitlines() if "no policy" in line]
    assert [line["level"] for line in warnings] == ["warning"]


def test_serving_beyond_loopback_without_a_policy_is_refused(
    sqlite_storage_url: str, tmp_path: Path
) -> None:
    port = str(free_port())
    command = [sys.executable, "-m", "idemgate", "serve", "--host", "0.0.0.0", "--port", port]
    refused = subprocess.run(
        [*command, "--storage", sqlite_storage_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert refused.returncode == 1
    assert "refusing to serve 0.0.0.0 without a policy" in refused.stderr
    assert "--allow-anonymous" in refused.stderr


def test_allow_anonymous_is_the_explicit_way_to_serve_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from idemgate._cli import _check_access_policy
    from idemgate._exceptions import ConfigurationError
    from idemgate._settings import Settings

    monkeypatch.delenv("IDEMGATE_AUTH_FILE", raising=False)
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ConfigurationError, match="--allow-anonymous"):
            _check_access_policy(argparse.Namespace(host=host, allow_anonymous=False), Settings())
        opened = argparse.Namespace(host=host, allow_anonymous=True)
        assert _check_access_policy(opened, Settings()).auth_file is None
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        loopback = argparse.Namespace(host=host, allow_anonymous=False)
        assert _check_access_policy(loopback, Settings()).auth_file is None


def test_a_policy_that_does_not_parse_stops_serve_with_a_message(
    sqlite_storage_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[principals]]\nname = "x"\nrole = "root"\nnamespaces = ["*"]\n')
    refused = subprocess.run(
        [sys.executable, "-m", "idemgate", "serve", "--storage", sqlite_storage_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "IDEMGATE_AUTH_FILE": str(policy)},
    )
    assert refused.returncode == 1
    assert "principals.0.role" in refused.stderr


def test_token_list_shows_names_roles_and_scopes_but_never_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_token: Callable[..., str]
) -> None:
    policy = tmp_path / "policy.toml"
    token = make_token(policy, "orders-fn", namespaces="orders,payments-*")
    assert main(["token", "list", "--file", str(policy)]) == 0
    listed = capsys.readouterr().out
    assert listed.split("\t")[:3] == ["orders-fn", "client", "orders,payments-*"]
    assert token not in listed
    assert "token_sha256" in policy.read_text()
    assert policy.read_text().split('token_sha256 = "')[1][:64] not in listed
    assert policy.stat().st_mode & 0o077 == 0
