"""The records contract where operations collide: two replicas, one storage, exact interleavings.

Each test drives ``RecordService`` on real storage (both backends) with a clock of its own, and
holds one operation between its read and its write while another lands, so the race happens
every run instead of now and then. A bounded live race over real gateways checks the same end
to end.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from idemgate._exceptions import InProgressError, LeaseLostError
from idemgate._records import RecordService, epoch_ms
from idemgate._settings import Settings
from idemgate._storage import Record, Status, Storage, open_storage
from idemgate.testing import GatewayServer

pytestmark = pytest.mark.anyio

LEASE_MS = 1000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    backend = open_storage(Settings(storage=storage_url))
    yield backend
    await backend.close()


class Clock:
    """Epoch milliseconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = epoch_ms()

    def __call__(self) -> int:
        return self.now


def replicas(storage: Storage, clock: Clock) -> tuple[RecordService, RecordService]:
    """Two gateways' record logic on the one storage, as two replicas would be."""
    return RecordService(storage, clock=clock), RecordService(storage, clock=clock)


async def claim(service: RecordService, key: str) -> Record:
    claimed = await service.claim(key, "k", fingerprint=None, lease_ms=LEASE_MS, ttl_ms=3_600_000)
    assert claimed.claimed
    return claimed.record


def key() -> str:
    return f"race-{uuid.uuid4().hex[:10]}"


async def test_an_extend_landing_inside_a_take_over_keeps_one_holder(storage: Storage) -> None:
    clock = Clock()
    holder_replica, other_replica = replicas(storage, clock)
    namespace = key()
    held = await claim(holder_replica, namespace)
    clock.now = held.lease_expires_at  # the lease ends: a claim may now take it over

    take_over = storage.take_over
    judged_expired, extended = asyncio.Event(), asyncio.Event()

    async def take_over_after_the_extend(record: Record, *, previous: Record) -> bool:
        judged_expired.set()
        await extended.wait()
        return await take_over(record, previous=previous)

    storage.take_over = take_over_after_the_extend  # type: ignore[method-assign]
    rival = asyncio.create_task(
        other_replica.claim(namespace, "k", fingerprint=None, lease_ms=LEASE_MS, ttl_ms=3_600_000)
    )
    judged = asyncio.create_task(judged_expired.wait())
    await asyncio.wait([rival, judged], return_when=asyncio.FIRST_COMPLETED)
    if rival.done():  # it never reached its take-over: its answer says why
        judged.cancel()
        pytest.fail(f"the claim ended before its take-over: {rival.result()!r}")
    lease_end = await holder_replica.extend(
        namespace, "k", lease_token=held.lease_token, lease_ms=30_000
    )
    extended.set()

    with pytest.raises(InProgressError) as in_progress:
        await rival
    assert in_progress.value.lease_expires_at == lease_end
    stored = await storage.get(namespace, "k")
    assert stored is not None
    assert (stored.lease_token, stored.lease_expires_at) == (held.lease_token, lease_end)


async def test_a_take_over_landing_first_makes_the_extend_fail(storage: Storage) -> None:
    clock = Clock()
    holder_replica, other_replica = replicas(storage, clock)
    namespace = key()
    held = await claim(holder_replica, namespace)
    clock.now = held.lease_expires_at
    successor = await claim(other_replica, namespace)
    assert successor.attempt == 2

    with pytest.raises(LeaseLostError):
        await holder_replica.extend(namespace, "k", lease_token=held.lease_token, lease_ms=30_000)
    stored = await storage.get(namespace, "k")
    assert stored == successor


