"""The policy file on its own: parsing, its checks, scope matching and reloads (in-process)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from idemgate._auth import (
    TOKEN_PREFIX,
    PolicyDocument,
    PolicyFile,
    Principal,
    PrincipalEntry,
    dump_policy,
    load_document,
    new_token,
    parse_policy,
    token_sha256,
)
from idemgate._exceptions import PolicyError

HASH = "0" * 64


def _toml(*principals: str, head: str = "") -> bytes:
    return (head + "".join(f"\n[[principals]]\n{p}\n" for p in principals)).encode()


def test_tokens_are_recognisable_and_carry_32_random_bytes() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        body = token.removeprefix(TOKEN_PREFIX)
        assert len(base64.urlsafe_b64decode(body + "=")) == 32


def test_a_principal_is_found_by_its_token_and_only_by_it() -> None:
    token = new_token()
    policy = parse_policy(
        _toml(
            'name = "a"\nrole = "client"\nnamespaces = ["x"]\n'
            f'token_sha256 = "{token_sha256(token)}"'
        ),
        json_format=False,
    )
    found = policy.by_token(token)
    assert found is not None
    assert (found.name, found.role) == ("a", "client")
    assert policy.by_token(token[:-1]) is None
    assert policy.by_token(token_sha256(token)) is None  # the hash itself is no credential


@pytest.mark.parametrize(
    ("patterns", "allowed", "refused"),
    [
        (["orders"], ["orders"], ["orders-1", "Orders", "order", "xorders"]),
        (["payments-*"], ["payments-", "payments-eu.1"], ["payments", "x-payments-1"]),
        (["team-?"], ["team-a"], ["team-ab", "team-"]),
        (["*"], ["anything", "a.b_c-d"], []),
        (["a", "b-*"], ["a", "b-1"], ["b", "a-1"]),
    ],
)
def test_namespace_patterns_match_whole_names_case_sensitively(
    patterns: list[str], allowed: list[str], refused: list[str]
) -> None:
    entry = PrincipalEntry(name="p", role="client", namespaces=tuple(patterns), token_sha256=HASH)
    principal = Principal.of(entry)
    assert [principal.may_use(n) for n in allowed] == [True] * len(allowed)
    assert [principal.may_use(n) for n in refused] == [False] * len(refused)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'[[principals]]\nname = "a"', "role"),
        (
            _toml('name = "a"\nrole = "root"\nnamespaces = ["x"]\ntoken_sha256 = "' + HASH + '"'),
            "role",
        ),
        (
            _toml('name = "a"\nrole = "client"\nnamespaces = []\ntoken_sha256 = "' + HASH + '"'),
            "namespaces",
        ),
        (_toml('name = "a"\nrole = "client"\nnamespaces = ["x"]'), "exactly one"),
        (
            _toml(
                f'name = "a"\nrole = "client"\nnamespaces = ["x"]\ntoken_sha256 = "{HASH}"\n'
                'aws_arn = "arn:aws:iam::1:role/r"'
            ),
            "exactly one",
        ),
        (
            _toml('name = "a"\nrole = "client"\nnamespaces = ["x"]\ntoken_sha256 = "secret"'),
            "token_sha256",
        ),
        (
            _toml(f'name = "a"\nrole = "client"\nnamespaces = ["x"]\ntoken_sha256 = "{HASH}"') * 1
            + _toml(f'name = "a"\nrole = "admin"\nnamespaces = ["y"]\ntoken_sha256 = "{"1" * 64}"'),
            "unique",
        ),
        (
            _toml(
                'name = "a"\nrole = "client"\nnamespaces = ["x"]\naws_arn = "arn:aws:sts::1:x/*"'
            ),
            "server id",
        ),
        (b"principals = 3", "principals"),
        (b"[[principals]\n", "invalid policy"),
        (b"\xff\xfe", "invalid policy"),
        (b'unknown = "member"', "unknown"),
    ],
)
def test_a_bad_policy_says_what_is_wrong(text: bytes, says: str) -> None:
    with pytest.raises(PolicyError, match=says):
        parse_policy(text, json_format=False)


def test_a_server_id_setting_completes_a_policy_of_aws_principals() -> None:
    text = _toml(
        'name = "fn"\nrole = "client"\nnamespaces = ["x"]\n'
        'aws_arn = "arn:aws:sts::1:assumed-role/r/*"'
    )
    policy = parse_policy(text, json_format=False, server_id="gw")
    assert policy.server_id == "gw"
    found = policy.by_arn("arn:aws:sts::1:assumed-role/r/session")
    assert found is not None
    assert found.name == "fn"
    assert policy.by_arn("arn:aws:sts::1:assumed-role/other/session") is None


@pytest.mark.parametrize("name", ["policy.toml", "policy.json"])
def test_dump_and_load_round_trip_owner_only(tmp_path: Path, name: str) -> None:
    document = PolicyDocument(
        server_id='gw "1"',
        principals=(
            PrincipalEntry(name="a", role="admin", namespaces=("*", "é-*"), token_sha256=HASH),
            PrincipalEntry(name="b", role="client", namespaces=("x",), aws_arn="arn:aws:sts::1:*"),
        ),
    )
    path = tmp_path / name
    dump_policy(document, path)
    assert load_document(path) == document
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_policy_file_reloads_at_most_once_per_interval_and_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.toml"
    first, second = new_token(), new_token()

    def write(*tokens: str) -> None:
        entries = tuple(
            PrincipalEntry(
                name=f"p{n}", role="client", namespaces=("x",), token_sha256=token_sha256(t)
            )
            for n, t in enumerate(tokens)
        )
        dump_policy(PolicyDocument(principals=entries), path)

    write(first)
    now = [0.0]
    source = PolicyFile(path, interval_s=1.0, clock=lambda: now[0])
    write(first, second)
    assert source.current().by_token(second) is None  # not looked at yet
    now[0] = 1.0
    assert source.current().by_token(second) is not None
    path.write_text("[[principals")
    now[0] = 2.0
    kept = source.current()
    assert kept.by_token(first) is not None
    assert kept.by_token(second) is not None
    path.unlink()
    now[0] = 3.0
    assert source.current() is kept


def test_an_iam_identity_is_cached_no_longer_than_its_proof_is_valid() -> None:
    from idemgate._auth import IamVerifier
    from idemgate._exceptions import UnauthenticatedError
    from lambda_adapter._iam import IamAuthorization
    from lambda_adapter._sigv4 import AwsCredentials

    asked: list[bytes] = []
    arn = b"arn:aws:sts::1:assumed-role/r/s"

    async def scenario() -> None:
        async def sts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = int(next(x for x in lines if x.startswith(b"content-length")).split(b":")[1])
            asked.append(await reader.readexactly(length))
            body = b"<GetCallerIdentityResult><Arn>" + arn + b"</Arn></GetCallerIdentityResult>"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(sts, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        signed_at = 1_800_000_000.0
        now = [signed_at + 1]
        proof = IamAuthorization(
            server_id="gw",
            region="us-east-1",
            sts_url=url,
            credentials=lambda: AwsCredentials(access_key="AK", secret_key="SK"),
        ).sign(signed_at)
        verifier = IamVerifier(sts_url=url, timeout_ms=2000, max_age_s=300, clock=lambda: now[0])
        try:
            assert await verifier.arn_of(proof, "gw") == arn.decode()
            now[0] = signed_at + 299
            assert await verifier.arn_of(proof, "gw") == arn.decode()
            assert len(asked) == 1
            now[0] = signed_at + 301
            with pytest.raises(UnauthenticatedError, match="expired"):
                await verifier.arn_of(proof, "gw")
            with pytest.raises(UnauthenticatedError, match="server id"):
                await verifier.arn_of(proof, "another-gateway")
            assert len(asked) == 1
        finally:
            await verifier.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
