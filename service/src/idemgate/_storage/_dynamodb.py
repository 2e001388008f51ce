"""DynamoDB storage: the production backend, shared by any number of gateway replicas.

One item per record under ``pk = "namespace#key"``, so one hot namespace still spreads over
many partitions. A fresh claim, a replay and an in-progress answer are one conditional
``PutItem`` that hands back the blocking item on failure (``ALL_OLD``); complete, release and
extend are writes conditional on the lease token. Expiry is enforced by those conditions:
the TTL attribute ``expires_at`` (epoch seconds) only lets DynamoDB clean up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idemgate._exceptions import PayloadTooLargeError, StorageUnavailableError
from idemgate._storage._base import Record, Status, Storage

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from idemgate._storage import DynamoDBLocation

__all__ = [
    "PARTITION_KEY",
    "TTL_ATTRIBUTE",
    "DynamoDBStorage",
    "create_table",
    "make_client",
]

PARTITION_KEY = "pk"
TTL_ATTRIBUTE = "expires_at"
_SEPARATOR = "#"

# Every attribute goes through a placeholder: several of their names are DynamoDB reserved words.
_NAMES = {
    "#pk": PARTITION_KEY,
    "#status": "status",
    "#token": "lease_token",
    "#expires": TTL_ATTRIBUTE,
    "#lease": "lease_expires_at",
    "#ttl": "ttl_s",
    "#result": "result",
    "#completed": "completed_at",
}
_LIVE_AND_HELD = "#status = :in_progress AND #token = :token AND #expires > :now_s"


def _s(value: str) -> dict[str, Any]:
    return {"S": value}


def _n(value: int) -> dict[str, Any]:
    return {"N": str(value)}


def _pk(namespace: str, key: str) -> dict[str, Any]:
    return {PARTITION_KEY: _s(f"{namespace}{_SEPARATOR}{key}")}


def _item(record: Record) -> dict[str, Any]:
    item = {
        **_pk(record.namespace, record.key),
        "status": _s(record.status.value),
        "attempt": _n(record.attempt),
        "lease_token": _s(record.lease_token),
        "lease_expires_at": _n(record.lease_expires_at),
        "ttl_s": _n(record.ttl_s),
        TTL_ATTRIBUTE: _n(record.expires_at_s),
    }
    if record.fingerprint is not None:
        item["fingerprint"] = _s(record.fingerprint)
    if record.completed_at is not None:
        item["completed_at"] = _n(record.completed_at)
    if record.result is not None:
        item["result"] = _s(record.result)
    return item


def _record(item: Mapping[str, Any]) -> Record:
    namespace, _, key = item[PARTITION_KEY]["S"].partition(_SEPARATOR)
    return Record(
        namespace=namespace,
        key=key,
        status=Status(item["status"]["S"]),
        fingerprint=item["fingerprint"]["S"] if "fingerprint" in item else None,
        attempt=int(item["attempt"]["N"]),
        lease_token=item["lease_token"]["S"],
        lease_expires_at=int(item["lease_expires_at"]["N"]),
        ttl_s=int(item["ttl_s"]["N"]),
        expires_at_s=int(item[TTL_ATTRIBUTE]["N"]),
        completed_at=int(item["completed_at"]["N"]) if "completed_at" in item else None,
        result=item["result"]["S"] if "result" in item else None,
    )


def _names(expression: str) -> dict[str, str]:
    return {placeholder: name for placeholder, name in _NAMES.items() if placeholder in expression}


def _condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


@contextmanager
def _unavailable_on_error(table: str) -> Iterator[None]:
    """The one place DynamoDB's errors become gateway errors."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationException" and "size" in error.get("Message", ""):
            raise PayloadTooLargeError(f"DynamoDB refused the item: {error['Message']}") from exc
        raise StorageUnavailableError(
            f"DynamoDB table {table!r}: {error.get('Code')}: {error.get('Message')}"
        ) from exc
    except BotoCoreError as exc:
        raise StorageUnavailableError(f"DynamoDB table {table!r}: {exc}") from exc


