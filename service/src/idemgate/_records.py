"""The records logic: status, expiry, fingerprint and lease rules, written once above storage.

Instants are epoch milliseconds from the gateway's own clock and durations are milliseconds
(the HTTP API's ``ttl_s`` is converted where a request is read). A record's expiry
(``expires_at``) is rounded up to a whole second here, where it is computed, and nowhere else:
DynamoDB's TTL attribute is in epoch seconds, so the one stored value then means the same
instant to the expiry conditions and to DynamoDB's clean-up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from idemgate._exceptions import (
    FingerprintMismatchError,
    InProgressError,
    InvalidRequestError,
    LeaseLostError,
    NotFoundError,
)
from idemgate._storage import ListPosition, Record, Status, Storage

__all__ = ["Claim", "Listing", "RecordService", "epoch_ms", "whole_second"]

# A claim races at most a few writers: each lost race means another caller made progress.
_TAKE_OVERS = 4
# A waiting claim reads the record again after these pauses (doubling), and at the holder's
# lease expiry; reads, not conditional writes, so waiting costs no write capacity.
_WAIT_FIRST_POLL_MS = 20
_WAIT_MAX_POLL_MS = 250


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: ``record`` is ours to run when ``claimed``, else a replay."""

    claimed: bool
    record: Record


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def whole_second(ms: int) -> int:
    """``ms`` rounded up to a whole second, still in milliseconds."""
    return -(-ms // 1000) * 1000


# A filtered listing reads at most this many storage pages per answer, then hands back a cursor.
_LIST_PAGES_READ = 5
_MAX_CURSOR_CHARS = 512
_MAX_KEY_CHARS = 255
_MAX_POSITION_MS = 2**53


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a namespace's records, and the cursor of the next page (None: no more)."""

    records: list[Record]
    cursor: str | None


def _encode_cursor(position: ListPosition) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def _decode_cursor(cursor: str) -> ListPosition:
    """The position a cursor holds; ``InvalidRequestError`` for anything this gateway never gave."""
    position = None
    if len(cursor) <= _MAX_CURSOR_CHARS:
        try:
            position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
            position = None
    match position:
        case [int(lease_expires_at), str(key)] if (
            0 <= lease_expires_at < _MAX_POSITION_MS and 0 < len(key) <= _MAX_KEY_CHARS
        ):
            return lease_expires_at, key
    raise InvalidRequestError("query.cursor: not a cursor this gateway gave")


def _fingerprints_conflict(stored: str | None, sent: str | None) -> bool:
    return stored is not None and sent is not None and stored != sent


class RecordService:
    """Claim, complete, release, extend, read and delete records on any ``Storage``."""

    def __init__(self, storage: Storage, *, clock: Callable[[], int] = epoch_ms) -> None:
        self.storage = storage
        self._clock = clock

    async def claim(
        self,
        namespace: str,
        key: str,
        *,
        fingerprint: str | None,
        lease_ms: int,
        ttl_ms: int,
        lease_token: str | None = None,
    ) -> Claim:
        """Claim the key, or answer with its completed record.

        ``lease_token`` is the token the caller made for this claim and resends on its retries
        (None: the gateway makes one). A record in progress under the same token, its lease
        not yet over, is this claim's own earlier write, applied by a call whose answer was lost
        (a retried storage call, or a whole claim answered 503 and applied afterwards): it is
        answered claimed, with its lease. A completed record replays whatever its token, and an
        ended lease under the same token is taken over as any other.

        Raises ``FingerprintMismatchError`` or ``InProgressError``.
        """
        now = self._clock()
        lease_expires_at = now + lease_ms
        ttl_ms = whole_second(ttl_ms)
        fresh = Record(
            namespace=namespace,
            key=key,
            status=Status.IN_PROGRESS,
            fingerprint=fingerprint,
            attempt=1,
            lease_token=secrets.token_urlsafe(18) if lease_token is None else lease_token,
            lease_expires_at=lease_expires_at,
            ttl_ms=ttl_ms,
            expires_at=whole_second(lease_expires_at) + ttl_ms,
        )
        take_overs = 0
        while True:  # a failed take-over is followed by a read, which may find our own write
            stored = await self.storage.create(fresh, now=now)
            if stored is None:
                return Claim(claimed=True, record=fresh)
            if _fingerprints_conflict(stored.fingerprint, fingerprint):
                raise FingerprintMismatchError
            if stored.status is Status.COMPLETED:
                return Claim(claimed=False, record=stored)
            if stored.lease_expires_at > now:
                if stored.lease_token == fresh.lease_token:
                    return Claim(claimed=True, record=stored)
                raise InProgressError(lease_expires_at=stored.lease_expires_at, now=now)
            if take_overs == _TAKE_OVERS:
                raise InProgressError(lease_expires_at=lease_expires_at, now=now)
            take_overs += 1
            successor = dataclasses.replace(fresh, attempt=stored.attempt + 1)
            if await self.storage.take_over(successor, previous=stored):
                return Claim(claimed=True, record=successor)

    async def claim_waiting(
        self,
        namespace: str,
        key: str,
        *,
        fingerprint: str | None,
        lease_ms: int,
        ttl_ms: int,
        wait_ms: int,
        lease_token: str | None = None,
    ) -> Claim:
        """``claim``, but while another caller holds the key, wait up to ``wait_ms`` for it.

        Answers as soon as the holder completes (the replay), releases or lets its lease run
        out (the claim); raises ``InProgressError`` when ``wait_ms`` ends first.
        """
        deadline = self._clock() + wait_ms
        while True:
            try:
                return await self.claim(
                    namespace,
                    key,
                    fingerprint=fingerprint,
                    lease_ms=lease_ms,
                    ttl_ms=ttl_ms,
                    lease_token=lease_token,
                )
            except InProgressError as busy:
                holder_until = busy.lease_expires_at
                if self._clock() >= deadline:
                    raise
            pause = _WAIT_FIRST_POLL_MS
            while (now := self._clock()) < min(deadline, holder_until):
                await asyncio.sleep((min(deadline, holder_until, now + pause) - now) / 1000)
                pause = min(pause * 2, _WAIT_MAX_POLL_MS)
                stored = await self._live(namespace, key, self._clock())
                if stored is None or stored.status is Status.COMPLETED:
                    break
                holder_until = stored.lease_expires_at

    async def complete(
        self, namespace: str, key: str, *, lease_token: str, result: str, ttl_ms: int | None
    ) -> Record:
        """Store the result of the holder's work; a repeat by the same holder is harmless.

        Raises ``LeaseLostError``.
        """
        now = self._clock()
        completed = await self.storage.complete(
            namespace,
            key,
            lease_token,
            result=result,
            completed_at=now,
            expires_base=whole_second(now),
            ttl_ms=None if ttl_ms is None else whole_second(ttl_ms),
            now=now,
        )
        if completed is not None:
            return completed
        stored = await self._live(namespace, key, now)
        if (
            stored is not None
            and stored.status is Status.COMPLETED
            and stored.lease_token == lease_token
        ):
            return stored
        raise LeaseLostError

    async def release(self, namespace: str, key: str, *, lease_token: str) -> None:
        """Forget the holder's claim so a retry can run now; a repeat is harmless.

        Raises ``LeaseLostError`` when the holder completed the key: a result is never released.
        Otherwise, once the token holds nothing, the answer is the same however that came to be
        (released now, or by an earlier try whose answer was lost, taken over, expired).
        """
        if await self.storage.release(namespace, key, lease_token):
            return
        stored = await self._live(namespace, key, self._clock())
        if (
            stored is not None
            and stored.status is Status.COMPLETED
            and stored.lease_token == lease_token
        ):
            raise LeaseLostError

    async def extend(self, namespace: str, key: str, *, lease_token: str, lease_ms: int) -> int:
        """Move the holder's lease to end ``lease_ms`` from now. Raises ``LeaseLostError``."""
        now = self._clock()
        lease_expires_at = now + lease_ms
        extended = await self.storage.extend(
            namespace,
            key,
            lease_token,
            lease_expires_at=lease_expires_at,
            expires_base=whole_second(lease_expires_at),
            now=now,
        )
        if not extended:
            raise LeaseLostError
        return lease_expires_at

    async def get(self, namespace: str, key: str) -> Record:
        """The live record. Raises ``NotFoundError`` when it is absent or expired."""
        stored = await self._live(namespace, key, self._clock())
        if stored is None:
            raise NotFoundError(f"No record for key {key!r} in namespace {namespace!r}.")
        return stored

    async def delete(self, namespace: str, key: str) -> None:
        await self.storage.delete(namespace, key)

    async def _live(self, namespace: str, key: str, now: int) -> Record | None:
        stored = await self.storage.get(namespace, key)
        return stored if stored is not None and stored.is_live(now) else None

    async def list_namespace(
        self, namespace: str, *, status: Status | None, cursor: str | None, limit: int
    ) -> Listing:
        """Up to ``limit`` live records of ``namespace`` in ``status`` (any when None).

        Latest lease end first. Raises ``InvalidRequestError`` for a cursor it never gave. A
        page may be short of ``limit`` yet carry a cursor, when most records were filtered out.
        """
        now = self._clock()
        after = _decode_cursor(cursor) if cursor is not None else None
        found: list[Record] = []
        for _ in range(_LIST_PAGES_READ):
            page, after = await self.storage.list_records(namespace, after=after, limit=limit)
            for record in page:
                if record.is_live(now) and status in (None, record.status):
                    found.append(record)
                    if len(found) == limit:
                        return Listing(found, _encode_cursor((record.lease_expires_at, record.key)))
            if after is None:
                break
        return Listing(found, None if after is None else _encode_cursor(after))

    async def expire(self, namespace: str, key: str) -> Record:
        """End an in-progress lease now, so the next claim takes over; a completed record stays.

        Returns the record as it now is. Raises ``NotFoundError`` when it is absent or expired.
        """
        now = self._clock()
        stored = await self.storage.end_lease(namespace, key, lease_expires_at=now)
        if stored is None or not stored.is_live(now):
            raise NotFoundError(f"No record for key {key!r} in namespace {namespace!r}.")
        return stored
