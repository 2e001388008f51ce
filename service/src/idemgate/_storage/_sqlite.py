"""SQLite storage: the embedded default, one file shared safely by several worker processes.

A transaction takes tens of microseconds and never waits on a network, so operations run on the
event loop: a hop to a worker thread would cost more than the work.

WAL mode lets readers run beside the one writer. Every write operation is one SQL statement,
which SQLite runs as one transaction, taken while holding a lock file that every writer of the
file takes (``flock``): so a claim that finds the key taken reads the blocking record before any
other process can change it, and several worker processes share one file safely. The lock file,
rather than SQLite's own locking, queues the writers because SQLite's busy handler waits by
sleeping for growing intervals, far longer than a write takes. The lock is taken without
blocking: when another process holds it, the operation yields to the event loop and tries
again, so a writer that stalls while holding it (a frozen process) never blocks this one's
loop, and after ``lock_timeout_ms`` the operation fails with ``StorageUnavailableError``.
The file keeps a record's ``ttl_s`` and ``expires_at_s`` in seconds, as DynamoDB does (files
written by earlier versions stay readable as they are); ``_seconds`` and ``_record`` convert
to and from the milliseconds of ``Record`` and of the operations, and nothing else does.
``synchronous=NORMAL`` keeps every committed record across a process crash or restart (a power
cut may lose the last transactions; see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from idemgate._exceptions import StorageUnavailableError
from idemgate._storage._base import ListPosition, Record, Status, Storage

__all__ = ["SQLiteStorage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    fingerprint TEXT,
    attempt INTEGER NOT NULL,
    lease_token TEXT NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    ttl_s INTEGER NOT NULL,
    expires_at_s INTEGER NOT NULL,
    completed_at INTEGER,
    result TEXT,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires_at_s);
"""
_COLUMNS = (
    "namespace, key, status, fingerprint, attempt, lease_token, lease_expires_at, ttl_s, "
    "expires_at_s, completed_at, result"
)
_EXCLUDED = ", ".join(f"excluded.{column.strip()}" for column in _COLUMNS.split(","))
_HELD = "namespace = ? AND key = ? AND status = 'in_progress' AND lease_token = ?"
_SWEEP_BATCH = 1000
_LOCK_POLL_S = 0.001


def _seconds(ms: int) -> int:
    """Milliseconds as seconds, rounded down: exact for an expiry or a TTL (whole seconds).

    ``now`` rounds down, and an expiry of whole seconds is after ``now`` exactly when it is
    after ``now`` rounded down.
    """
    return ms // 1000


def _record(row: Any) -> Record:
    namespace, key, status, fingerprint, attempt, token, lease, ttl_s, expires, done, result = row
    return Record(
        namespace=namespace,
        key=key,
        status=Status(status),
        fingerprint=fingerprint,
        attempt=attempt,
        lease_token=token,
        lease_expires_at=lease,
        ttl_ms=ttl_s * 1000,
        expires_at=expires * 1000,
        completed_at=done,
        result=result,
    )


def _row(record: Record) -> tuple[object, ...]:
    return (
        record.namespace,
        record.key,
        record.status.value,
        record.fingerprint,
        record.attempt,
        record.lease_token,
        record.lease_expires_at,
        _seconds(record.ttl_ms),
        _seconds(record.expires_at),
        record.completed_at,
        record.result,
    )


