"""Storage backends, chosen by URL: ``sqlite:///PATH`` or ``dynamodb://TABLE?region=...``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from idemgate._exceptions import ConfigurationError
from idemgate._settings import Settings
from idemgate._storage._base import Record, Status, Storage

__all__ = [
    "DynamoDBLocation",
    "Record",
    "SQLiteLocation",
    "Status",
    "Storage",
    "open_storage",
    "parse_storage_url",
]


@dataclass(frozen=True, slots=True)
class SQLiteLocation:
    """``sqlite:///PATH``: a relative PATH, or an absolute one after a fourth slash."""

    path: str


@dataclass(frozen=True, slots=True)
class DynamoDBLocation:
    """``dynamodb://TABLE?region=R&endpoint_url=E``, both parameters optional."""

    table: str
    region: str | None = None
    endpoint_url: str | None = None


def parse_storage_url(url: str) -> SQLiteLocation | DynamoDBLocation:
    """Where a storage URL points; ``ConfigurationError`` says what is wrong with a bad one."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ConfigurationError(f"not a SQLite storage URL (sqlite:///PATH): {url!r}")
        return SQLiteLocation(path)
    if parts.scheme == "dynamodb":
        query = parse_qs(parts.query)
        unknown = set(query) - {"region", "endpoint_url"}
        if not parts.netloc or unknown:
            raise ConfigurationError(
                f"not a DynamoDB storage URL (dynamodb://TABLE?region=R&endpoint_url=E): {url!r}"
            )
        return DynamoDBLocation(
            parts.netloc, query.get("region", [None])[0], query.get("endpoint_url", [None])[0]
        )
    raise ConfigurationError(f"unknown storage URL {url!r}: use sqlite:///PATH or dynamodb://TABLE")


def open_storage(settings: Settings) -> Storage:
    """The backend ``settings.storage`` names, ready to use."""
    location = parse_storage_url(settings.storage)
    if isinstance(location, SQLiteLocation):
        from idemgate._storage._sqlite import SQLiteStorage

        return SQLiteStorage(location.path, lock_timeout_ms=settings.storage_timeout_ms)
    from idemgate._storage._dynamodb import DynamoDBClient, DynamoDBStorage

    client = DynamoDBClient(
        location,
        pool_size=settings.storage_connections,
        timeout_ms=settings.storage_timeout_ms,
        max_attempts=settings.storage_max_attempts,
    )
    return DynamoDBStorage(client)
