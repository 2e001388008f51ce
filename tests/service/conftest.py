"""Fixtures for the gateway's own tests."""

from __future__ import annotations

from collections.abc import Iterator

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
