"""Storage outages against real processes: DynamoDB Local killed, paused, and slowed down.

The outage tests run a DynamoDB Local of their own (on disk, so a restart keeps the table),
never the session's: they kill and freeze it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from idemgate._cli import main as idemgate_cli
from idemgate.testing import DelayingProxy, DynamoDBLocal, GatewayServer

from .conftest import (
    FAULT_ENV,
    RECOVERY_TIMEOUT_S,
    STORAGE_TIMEOUT_MS,
    assert_unavailable,
    claim_burst,
    readyz,
    wait_until_serving,
)

BURST = 16


@pytest.fixture(scope="module")
def own_dynamodb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DynamoDBLocal]:
    server = DynamoDBLocal(db_path=tmp_path_factory.mktemp("dynamodb")).start()
    assert idemgate_cli(["create-table", "--storage", server.storage_url("outage")]) == 0
    yield server
    server.stop()


# Three recoveries, each allowed RECOVERY_TIMEOUT_S, and a DynamoDB Local restart.
@pytest.mark.timeout(4 * RECOVERY_TIMEOUT_S)
def test_dynamodb_killed_then_paused_gets_503_in_bounded_time_and_recovers_by_itself(
    own_dynamodb: DynamoDBLocal,
) -> None:
    storage = own_dynamodb.storage_url("outage")
    with GatewayServer(storage=storage, env=FAULT_ENV) as gateway:
        wait_until_serving(gateway.url, BURST)

        own_dynamodb.kill()
        for answer in [*claim_burst(gateway.url, BURST), readyz(gateway.url)]:
            assert_unavailable(answer)
        own_dynamodb.start()  # same port, same files
        wait_until_serving(gateway.url, BURST)

        assert own_dynamodb.pid is not None
        os.kill(own_dynamodb.pid, signal.SIGSTOP)
        try:
            # Connections open, nothing answers: only the storage timeout ends each request.
            for answer in [*claim_burst(gateway.url, BURST), readyz(gateway.url)]:
                assert_unavailable(answer)
        finally:
            os.kill(own_dynamodb.pid, signal.SIGCONT)
        wait_until_serving(gateway.url, BURST)


def test_slow_storage_answers_within_its_timeout_or_503_and_recovers(
    dynamodb_local: DynamoDBLocal, dynamodb_storage_url: str
) -> None:
    with DelayingProxy(dynamodb_local.port) as proxy:
        storage = proxy.routed(dynamodb_storage_url)
        with GatewayServer(storage=storage, env=FAULT_ENV) as gateway:
            # Slower than usual but within the timeout: claims are still served.
            proxy.delay_s = STORAGE_TIMEOUT_MS / 1000 / 8
            wait_until_serving(gateway.url, BURST)
            # Slower than the timeout: a prompt 503, never a hang.
            proxy.delay_s = STORAGE_TIMEOUT_MS / 1000 * 2
            for answer in [*claim_burst(gateway.url, BURST), readyz(gateway.url)]:
                assert_unavailable(answer)
            proxy.delay_s = 0
            wait_until_serving(gateway.url, BURST)