class SQLiteStorage(Storage):
    """Records in one SQLite file, one connection per thread."""

    name = "sqlite"

    def __init__(
        self, path: Path | str, *, busy_timeout_ms: int = 5000, lock_timeout_ms: int = 2000
    ) -> None:
        self.path = Path(path)
        self._lock_timeout_s = lock_timeout_ms / 1000
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            # Every operation runs on the event loop's thread; tests may call from another.
            self._connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
            # SQLite's default 2 MB page cache thrashes once a file holds a million records;
            # mapping the file lets every worker share the operating system's cache instead.
            self._connection.execute("PRAGMA cache_size = -65536")
            self._connection.execute("PRAGMA mmap_size = 268435456")
            self._connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailableError(f"cannot open SQLite file {self.path}: {exc}") from exc

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def _wait_for_lock(self) -> None:
        """Take the writers' lock that another process holds, or fail after the time limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_timeout_s
        await asyncio.sleep(0)  # a healthy holder's transaction is over by the next turn
        while not self._try_lock():
            if loop.time() >= deadline:
                raise StorageUnavailableError(
                    f"SQLite writers' lock {self.path}.lock is held by another process "
                    f"for more than {self._lock_timeout_s:g} s"
                )
            await asyncio.sleep(_LOCK_POLL_S)

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[sqlite3.Connection]:
        """The connection, with the writers' lock held and SQLite errors translated."""
        if not self._try_lock():
            await self._wait_for_lock()
        try:
            yield self._connection
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"SQLite failed: {exc}") from exc
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    async def get(self, namespace: str, key: str) -> Record | None:
        try:
            row = self._connection.execute(
                f"SELECT {_COLUMNS} FROM records WHERE namespace = ? AND key = ?",
                (namespace, key),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"SQLite failed: {exc}") from exc
        return _record(row) if row else None

    async def create(self, record: Record, *, now: int) -> Record | None:
        async with self._writing() as connection:
            written = connection.execute(
                f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                f"ON CONFLICT (namespace, key) DO UPDATE SET ({_COLUMNS}) = ({_EXCLUDED}) "
                "WHERE records.expires_at_s <= ?",
                (*_row(record), _seconds(now)),
            ).rowcount
            if written:
                return None
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM records WHERE namespace = ? AND key = ?",
                (record.namespace, record.key),
            ).fetchone()
            return _record(row)

    async def take_over(self, record: Record, *, previous: Record) -> bool:
        async with self._writing() as connection:
            cursor = connection.execute(
                f"UPDATE records SET ({_COLUMNS}) = (?,?,?,?,?,?,?,?,?,?,?) "
                f"WHERE {_HELD} AND lease_expires_at = ?",
                (
                    *_row(record),
                    record.namespace,
                    record.key,
                    previous.lease_token,
                    previous.lease_expires_at,
                ),
            )
            return cursor.rowcount == 1

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
        ttl_s = None if ttl_ms is None else _seconds(ttl_ms)
        async with self._writing() as connection:
            row = connection.execute(
                "UPDATE records SET status = 'completed', result = ?, completed_at = ?, "
                "ttl_s = coalesce(?, ttl_s), expires_at_s = ? + coalesce(?, ttl_s) "
                f"WHERE {_HELD} AND expires_at_s > ? RETURNING {_COLUMNS}",
                (
                    result,
                    completed_at,
                    ttl_s,
                    _seconds(expires_base),
                    ttl_s,
                    namespace,
                    key,
                    lease_token,
                    _seconds(now),
                ),
            ).fetchone()
            return _record(row) if row else None

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
        async with self._writing() as connection:
            cursor = connection.execute(
                "UPDATE records SET lease_expires_at = ?, expires_at_s = ? + ttl_s "
                f"WHERE {_HELD} AND expires_at_s > ?",
                (
                    lease_expires_at,
                    _seconds(expires_base),
                    namespace,
                    key,
                    lease_token,
                    _seconds(now),
                ),
            )
            return cursor.rowcount == 1

    async def release(self, namespace: str, key: str, lease_token: str) -> bool:
        async with self._writing() as connection:
            cursor = connection.execute(
                f"DELETE FROM records WHERE {_HELD}", (namespace, key, lease_token)
            )
            return cursor.rowcount == 1

    async def delete(self, namespace: str, key: str) -> None:
        async with self._writing() as connection:
            connection.execute(
                "DELETE FROM records WHERE namespace = ? AND key = ?", (namespace, key)
            )

    async def check(self) -> None:
        try:
            self._connection.execute("SELECT 1 FROM records LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"SQLite failed: {exc}") from exc

    async def sweep(self, *, now: int) -> int:
        deleted = 0
        while True:
            async with self._writing() as connection:
                batch = connection.execute(
                    "DELETE FROM records WHERE (namespace, key) IN (SELECT namespace, key "
                    "FROM records WHERE expires_at_s <= ? LIMIT ?)",
                    (_seconds(now), _SWEEP_BATCH),
                ).rowcount
            deleted += batch
            if batch < _SWEEP_BATCH:
                return deleted
            await asyncio.sleep(0)  # let requests in between batches

    async def close(self) -> None:
        self._connection.close()
        os.close(self._lock_file)

    async def list_records(
        self, namespace: str, *, after: ListPosition | None, limit: int
    ) -> tuple[list[Record], ListPosition | None]:
        # No index by lease end, which every claim would pay to write: a page scans the
        # namespace's rows (a primary key prefix) keeping the top ``limit``, on a connection of
        # its own in a worker thread, so the event loop serves claims meanwhile.
        before = "AND (lease_expires_at, key) < (?, ?) " if after is not None else ""
        query = (
            f"SELECT {_COLUMNS} FROM records WHERE namespace = ? {before}"
            "ORDER BY lease_expires_at DESC, key DESC LIMIT ?"
        )
        rows = await asyncio.to_thread(self._read_all, query, (namespace, *(after or ()), limit))
        records = [_record(row) for row in rows]
        if len(records) < limit or not records:
            return records, None
        return records, (records[-1].lease_expires_at, records[-1].key)

    def _read_all(self, query: str, parameters: tuple[object, ...]) -> list[Any]:
        try:
            connection = sqlite3.connect(self.path)
            try:
                return connection.execute(query, parameters).fetchall()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"SQLite failed: {exc}") from exc

    async def end_lease(self, namespace: str, key: str, *, lease_expires_at: int) -> Record | None:
        async with self._writing() as connection:
            connection.execute(
                "UPDATE records SET lease_expires_at = ? WHERE namespace = ? AND key = ? "
                "AND status = 'in_progress' AND lease_expires_at > ?",
                (lease_expires_at, namespace, key, lease_expires_at),
            )
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM records WHERE namespace = ? AND key = ?",
                (namespace, key),
            ).fetchone()
            return _record(row) if row else None