def applied_twice(
    storage: Storage, operation: str, between: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Make ``operation`` apply its write, then run it again and answer with the second try.

    That is what a storage client's retry does when the first answer was lost: the write
    happened, and the retry meets the state it left (and whatever ``between`` did meanwhile).
    """
    first_try = getattr(storage, operation)

    async def retried(*args: Any, **kwargs: Any) -> Any:
        await first_try(*args, **kwargs)
        if between is not None:
            await between()
        return await first_try(*args, **kwargs)

    setattr(storage, operation, retried)


async def test_a_claim_whose_create_was_applied_twice_is_claimed(storage: Storage) -> None:
    service = RecordService(storage, clock=Clock())
    namespace = key()
    applied_twice(storage, "create")
    held = await claim(service, namespace)
    assert await storage.get(namespace, "k") == held


async def test_a_take_over_applied_twice_is_claimed(storage: Storage) -> None:
    clock = Clock()
    holder_replica, other_replica = replicas(storage, clock)
    namespace = key()
    stale = await claim(holder_replica, namespace)
    clock.now = stale.lease_expires_at
    applied_twice(storage, "take_over")
    successor = await claim(other_replica, namespace)
    assert successor.attempt == 2
    assert successor.lease_token != stale.lease_token
    assert await storage.get(namespace, "k") == successor


async def test_a_complete_applied_twice_answers_the_completed_record(storage: Storage) -> None:
    service = RecordService(storage, clock=Clock())
    namespace = key()
    held = await claim(service, namespace)
    applied_twice(storage, "complete")
    done = await service.complete(
        namespace, "k", lease_token=held.lease_token, result='{"a":1}', ttl_ms=None
    )
    assert (done.status, done.result, done.lease_token) == (
        Status.COMPLETED,
        '{"a":1}',
        held.lease_token,
    )


async def test_an_extend_applied_twice_answers_its_lease_end(storage: Storage) -> None:
    service = RecordService(storage, clock=Clock())
    namespace = key()
    held = await claim(service, namespace)
    applied_twice(storage, "extend")
    lease_end = await service.extend(namespace, "k", lease_token=held.lease_token, lease_ms=9000)
    stored = await storage.get(namespace, "k")
    assert stored is not None
    assert stored.lease_expires_at == lease_end


async def test_a_release_applied_twice_is_released_even_if_a_new_claim_came_between(
    storage: Storage,
) -> None:
    clock = Clock()
    holder_replica, other_replica = replicas(storage, clock)
    namespace = key()
    held = await claim(holder_replica, namespace)
    newcomer: list[Record] = []

    async def claim_meanwhile() -> None:
        newcomer.append(await claim(other_replica, namespace))

    applied_twice(storage, "release", between=claim_meanwhile)
    await holder_replica.release(namespace, "k", lease_token=held.lease_token)
    assert await storage.get(namespace, "k") == newcomer[0]


LIVE_KEYS = 24
LIVE_LEASE_MS = 250


def race_at_lease_end(first: str, second: str, namespace: str) -> tuple[int, int]:
    """Extend-versus-claim at the lease end of ``LIVE_KEYS`` keys; (double holders, collisions).

    Each key is claimed through ``first``; at its lease end, its holder extends through
    ``first`` while a newcomer claims through ``second``, a few milliseconds apart either way.
    Both succeeding is a double holder. A collision is a race where neither answer was decided
    before the other was sent (claim 409 after an extend, or extend 409 after a claim).
    """
    holder = httpx.Client(base_url=first, timeout=30)
    rival = httpx.Client(base_url=second, timeout=30)
    outcomes: list[tuple[int, int]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        path = f"/v1/records/{namespace}/k-{index}"
        held = holder.post(f"{path}/claim", json={"lease_ms": LIVE_LEASE_MS}).json()
        start = threading.Barrier(2)
        offset_ms = index % 9 - 4
        fire_at = (held["lease_expires_at"] + offset_ms) / 1000

        def extend() -> int:
            start.wait()
            time.sleep(max(0.0, fire_at - time.time()))
            body = {"lease_token": held["lease_token"], "lease_ms": 60_000}
            return holder.post(f"{path}/extend", json=body).status_code

        def take_over() -> int:
            start.wait()
            time.sleep(max(0.0, fire_at - time.time()))
            return rival.post(f"{path}/claim", json={"lease_ms": 60_000}).status_code

        with ThreadPoolExecutor(2) as pair:
            extended, claimed = pair.submit(extend), pair.submit(take_over)
            with lock:
                outcomes.append((extended.result(), claimed.result()))

    with ThreadPoolExecutor(LIVE_KEYS) as pool:
        list(pool.map(one, range(LIVE_KEYS)))
    holder.close()
    rival.close()
    assert all(extended in (200, 409) and claimed in (201, 409) for extended, claimed in outcomes)
    double = sum(1 for outcome in outcomes if outcome == (200, 201))
    return double, len(outcomes)


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_extend_racing_a_take_over_over_two_gateways_never_gives_two_holders(
    backend: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    url: str = request.getfixturevalue(f"{backend}_storage_url")
    with GatewayServer(storage=url) as first, GatewayServer(storage=url) as second:
        for round_ in range(2):
            double, raced = race_at_lease_end(first.url, second.url, f"{namespace}-{round_}")
            assert raced == LIVE_KEYS
            assert double == 0
