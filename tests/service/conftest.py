"""Fixtures for the gateway's own tests."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from idemgate.testing import GatewayServer


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        yield http


@pytest.fixture
def record_path(namespace: str) -> str:
    """The path of one fresh record, in the test's own namespace."""
    return f"/v1/records/{namespace}/order-1"


@pytest.fixture(scope="session")
def make_token() -> Callable[..., str]:
    """``idemgate token create`` in a policy file, as an operator runs it; returns the token."""
    return _create_token


def _create_token(policy: Path, name: str, *, role: str = "client", namespaces: str) -> str:
    from idemgate._cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        assert (
            main(
                [
                    "token",
                    "create",
                    "--file",
                    str(policy),
                    "--name",
                    name,
                    "--role",
                    role,
                    "--namespaces",
                    namespaces,
                ]
            )
            == 0
        )
    token = printed.getvalue().strip()
    assert token.startswith("igt_")
    return token
