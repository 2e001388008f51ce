"""The storage contract, run against every backend directly (no HTTP in between)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from idemgate._settings import Settings
from idemgate._storage import Record, Status, Storage, open_storage

NOW_S = 1_800_000_000


@pytest.fixture
def storage(storage_url: str) -> Iterator[Storage]:
    backend = open_storage(Settings(storage=storage_url))
    yield backend
    backend.close()


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


def test_create_writes_when_absent_and_get_reads_it_back(storage: Storage) -> None:
    record = in_progress()
    assert storage.create(record, now_s=NOW_S) is None
    assert storage.get(record.namespace, record.key) == record


def test_create_returns_the_live_record_unchanged(storage: Storage) -> None:
    first = in_progress()
    storage.create(first, now_s=NOW_S)
    second = dataclasses.replace(first, lease_token="token-2", fingerprint=None)
    assert storage.create(second, now_s=NOW_S) == first
    assert storage.get(first.namespace, first.key) == first


def test_create_replaces_an_expired_record(storage: Storage) -> None:
    expired = in_progress(expires_at_s=NOW_S)
    storage.create(expired, now_s=NOW_S - 10)
    fresh = dataclasses.replace(expired, lease_token="token-2", expires_at_s=NOW_S + 100)
    assert storage.create(fresh, now_s=NOW_S) is None
    assert storage.get(fresh.namespace, fresh.key) == fresh


def test_get_returns_none_when_absent(storage: Storage) -> None:
    assert storage.get("absent", "nothing") is None


def test_take_over_needs_the_previous_token(storage: Storage) -> None:
    first = in_progress()
    storage.create(first, now_s=NOW_S)
    successor = dataclasses.replace(first, lease_token="token-2", attempt=2)
    assert not storage.take_over(successor, previous_token="someone-else")
    assert storage.take_over(successor, previous_token="token-1")
    assert storage.get(first.namespace, first.key) == successor
    assert not storage.take_over(successor, previous_token="token-1")


def test_complete_stores_the_result_once_for_the_holder(storage: Storage) -> None:
    record = in_progress()
    storage.create(record, now_s=NOW_S)

    def complete(token: str, result: str) -> Record | None:
        return storage.complete(
            record.namespace,
            record.key,
            token,
            result=result,
            completed_at=NOW_S * 1000 + 5,
            expires_base_s=NOW_S + 1,
            ttl_s=None,
            now_s=NOW_S,
        )

    assert complete("wrong", "1") is None
    done = complete("token-1", '{"a":1}')
    assert done == dataclasses.replace(
        record,
        status=Status.COMPLETED,
        result='{"a":1}',
        completed_at=NOW_S * 1000 + 5,
        expires_at_s=NOW_S + 1 + 3600,
    )
    assert storage.get(record.namespace, record.key) == done
    assert complete("token-1", "2") is None


def test_complete_with_ttl_sets_it(storage: Storage) -> None:
    record = in_progress()
    storage.create(record, now_s=NOW_S)
    done = storage.complete(
        record.namespace,
        record.key,
        "token-1",
        result="null",
        completed_at=NOW_S * 1000,
        expires_base_s=NOW_S,
        ttl_s=10,
        now_s=NOW_S,
    )
    assert done is not None
    assert (done.ttl_s, done.expires_at_s, done.result) == (10, NOW_S + 10, "null")


def test_complete_refuses_an_expired_record(storage: Storage) -> None:
    record = in_progress(expires_at_s=NOW_S)
    storage.create(record, now_s=NOW_S - 10)
    done = storage.complete(
        record.namespace,
        record.key,
        "token-1",
        result="1",
        completed_at=NOW_S * 1000,
        expires_base_s=NOW_S,
        ttl_s=None,
        now_s=NOW_S,
    )
    assert done is None


def test_extend_moves_the_lease_and_the_expiry(storage: Storage) -> None:
    record = in_progress()
    storage.create(record, now_s=NOW_S)
    lease = NOW_S * 1000 + 500_000
    extend = {"lease_expires_at": lease, "expires_base_s": NOW_S + 500, "now_s": NOW_S}
    assert not storage.extend(record.namespace, record.key, "wrong", **extend)
    assert storage.extend(record.namespace, record.key, "token-1", **extend)
    stored = storage.get(record.namespace, record.key)
    assert stored == dataclasses.replace(
        record, lease_expires_at=lease, expires_at_s=NOW_S + 500 + 3600
    )


def test_release_deletes_only_for_the_holder_while_in_progress(storage: Storage) -> None:
    record = in_progress()
    storage.create(record, now_s=NOW_S)
    assert not storage.release(record.namespace, record.key, "wrong")
    assert storage.release(record.namespace, record.key, "token-1")
    assert storage.get(record.namespace, record.key) is None
    assert not storage.release(record.namespace, record.key, "token-1")


def test_release_keeps_a_completed_record(storage: Storage) -> None:
    record = in_progress(status=Status.COMPLETED, result="1", completed_at=1)
    storage.create(record, now_s=NOW_S)
    assert not storage.release(record.namespace, record.key, "token-1")
    assert storage.get(record.namespace, record.key) == record


def test_delete_removes_any_record_and_absent_is_fine(storage: Storage) -> None:
    record = in_progress()
    storage.create(record, now_s=NOW_S)
    storage.delete(record.namespace, record.key)
    storage.delete(record.namespace, record.key)
    assert storage.get(record.namespace, record.key) is None


def test_records_differing_only_in_namespace_are_separate(storage: Storage) -> None:
    record = in_progress()
    neighbour = dataclasses.replace(record, namespace=record.namespace + "x")
    assert storage.create(record, now_s=NOW_S) is None
    assert storage.create(neighbour, now_s=NOW_S) is None


def test_results_keep_every_character(storage: Storage) -> None:
    result = '{"emoji":"\U0001f600","quote":"\\"","nul":"\\u0000","cjk":"\u6f22\u5b57"}'
    record = in_progress(status=Status.COMPLETED, result=result, completed_at=1)
    storage.create(record, now_s=NOW_S)
    stored = storage.get(record.namespace, record.key)
    assert stored is not None
    assert stored.result == result


def test_check_passes_when_the_storage_answers(storage: Storage) -> None:
    storage.check()


def test_sweep_deletes_only_expired_records(storage: Storage) -> None:
    expired = in_progress(expires_at_s=NOW_S - 1)
    live = in_progress()
    storage.create(expired, now_s=NOW_S - 100)
    storage.create(live, now_s=NOW_S)
    storage.sweep(now_s=NOW_S)
    assert storage.get(live.namespace, live.key) == live
    if storage.name == "sqlite":
        assert storage.get(expired.namespace, expired.key) is None
