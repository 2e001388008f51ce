"""Storage backends, chosen by URL: ``sqlite:///PATH`` or ``dynamodb://TABLE?region=...``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from idemgate._exceptions import ConfigurationError
from idemgate._settings import Settings
from idemgate._storage._base import Record, Status, Storage

__all__ = ["DynamoDBLocation", "Record", "Status", "Storage", "open_storage", "parse_dynamodb_url"]


class DynamoDBLocation:
    """Where a ``dynamodb://TABLE?region=R&endpoint_url=E`` URL points."""

    def __init__(self, table: str, region: str | None, endpoint_url: str | None) -> None:
        self.table = table
        self.region = region
        self.endpoint_url = endpoint_url


def parse_dynamodb_url(url: str) -> DynamoDBLocation:
    parts = urlsplit(url)
    if parts.scheme != "dynamodb" or not parts.netloc:
        raise ConfigurationError(f"not a DynamoDB storage URL (dynamodb://TABLE?...): {url!r}")
    query = parse_qs(parts.query)
    unknown = set(query) - {"region", "endpoint_url"}
    if unknown:
        raise ConfigurationError(f"unknown DynamoDB URL parameters: {sorted(unknown)}")
    return DynamoDBLocation(
        parts.netloc,
        query.get("region", [None])[0],
        query.get("endpoint_url", [None])[0],
    )


def open_storage(settings: Settings) -> Storage:
    """The backend ``settings.storage`` names, ready to use."""
    url = settings.storage
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from idemgate._storage._sqlite import SQLiteStorage

        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ConfigurationError(f"not a SQLite storage URL (sqlite:///PATH): {url!r}")
        return SQLiteStorage(path)
    if scheme == "dynamodb":
        from idemgate._storage._dynamodb import DynamoDBStorage, make_client

        location = parse_dynamodb_url(url)
        client = make_client(
            region=location.region,
            endpoint_url=location.endpoint_url,
            pool_size=settings.storage_threads,
            timeout_ms=settings.storage_timeout_ms,
            max_attempts=settings.storage_max_attempts,
        )
        return DynamoDBStorage(client, location.table)
    raise ConfigurationError(f"unknown storage URL scheme {scheme!r}: use sqlite:// or dynamodb://")
