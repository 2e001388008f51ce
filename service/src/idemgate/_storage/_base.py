"""What a storage backend is: a record type and a few atomic operations on it.

Backends only store and compare. Status, expiry, fingerprint and lease rules live once, in
``idemgate._records``. Every operation is atomic on its own; "live" means
``expires_at > now`` and "held by token" means in progress with that ``lease_token``.

Units, for every operation: an instant (``now``, ``lease_expires_at``, ``expires_at``,
``expires_base``, ``completed_at``) is epoch milliseconds and a duration (``ttl_ms``) is
milliseconds. A record's expiry falls on a whole second: ``expires_at``, ``expires_base`` and
``ttl_ms`` are multiples of 1000 (``idemgate._records`` makes them so), and a backend reads
them back exactly as written, so one that keeps them in seconds (DynamoDB's TTL attribute
must be) converts at its own boundary and nowhere else.

Backends raise ``StorageUnavailableError`` (from the driver's error) when the storage cannot
answer, and nothing else. Methods are coroutines: a backend that talks to a network awaits it
without holding a thread, and one that does not (SQLite) simply returns.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["ListPosition", "Record", "Status", "Storage"]


class Status(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One idempotency record as stored.

    Times are epoch milliseconds and ``ttl_ms`` milliseconds; ``expires_at`` and ``ttl_ms``
    are whole seconds. ``result`` is the completed result as JSON text.
    """

    namespace: str
    key: str
    status: Status
    fingerprint: str | None
    attempt: int
    lease_token: str
    lease_expires_at: int
    ttl_ms: int
    expires_at: int
    completed_at: int | None = None
    result: str | None = None

    def is_live(self, now_ms: int) -> bool:
        return self.expires_at > now_ms


# Where a listing stands: the ``(lease_expires_at, key)`` of the record it reached.
ListPosition = tuple[int, str]


class Storage(ABC):
    """The atomic operations every backend implements, each one a single transaction."""

    name: str

    @abstractmethod
    async def get(self, namespace: str, key: str) -> Record | None:
        """The stored record, read strongly consistently, live or expired; None if absent."""

    @abstractmethod
    async def create(self, record: Record, *, now: int) -> Record | None:
        """Store ``record`` unless a live record has its name.

        Returns None when ``record`` was written; otherwise writes nothing and returns the live
        record that blocked it, as read in the same atomic step.
        """

    @abstractmethod
    async def take_over(self, record: Record, *, previous: Record) -> bool:
        """Replace the stored record with ``record`` if it is still the ``previous`` one seen.

        ``previous`` is the in-progress record whose lease the caller judged ended: the write
        happens only if the stored record is in progress under the same ``lease_token`` with
        the same ``lease_expires_at``, so an extend that lands after the caller read the record
        makes it fail. Returns whether it was replaced.
        """

    @abstractmethod
    async def complete(
        self,
        namespace: str,
        key: str,
        lease_token: str,
        *,
        result: str,
        completed_at: int,
        expires_base: int,
        ttl_ms: int | None,
        now: int,
    ) -> Record | None:
        """Mark the live record held by ``lease_token`` completed with ``result``.

        Sets ``completed_at``, stores ``ttl_ms`` when given, and sets ``expires_at`` to
        ``expires_base`` plus the (new or stored) ``ttl_ms``. Returns the completed record, or
        None, changing nothing, when the record is not live or not held by ``lease_token``.
        """

    @abstractmethod
    async def extend(
        self,
        namespace: str,
        key: str,
        lease_token: str,
        *,
        lease_expires_at: int,
        expires_base: int,
        now: int,
    ) -> bool:
        """Set the lease end of the live record held by ``lease_token``.

        Also sets ``expires_at`` to ``expires_base`` plus the stored ``ttl_ms``, so an
        in-progress record outlives its lease. Returns whether the record was changed.
        """

    @abstractmethod
    async def release(self, namespace: str, key: str, lease_token: str) -> bool:
        """Delete the record if it is held by ``lease_token``; returns whether it was."""

    @abstractmethod
    async def delete(self, namespace: str, key: str) -> None:
        """Delete the record whatever its state; absent is fine."""

    @abstractmethod
    async def check(self) -> None:
        """Raise ``StorageUnavailableError`` unless the storage answers right now."""

    async def sweep(self, *, now: int) -> int:
        """Delete expired records, for storage without a TTL of its own; returns how many."""
        return 0

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Release connections."""

    @abstractmethod
    async def list_records(
        self, namespace: str, *, after: ListPosition | None, limit: int
    ) -> tuple[list[Record], ListPosition | None]:
        """Up to ``limit`` records of ``namespace``, live or expired, latest lease end first.

        Records with the same ``lease_expires_at`` come in an order of the backend's choosing.
        ``after`` continues a listing just past the record at that position (any record's own
        ``(lease_expires_at, key)``, or a position this method returned), so pages visit each
        unchanged record once. Returns the records and the position to continue from, None
        when nothing follows; a page may hold fewer than ``limit`` records and still a position.
        """

    @abstractmethod
    async def end_lease(self, namespace: str, key: str, *, lease_expires_at: int) -> Record | None:
        """End the lease of the in-progress record at ``lease_expires_at``, if it ends later.

        Whoever holds the lease keeps its token; nothing else changes, and a completed record
        is left as it is. Returns the record as stored afterwards, live or expired, or None
        when absent.
        """
