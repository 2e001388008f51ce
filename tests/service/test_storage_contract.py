"""The storage contract, run against every backend directly (no HTTP in between)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest

from idemgate._settings import Settings
from idemgate._storage import Record, Status, Storage, open_storage

# An instant on a whole second, as every expiry is.
NOW = 1_800_000_000_000
TTL_MS = 3_600_000

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
        lease_expires_at=NOW + 60_000,
        ttl_ms=TTL_MS,
        expires_at=NOW + 60_000 + TTL_MS,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


async def complete_now(
    storage: Storage, record: Record, *, result: str, ttl_ms: int | None = None
) -> Record | None:
    """``storage.complete`` of ``record`` by its own holder, at ``NOW``."""
    return await storage.complete(
        record.namespace,
        record.key,
        record.lease_token,
        result=result,
        completed_at=NOW,
        expires_base=NOW,
        ttl_ms=ttl_ms,
        now=NOW,
    )


async def test_create_writes_when_absent_and_get_reads_it_back(storage: Storage) -> None:
    record = in_progress()
    assert await storage.create(record, now=NOW) is None
    assert await storage.get(record.namespace, record.key) == record


async def test_create_returns_the_live_record_unchanged(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now=NOW)
    second = dataclasses.replace(first, lease_token="token-2", fingerprint=None)
    assert await storage.create(second, now=NOW) == first
    assert await storage.get(first.namespace, first.key) == first


async def test_create_replaces_an_expired_record(storage: Storage) -> None:
    expired = in_progress(expires_at=NOW)
    await storage.create(expired, now=NOW - 10_000)
    fresh = dataclasses.replace(expired, lease_token="token-2", expires_at=NOW + 100_000)
    assert await storage.create(fresh, now=NOW) is None
    assert await storage.get(fresh.namespace, fresh.key) == fresh


async def test_get_returns_none_when_absent(storage: Storage) -> None:
    assert await storage.get("absent", "nothing") is None


async def test_take_over_needs_the_previous_record(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now=NOW)
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    someone_else = dataclasses.replace(first, lease_token="someone-else")
    assert not await storage.take_over(successor, previous=someone_else)
    assert await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == successor
    assert not await storage.take_over(successor, previous=first)


async def test_take_over_fails_once_the_lease_it_saw_was_extended(storage: Storage) -> None:
    first = in_progress()
    await storage.create(first, now=NOW)
    extended = first.lease_expires_at + 30_000
    base = NOW + 90_000
    assert await storage.extend(
        first.namespace,
        first.key,
        "token-1",
        lease_expires_at=extended,
        expires_base=base,
        now=NOW,
    )
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    assert not await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == dataclasses.replace(
        first, lease_expires_at=extended, expires_at=base + first.ttl_ms
    )


async def test_take_over_fails_on_a_completed_record_with_the_same_lease(
    storage: Storage,
) -> None:
    first = in_progress()
    await storage.create(first, now=NOW)
    done = await complete_now(storage, first, result="1")
    assert done is not None
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    assert not await storage.take_over(successor, previous=first)
    assert await storage.get(first.namespace, first.key) == done


async def test_complete_stores_the_result_once_for_the_holder(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)

    async def complete(token: str, result: str) -> Record | None:
        return await storage.complete(
            record.namespace,
            record.key,
            token,
            result=result,
            completed_at=NOW + 5,
            expires_base=NOW + 1000,
            ttl_ms=None,
            now=NOW,
        )

    assert await complete("wrong", "1") is None
    done = await complete("token-1", '{"a":1}')
    assert done == dataclasses.replace(
        record,
        status=Status.COMPLETED,
        result='{"a":1}',
        completed_at=NOW + 5,
        expires_at=NOW + 1000 + TTL_MS,
    )
    assert await storage.get(record.namespace, record.key) == done
    assert await complete("token-1", "2") is None


async def test_complete_with_ttl_sets_it(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)
    done = await complete_now(storage, record, result="null", ttl_ms=10_000)
    assert done is not None
    assert (done.ttl_ms, done.expires_at, done.result) == (10_000, NOW + 10_000, "null")


async def test_complete_refuses_an_expired_record(storage: Storage) -> None:
    record = in_progress(expires_at=NOW)
    await storage.create(record, now=NOW - 10_000)
    done = await complete_now(storage, record, result="1")
    assert done is None


async def test_extend_moves_the_lease_and_the_expiry(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)
    lease = NOW + 500_000
    extend = {"lease_expires_at": lease, "expires_base": NOW + 500_000, "now": NOW}
    assert not await storage.extend(record.namespace, record.key, "wrong", **extend)
    assert await storage.extend(record.namespace, record.key, "token-1", **extend)
    stored = await storage.get(record.namespace, record.key)
    assert stored == dataclasses.replace(
        record, lease_expires_at=lease, expires_at=NOW + 500_000 + TTL_MS
    )


async def test_release_deletes_only_for_the_holder_while_in_progress(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)
    assert not await storage.release(record.namespace, record.key, "wrong")
    assert await storage.release(record.namespace, record.key, "token-1")
    assert await storage.get(record.namespace, record.key) is None
    assert not await storage.release(record.namespace, record.key, "token-1")


async def test_release_keeps_a_completed_record(storage: Storage) -> None:
    record = in_progress(status=Status.COMPLETED, result="1", completed_at=1)
    await storage.create(record, now=NOW)
    assert not await storage.release(record.namespace, record.key, "token-1")
    assert await storage.get(record.namespace, record.key) == record


async def test_delete_removes_any_record_and_absent_is_fine(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)
    await storage.delete(record.namespace, record.key)
    await storage.delete(record.namespace, record.key)
    assert await storage.get(record.namespace, record.key) is None


async def test_records_differing_only_in_namespace_are_separate(storage: Storage) -> None:
    record = in_progress()
    neighbour = dataclasses.replace(record, namespace=record.namespace + "x")
    assert await storage.create(record, now=NOW) is None
    assert await storage.create(neighbour, now=NOW) is None


async def test_results_keep_every_character(storage: Storage) -> None:
    result = '{"emoji":"\U0001f600","quote":"\\"","nul":"\\u0000","cjk":"\u6f22\u5b57"}'
    record = in_progress(status=Status.COMPLETED, result=result, completed_at=1)
    await storage.create(record, now=NOW)
    stored = await storage.get(record.namespace, record.key)
    assert stored is not None
    assert stored.result == result


async def test_check_passes_when_the_storage_answers(storage: Storage) -> None:
    await storage.check()


async def test_sweep_deletes_only_expired_records(storage: Storage) -> None:
    expired = in_progress(expires_at=NOW - 1000)
    live = in_progress()
    await storage.create(expired, now=NOW - 100_000)
    await storage.create(live, now=NOW)
    await storage.sweep(now=NOW)
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
    records[2] = dataclasses.replace(records[2], expires_at=NOW - 1000)  # expired: still listed
    for record in records:
        await storage.create(record, now=NOW - 10_000)
    await storage.create(in_progress(key="elsewhere"), now=NOW)  # another namespace
    pages = await all_pages(storage, first.namespace, limit=3)
    listed = [record for page in pages for record in page]
    assert listed == sorted(records, key=lambda record: -record.lease_expires_at)
    assert all(len(page) <= 3 for page in pages)


async def test_list_records_visits_records_with_one_lease_end_once_each(storage: Storage) -> None:
    first = in_progress()
    keys = {f"same-{index}" for index in range(5)}
    for key in keys:
        await storage.create(dataclasses.replace(first, key=key), now=NOW)
    listed = [
        record.key for page in await all_pages(storage, first.namespace, 2) for record in page
    ]
    assert sorted(listed) == sorted(keys)


async def test_list_records_continues_after_any_listed_record(storage: Storage) -> None:
    first = in_progress()
    for index in range(4):
        late = first.lease_expires_at + index
        await storage.create(
            dataclasses.replace(first, key=f"k{index}", lease_expires_at=late), now=NOW
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
    await storage.create(record, now=NOW)
    now_ms = NOW
    ended = dataclasses.replace(record, lease_expires_at=now_ms)
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=now_ms) == ended
    assert await storage.get(record.namespace, record.key) == ended
    later = now_ms + 120_000
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=later) == ended
    assert await storage.get(record.namespace, record.key) == ended


async def test_end_lease_leaves_a_completed_record_and_knows_absence(storage: Storage) -> None:
    record = in_progress()
    await storage.create(record, now=NOW)
    done = await complete_now(storage, record, result='{"ok":true}')
    assert done is not None
    assert await storage.end_lease(record.namespace, record.key, lease_expires_at=0) == done
    assert await storage.get(record.namespace, record.key) == done
    assert await storage.end_lease(record.namespace, "absent", lease_expires_at=0) is None


async def test_expiry_reads_back_in_milliseconds_as_written(storage: Storage) -> None:
    record = in_progress(ttl_ms=86_400_000, expires_at=NOW + 7_000)
    await storage.create(record, now=NOW)
    stored = await storage.get(record.namespace, record.key)
    assert stored is not None
    assert (stored.ttl_ms, stored.expires_at) == (86_400_000, NOW + 7_000)
    done = await complete_now(storage, record, result="1", ttl_ms=2_000)
    assert done is not None
    assert (done.ttl_ms, done.expires_at) == (2_000, NOW + 2_000)
    assert await storage.get(record.namespace, record.key) == done


async def test_expiry_is_compared_with_now_to_the_millisecond(storage: Storage) -> None:
    record = in_progress(expires_at=NOW)
    assert await storage.create(record, now=NOW - 60_000) is None
    # Moves the lease and leaves the expiry at NOW: base plus the stored TTL.
    extend = {"lease_expires_at": NOW + 1, "expires_base": NOW - TTL_MS}
    assert await storage.extend(record.namespace, record.key, "token-1", **extend, now=NOW - 1)
    assert not await storage.extend(record.namespace, record.key, "token-1", **extend, now=NOW)
    assert await complete_now(storage, record, result="1") is None  # at NOW: expired
    extended = dataclasses.replace(record, lease_expires_at=NOW + 1)
    fresh = dataclasses.replace(record, lease_token="token-2", expires_at=NOW + 100_000)
    assert await storage.create(fresh, now=NOW - 1) == extended
    assert await storage.create(fresh, now=NOW) is None