def make_client(
    location: DynamoDBLocation,
    *,
    pool_size: int,
    timeout_ms: int,
    max_attempts: int,
) -> DynamoDBClient:
    """One DynamoDB client for the process: pooled, with bounded timeouts and retries."""
    config = Config(
        max_pool_connections=pool_size,
        connect_timeout=timeout_ms / 1000,
        read_timeout=timeout_ms / 1000,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(
        "dynamodb",
        region_name=location.region,
        endpoint_url=location.endpoint_url,
        config=config,
    )


class DynamoDBStorage(Storage):
    """Records in one DynamoDB table with a string partition key ``pk`` and TTL on expiry."""

    name = "dynamodb"

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self.table = table

    def _update(
        self, namespace: str, key: str, update: str, values: dict[str, Any], **extra: Any
    ) -> dict[str, Any] | None:
        """A conditional UpdateItem on a live record held by ``:token``; None if not held."""
        expression = f"{update} {_LIVE_AND_HELD}"
        with _unavailable_on_error(self.table):
            try:
                return self._client.update_item(
                    TableName=self.table,
                    Key=_pk(namespace, key),
                    UpdateExpression=update,
                    ConditionExpression=_LIVE_AND_HELD,
                    ExpressionAttributeNames=_names(expression),
                    ExpressionAttributeValues={":in_progress": _s(Status.IN_PROGRESS), **values},
                    **extra,
                )  # type: ignore[return-value]
            except ClientError as exc:
                if _condition_failed(exc):
                    return None
                raise

    def get(self, namespace: str, key: str) -> Record | None:
        with _unavailable_on_error(self.table):
            response = self._client.get_item(
                TableName=self.table, Key=_pk(namespace, key), ConsistentRead=True
            )
        item = response.get("Item")
        return _record(item) if item else None

    def create(self, record: Record, *, now_s: int) -> Record | None:
        condition = "attribute_not_exists(#pk) OR #expires <= :now_s"
        with _unavailable_on_error(self.table):
            try:
                self._client.put_item(
                    TableName=self.table,
                    Item=_item(record),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names(condition),
                    ExpressionAttributeValues={":now_s": _n(now_s)},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if not _condition_failed(exc):
                    raise
                # botocore puts the ALL_OLD item beside the error, untyped.
                blocking: Mapping[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
                return _record(blocking) if blocking else self.get(record.namespace, record.key)
        return None

    def take_over(self, record: Record, *, previous_token: str) -> bool:
        condition = "#status = :in_progress AND #token = :token"
        with _unavailable_on_error(self.table):
            try:
                self._client.put_item(
                    TableName=self.table,
                    Item=_item(record),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names(condition),
                    ExpressionAttributeValues={
                        ":in_progress": _s(Status.IN_PROGRESS),
                        ":token": _s(previous_token),
                    },
                )
            except ClientError as exc:
                if _condition_failed(exc):
                    return False
                raise
        return True

    def complete(
        self,
        namespace: str,
        key: str,
        lease_token: str,
        *,
        result: str,
        completed_at: int,
        expires_base_s: int,
        ttl_s: int | None,
        now_s: int,
    ) -> Record | None:
        values = {
            ":token": _s(lease_token),
            ":now_s": _n(now_s),
            ":completed": _s(Status.COMPLETED),
            ":result": _s(result),
            ":completed_at": _n(completed_at),
            ":base": _n(expires_base_s),
        }
        update = "SET #status = :completed, #result = :result, #completed = :completed_at, "
        if ttl_s is None:
            update += "#expires = :base + #ttl"
        else:
            update += "#ttl = :ttl, #expires = :base + :ttl"
            values[":ttl"] = _n(ttl_s)
        response = self._update(namespace, key, update, values, ReturnValues="ALL_NEW")
        return _record(response["Attributes"]) if response is not None else None

    def extend(
        self,
        namespace: str,
        key: str,
        lease_token: str,
        *,
        lease_expires_at: int,
        expires_base_s: int,
        now_s: int,
    ) -> bool:
        values = {
            ":token": _s(lease_token),
            ":now_s": _n(now_s),
            ":lease": _n(lease_expires_at),
            ":base": _n(expires_base_s),
        }
        update = "SET #lease = :lease, #expires = :base + #ttl"
        return self._update(namespace, key, update, values) is not None

    def release(self, namespace: str, key: str, lease_token: str) -> bool:
        condition = "#status = :in_progress AND #token = :token"
        with _unavailable_on_error(self.table):
            try:
                self._client.delete_item(
                    TableName=self.table,
                    Key=_pk(namespace, key),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names(condition),
                    ExpressionAttributeValues={
                        ":in_progress": _s(Status.IN_PROGRESS),
                        ":token": _s(lease_token),
                    },
                )
            except ClientError as exc:
                if _condition_failed(exc):
                    return False
                raise
        return True

    def delete(self, namespace: str, key: str) -> None:
        with _unavailable_on_error(self.table):
            self._client.delete_item(TableName=self.table, Key=_pk(namespace, key))

    def check(self) -> None:
        with _unavailable_on_error(self.table):
            self._client.describe_table(TableName=self.table)

    def close(self) -> None:
        self._client.close()


def create_table(client: DynamoDBClient, table: str) -> None:
    """Create the records table (on-demand) with TTL on ``expires_at``; harmless to repeat."""
    with _unavailable_on_error(table):
        with suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table,
                AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
