"""A claim with ``wait_ms``: the gateway waits for the holder's outcome instead of answering 409."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest

from idemgate._records import RecordService
from idemgate._settings import Settings
from idemgate._storage import Record, Storage, open_storage

from .test_api import assert_problem, claim


class _WatchedStorage:
    """The real storage, with an event set each time a waiting claim reads the record."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.read = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get(self, namespace: str, key: str) -> Record | None:
        self.read.set()
        return await self._storage.get(namespace, key)


@pytest.fixture
async def watched(storage_url: str) -> AsyncIterator[_WatchedStorage]:
    backend = open_storage(Settings(storage=storage_url))
    yield _WatchedStorage(backend)
    await backend.close()


@pytest.mark.anyio
@pytest.mark.parametrize("finish", ["complete", "release"])
async def test_a_waiting_claim_answers_as_soon_as_the_holder_finishes(
    watched: _WatchedStorage, finish: str
) -> None:
    records = RecordService(cast(Storage, watched))
    namespace = f"w-{uuid.uuid4().hex[:10]}"
    holder = await records.claim(namespace, "k", fingerprint=None, lease_ms=60_000, ttl_ms=60_000)
    waiting = asyncio.create_task(
        records.claim_waiting(
            namespace, "k", fingerprint=None, lease_ms=60_000, ttl_ms=60_000, wait_ms=50_000
        )
    )
    await asyncio.wait_for(watched.read.wait(), timeout=20)  # refused once, now waiting
    assert not waiting.done()
    token = holder.record.lease_token
    if finish == "complete":
        await records.complete(namespace, "k", lease_token=token, result='{"n":1}', ttl_ms=None)
    else:
        await records.release(namespace, "k", lease_token=token)
    answer = await asyncio.wait_for(waiting, timeout=20)
    if finish == "complete":
        assert (answer.claimed, answer.record.result) == (False, '{"n":1}')
    else:
        assert (answer.claimed, answer.record.attempt) == (True, 1)


def test_a_waiting_claim_takes_over_when_the_holders_lease_runs_out(
    client: httpx.Client, record_path: str
) -> None:
    assert claim(client, record_path, lease_ms=300).status_code == 201
    answer = claim(client, record_path, wait_ms=20_000)
    assert answer.status_code == 201
    assert answer.json()["attempt"] == 2


def test_a_waiting_claim_answers_409_when_its_wait_ends_first(
    client: httpx.Client, record_path: str
) -> None:
    assert claim(client, record_path, lease_ms=20_000).status_code == 201
    answer = claim(client, record_path, wait_ms=200)
    body = assert_problem(answer, 409, "IN_PROGRESS")
    assert int(answer.headers["retry-after"]) >= 1
    assert body["lease_expires_at"] > 0


def test_a_claim_of_a_free_key_never_waits(client: httpx.Client, record_path: str) -> None:
    assert claim(client, record_path, wait_ms=50_000).status_code == 201


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("wait_ms", [-1, 50_001, "100", 1.5, None])
def test_a_bad_wait_is_refused(client: httpx.Client, record_path: str, wait_ms: object) -> None:
    assert_problem(claim(client, record_path, wait_ms=wait_ms), 400, "INVALID_REQUEST")
    assert client.get(record_path).status_code == 404
