"""The storage contract, run against every backend directly (no HTTP in between)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest

from idemgate._settings import Settings
from idemgate._storage import Record, Status, Storage, open_storage

NOW_S = 1_800_000_000

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    backend = open_storage(Settings(storage=storage_url))
    yield backend
    await backend.close()


def in_progress(**changes: object) -> Record:
    record = Record(
        namespace=f"c-{uuid.uuid4().hex[:10]}",
        key="k",
        status=Status.IN_PROGRESS,
        fingerprint="sha256:ab",
        attempt=1,
        lease_token="token-1",
        lease_expires_at=NOW_S * 1000 + 60_000,
        ttl_s=3600,
        expires_at_s=NOW_S + 60 + 3600,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


async def complete_now(
    storage: Storage, record: Record, *, result: str, ttl_s: int | None = None
) -> Record | None:
    """``storage.complete`` of ``record`` by its own holder, at ``NOW_S``."""
    return await storage.complete(
        record.namespace,
        record.key,
        record.lease_token,
        result=result,
        completed_at=NOW_S * 1000,
        expires_base_s=NOW_S,
        ttl_s=ttl_s,
        now_s=NOW_S,
    )


async def test_create_writes_when_absent_and_get_reads_it_back(storage: Storage) -> None:
    record = in_progress()
    assert await storage.create(record, now_s=NOW_S) is None
    assert await storage.get(record.namespace, record.key) == record


async def test_create_returns_the_live_record_unchanged(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now_s=NOW_S)
    second = dataclasses.replace(first, lease_token="token-2", fingerprint=None)
    assert await storage.create(second, now_s=NOW_S) == first
    assert await storage.get(first.namespace, first.key) == first


async def test_create_replaces_an_expired_record(storage: Storage) -> None:
    expired = in_progress(expires_at_s=NOW_S)
    await storage.create(expired, now_s=NOW_S - 10)
    fresh = dataclasses.replace(expired, lease_token="token-2", expires_at_s=NOW_S + 100)
    assert await storage.create(fresh, now_s=NOW_S) is None
    assert await storage.get(fresh.namespace, fresh.key) == fresh


async def test_get_returns_none_when_absent(storage: Storage) -> None:
    assert await storage.get("absent", "nothing") is None


async def test_take_over_needs_the_previous_record(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now_s=NOW_S)
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    someone_else = dataclasses.replace(first, lease_token="someone-else")
    assert not await storage.take_over(successor, previous=someone_else)
    assert await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == successor
    assert not await storage.take_over(successor, previous=first)


async def test_take_over_fails_once_the_lease_it_saw_was_extended(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now_s=NOW_S)
    extended = first.lease_expires_at + 30_000
    base_s = NOW_S + 90
    assert await storage.extend(
        first.namespace,
        first.key,
        "token-1",
        lease_expires_at=extended,
        expires_base_s=base_s,
        now_s=NOW_S,
    )
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    assert not await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == dataclasses.replace(
        first, lease_expires_at=extended, expires_at_s=base_s + first.ttl_s
    )


async def test_take_over_fails_on_a_completed_record_with_the_same_lease(
    storage: Storage,
) -> None:
    first = in_progress()
    await storage.create(first, now_s=NOW_S)
    done = await complete_now(storage, first, result="1")
    assert done is not None
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    assert not await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == done


async def test_complete_stores_the_result_once_for_the_holder(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)

    async def complete(token: str, result: str) -> Record | None:
        return await storage.complete(
            record.namespace,
            record.key,
            token,
            result=result,
            completed_at=NOW_S * 1000 + 5,
            expires_base_s=NOW_S + 1,
            ttl_s=None,
            now_s=NOW_S,
        )

    assert await complete("wrong", "1") is None
    done = await complete("token-1", '{"a":1}')
    assert done == dataclasses.replace(
        record,
        status=Status.COMPLETED,
        result='{"a":1}',
        completed_at=NOW_S * 1000 + 5,
        expires_at_s=NOW_S + 1 + 3600,
    )
    assert await storage.get(record.namespace, record.key) == done
    assert await complete("token-1", "2") is None


async def test_complete_with_ttl_sets_it(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    done = await complete_now(storage, record, result="null", ttl_s=10)
    assert done is not None
    assert (done.ttl_s, done.expires_at_s, done.result) == (10, NOW_S + 10, "null")


async def test_complete_refuses_an_expired_record(storage: Storage) -> None:
    record = in_progress(expires_at_s=NOW_S)
    await storage.create(record, now_s=NOW_S - 10)
    done = await complete_now(storage, record, result="1")
    assert done is None


async def test_extend_moves_the_lease_and_the_expiry(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    lease = NOW_S * 1000 + 500_000
    extend = {"lease_expires_at": lease, "expires_base_s": NOW_S + 500, "now_s": NOW_S}
    assert not await storage.extend(record.namespace, record.key, "wrong", **extend)
    assert await storage.extend(record.namespace, record.key, "token-1", **extend)
    stored = await storage.get(record.namespace, record.key)
    assert stored == dataclasses.replace(
        record, lease_expires_at=lease, expires_at_s=NOW_S + 500 + 3600
    )


async def test_release_deletes_only_for_the_holder_while_in_progress(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    assert not await storage.release(record.namespace, record.key, "wrong")
    assert await storage.release(record.namespace, record.key, "token-1")
    assert await storage.get(record.namespace, record.key) is None
    assert not await storage.release(record.namespace, record.key, "token-1")


async def test_release_keeps_a_completed_record(storage: Storage) -> None:
    record = in_progress(status=Status.COMPLETED, result="1", completed_at=1)
    await storage.create(record, now_s=NOW_S)
    assert not await storage.release(record.namespace, record.key, "token-1")
    assert await storage.get(record.namespace, record.key) == record


async def test_delete_removes_any_record_and_absent_is_fine(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    await storage.delete(record.namespace, record.key)
    await storage.delete(record.namespace, record.key)
    assert await storage.get(record.namespace, record.key) is None


async def test_records_differing_only_in_namespace_are_separate(storage: Storage) -> None:
    record = in_progress()
    neighbour = dataclasses.replace(record, namespace=record.namespace + "x")
    assert await storage.create(record, now_s=NOW_S) is None
    assert await storage.create(neighbour, now_s=NOW_S) is None


async def test_results_keep_every_character(storage: Storage) -> None:
    result = '{"emoji":"\U0001f600","quote":"\\"","nul":"\\u0000","cjk":"\u6f22\u5b57"}'
    record = in_progress(status=Status.COMPLETED, result=result, completed_at=1)
    await storage.create(record, now_s=NOW_S)
    stored = await storage.get(record.namespace, record.key)
    assert stored is not None
    assert stored.result == result


async def test_check_passes_when_the_storage_answers(storage: Storage) -> None:
    await storage.check()


async def test_sweep_deletes_only_expired_records(storage: Storage) -> None:
    expired = in_progress(expires_at_s=NOW_S - 1)
    live = in_progress()
    await storage.create(expired, now_s=NOW_S - 100)
    await storage.create(live, now_s=NOW_S)
    await storage.sweep(now_s=NOW_S)
    assert await storage.get(live.namespace, live.key) == live
    if storage.name == "sqlite":
        assert await storage.get(expired.namespace, expired.key) is None


async def all_pages(storage: Storage, namespace: str, limit: int) -> list[list[Record]]:
    pages, after = [], None
    while True:
        page, after = await storage.list_records(namespace, after=after, limit=limit)
        pages.append(page)
        if after is None:
            return pages


async def test_list_records_pages_a_namespace_latest_lease_first(storage: Storage) -> None:
    first = in_progress()
    records = [
        dataclasses.replace(first, key=f"k{index}", lease_expires_at=first.lease_expires_at + index)
        for index in range(7)
    ]
    records[2] = dataclasses.replace(records[2], expires_at_s=NOW_S - 1)  # expired: still listed
    for record in records:
        await storage.create(record, now_s=NOW_S - 10)
    await storage.create(in_progress(key="elsewhere"), now_s=NOW_S)  # another namespace
    pages = await all_pages(storage, first.namespace, limit=3)
    listed = [record for page in pages for record in page]
    assert listed == sorted(records, key=lambda record: -record.lease_expires_at)
    assert all(len(page) <= 3 for page in pages)


async def test_list_records_visits_records_with_one_lease_end_once_each(storage: Storage) -> None:
    first = in_progress()
    keys = {f"same-{index}" for index in range(5)}
    for key in keys:
        await storage.create(dataclasses.replace(first, key=key), now_s=NOW_S)
    listed = [
        record.key for page in await all_pages(storage, first.namespace, 2) for record in page
    ]
    assert sorted(listed) == sorted(keys)


async def test_list_records_continues_after_any_listed_record(storage: Storage) -> None:
    first = in_progress()
    for index in range(4):
        late = first.lease_expires_at + index
        await storage.create(
            dataclasses.replace(first, key=f"k{index}", lease_expires_at=late), now_s=NOW_S
        )
    page, _ = await storage.list_records(first.namespace, after=None, limit=4)
    rest, after = await storage.list_records(
        first.namespace, after=(page[1].lease_expires_at, page[1].key), limit=4
    )
    assert rest == page[2:]
    assert after is None
    assert await storage.list_records("c-empty-namespace", after=None, limit=5) == ([], None)


async def test_end_lease_moves_an_in_progress_lease_end_earlier_only(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    now_ms = NOW_S * 1000
    ended = dataclasses.replace(record, lease_expires_at=now_ms)
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=now_ms) == ended
    assert await storage.get(record.namespace, record.key) == ended
    later = now_ms + 120_000
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=later) == ended
    assert await storage.get(record.namespace, record.key) == ended


async def test_end_lease_leaves_a_completed_record_and_knows_absence(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now_s=NOW_S)
    done = await complete_now(storage, record, result='{"ok":true}')
    assert done is not None
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=0) == done
    assert await storage.get(record.namespace, record.key) == done
    assert await storage.end_lease(record.namespace, "absent", lease_expires_at=0) is None
