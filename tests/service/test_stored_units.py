"""What each backend stores is unchanged: a record's expiry and TTL in seconds, read as ms.

``Record`` and the storage operations count milliseconds; the DynamoDB item and the SQLite row
keep ``ttl_s`` and the expiry in seconds, as earlier versions wrote them, so tables and files
made by those versions keep working. These tests write and read the stored form directly.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from idemgate._settings import Settings
from idemgate._storage import Record, Status, Storage, open_storage
from idemgate.testing import DynamoDBLocal

pytestmark = pytest.mark.anyio

NOW_S = 1_900_000_000
NOW = NOW_S * 1000
TABLE = "idemgate-test"  # the table of the session's dynamodb_storage_url

# A completed record as earlier versions stored it: instants of the lease and the completion in
# milliseconds, the TTL and the expiry in seconds.
OLD_COMPLETED: dict[str, Any] = {
    "status": "completed",
    "fingerprint": "sha256:ab",
    "attempt": 2,
    "lease_token": "token-1",
    "lease_expires_at": NOW - 5_000,
    "ttl_s": 60,
    "expires_s": NOW_S + 60,
    "completed_at": NOW - 10_000,
    "result": '{"ok":true}',
}


class RawSQLite:
    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, namespace: str, key: str, fields: dict[str, Any]) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "INSERT INTO records (namespace, key, status, fingerprint, attempt, lease_token, "
                "lease_expires_at, ttl_s, expires_at_s, completed_at, result) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    namespace,
                    key,
                    fields["status"],
                    fields.get("fingerprint"),
                    fields["attempt"],
                    fields["lease_token"],
                    fields["lease_expires_at"],
                    fields["ttl_s"],
                    fields["expires_s"],
                    fields.get("completed_at"),
                    fields.get("result"),
                ),
            )
        connection.close()

    def times(self, namespace: str, key: str) -> tuple[int, int]:
        """The stored ``(ttl_s, expiry in epoch seconds)`` of a record."""
        with sqlite3.connect(self.path) as connection:
            row = connection.execute(
                "SELECT ttl_s, expires_at_s FROM records WHERE namespace = ? AND key = ?",
                (namespace, key),
            ).fetchone()
        connection.close()
        return row[0], row[1]


class RawDynamoDB:
    def __init__(self, endpoint_url: str) -> None:
        self.client = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")

    def put(self, namespace: str, key: str, fields: dict[str, Any]) -> None:
        item = {
            "pk": {"S": f"{namespace}#{key}"},
            "namespace": {"S": namespace},
            "status": {"S": fields["status"]},
            "attempt": {"N": str(fields["attempt"])},
            "lease_token": {"S": fields["lease_token"]},
            "lease_expires_at": {"N": str(fields["lease_expires_at"])},
            "ttl_s": {"N": str(fields["ttl_s"])},
            "expires_at": {"N": str(fields["expires_s"])},
        }
        for name, kind in (("fingerprint", "S"), ("completed_at", "N"), ("result", "S")):
            if fields.get(name) is not None:
                item[name] = {kind: str(fields[name])}
        self.client.put_item(TableName=TABLE, Item=item)

    def times(self, namespace: str, key: str) -> tuple[int, int]:
        """The stored ``(ttl_s, expiry in epoch seconds)`` of a record."""
        item = self.client.get_item(
            TableName=TABLE, Key={"pk": {"S": f"{namespace}#{key}"}}, ConsistentRead=True
        )["Item"]
        return int(item["ttl_s"]["N"]), int(item["expires_at"]["N"])


Raw = RawSQLite | RawDynamoDB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "dynamodb"])
def stored_form(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Raw]:
    """A backend's storage URL, and direct access to what it stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'earlier.db'}", RawSQLite(tmp_path / "earlier.db")
    dynamodb_local: DynamoDBLocal = request.getfixturevalue("dynamodb_local")
    url: str = request.getfixturevalue("dynamodb_storage_url")
    return url, RawDynamoDB(dynamodb_local.endpoint_url)


@pytest.fixture
async def backend(stored_form: tuple[str, Raw]) -> AsyncIterator[tuple[Storage, Raw]]:
    url, raw = stored_form
    storage = open_storage(Settings(storage=url))  # creates the SQLite schema, as before
    yield storage, raw
    await storage.close()


@pytest.fixture
def namespace() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def record_of(namespace: str, key: str, fields: dict[str, Any], **changes: Any) -> Record:
    """The ``Record`` of ``fields`` and ``changes`` (which give ``ttl_ms`` and ``expires_at``)."""
    values = {**fields, **changes}
    return Record(
        namespace=namespace,
        key=key,
        status=Status(values["status"]),
        fingerprint=values.get("fingerprint"),
        attempt=values["attempt"],
        lease_token=values["lease_token"],
        lease_expires_at=values["lease_expires_at"],
        ttl_ms=values["ttl_ms"],
        expires_at=values["expires_at"],
        completed_at=values.get("completed_at"),
        result=values.get("result"),
    )


async def test_a_record_stored_by_earlier_versions_reads_in_milliseconds(
    backend: tuple[Storage, Raw], namespace: str
) -> None:
    storage, raw = backend
    raw.put(namespace, "old", OLD_COMPLETED)
    expected = record_of(namespace, "old", OLD_COMPLETED, ttl_ms=60_000, expires_at=NOW + 60_000)
    assert await storage.get(namespace, "old") == expected
    newer = record_of(
        namespace,
        "old",
        OLD_COMPLETED,
        status="in_progress",
        fingerprint=None,
        attempt=1,
        lease_token="token-2",
        lease_expires_at=NOW + 120_000,
        ttl_ms=86_400_000,
        expires_at=NOW + 120_000 + 86_400_000,
        completed_at=None,
        result=None,
    )
    # Live until its expiry to the millisecond, then replaced.
    assert await storage.create(newer, now=NOW + 59_999) == expected
    assert await storage.create(newer, now=NOW + 60_000) is None
    assert await storage.get(namespace, "old") == newer


async def test_records_are_stored_in_seconds_as_earlier_versions_read_them(
    backend: tuple[Storage, Raw], namespace: str
) -> None:
    storage, raw = backend
    fresh = record_of(
        namespace,
        "new",
        OLD_COMPLETED,
        status="in_progress",
        attempt=1,
        lease_expires_at=NOW + 30_000,
        ttl_ms=86_400_000,
        expires_at=NOW + 30_000 + 86_400_000,
        completed_at=None,
        result=None,
    )
    assert await storage.create(fresh, now=NOW) is None
    assert raw.times(namespace, "new") == (86_400, NOW_S + 30 + 86_400)
    extended = await storage.extend(
        namespace,
        "new",
        "token-1",
        lease_expires_at=NOW + 60_000,
        expires_base=NOW + 60_000,
        now=NOW,
    )
    assert extended
    assert raw.times(namespace, "new") == (86_400, NOW_S + 60 + 86_400)
    done = await storage.complete(
        namespace,
        "new",
        "token-1",
        result="1",
        completed_at=NOW + 1_500,
        expires_base=NOW + 2_000,
        ttl_ms=120_000,
        now=NOW + 1_500,
    )
    assert done is not None
    assert (done.ttl_ms, done.expires_at) == (120_000, NOW + 122_000)
    assert raw.times(namespace, "new") == (120, NOW_S + 122)
