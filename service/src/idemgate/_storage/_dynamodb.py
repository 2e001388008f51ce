"""DynamoDB storage: the production backend, shared by any number of gateway replicas.

One item per record under ``pk = "namespace#key"``, so one hot namespace still spreads over
many partitions. A fresh claim, a replay and an in-progress answer are one conditional
``PutItem`` that hands back the blocking item on failure (``ALL_OLD``); complete, release and
extend are writes conditional on the lease token. Expiry is enforced by those conditions:
the TTL attribute ``expires_at`` only lets DynamoDB clean up. DynamoDB's TTL must be epoch
seconds, so the item keeps ``expires_at`` and ``ttl_s`` in seconds, and the milliseconds of
``Record`` and of the operations are converted by ``_n_seconds`` and ``_ms`` alone.

DynamoDB is spoken to directly, over its JSON protocol with SigV4 signatures, from one pool of
keep-alive connections (``_connections``): botocore spent more CPU building, signing and
parsing a few hundred bytes of JSON than DynamoDB took to answer, and held a thread while it
waited (docs/performance.md).
botocore still decides what it knows best: the credentials, from every source of its chain,
fetched and refreshed in a worker thread (``_credentials``), and the endpoint, from its
endpoint rules (``_endpoints``). Signing is ``_sigv4``; what is retried is ``_retries``.
"""

from __future__ import annotations

import asyncio
import datetime
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from idemgate._exceptions import ConfigurationError, PayloadTooLargeError, StorageUnavailableError
from idemgate._storage import DynamoDBLocation
from idemgate._storage._base import ListPosition, Record, Status, Storage
from idemgate._storage._connections import Answer, ConnectionPool, ExchangeError
from idemgate._storage._credentials import CredentialSource
from idemgate._storage._endpoints import resolve_route
from idemgate._storage._retries import CREDENTIALS_REFUSED, RetryQuota, backoff_s, retryable
from idemgate._storage._sigv4 import Credentials, SigV4Signer

__all__ = [
    "NAMESPACE_ATTRIBUTE",
    "NAMESPACE_INDEX",
    "PARTITION_KEY",
    "TTL_ATTRIBUTE",
    "DynamoDBClient",
    "DynamoDBRefusedError",
    "DynamoDBStorage",
    "create_table",
]

PARTITION_KEY = "pk"
TTL_ATTRIBUTE = "expires_at"
# The index that lists a namespace's records, latest lease end first; it projects keys only.
NAMESPACE_INDEX = "by_namespace"
NAMESPACE_ATTRIBUTE = "namespace"
_LIST_READS_AT_ONCE = 8
_SEPARATOR = "#"
_API_VERSION = "DynamoDB_20120810"
_CONTENT_TYPE = "application/x-amz-json-1.0"

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
_HELD = "#status = :in_progress AND #token = :token"
_LIVE_AND_HELD = f"{_HELD} AND #expires > :now_s"
_HELD_UNTIL = f"{_HELD} AND #lease = :lease"


class DynamoDBRefusedError(StorageUnavailableError):
    """DynamoDB answered with an error that retrying will not cure, named by ``error``."""

    def __init__(self, detail: str, *, error: str) -> None:
        super().__init__(detail)
        self.error = error


class ConditionFailedError(Exception):
    """A conditional write did not apply; ``item`` is the stored item when it was asked for."""

    def __init__(self, item: Mapping[str, Any] | None) -> None:
        super().__init__("ConditionalCheckFailedException")
        self.item = item


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _n_seconds(ms: int) -> dict[str, str]:
    """An instant or duration in milliseconds as a number of seconds, rounded down.

    Expiries and TTLs are whole seconds, so they convert exactly. ``now`` rounds down, and an
    expiry of whole seconds is after ``now`` exactly when it is after ``now`` rounded down.
    """
    return _n(ms // 1000)


def _ms(seconds: Mapping[str, str]) -> int:
    return int(seconds["N"]) * 1000


def _pk(namespace: str, key: str) -> dict[str, Any]:
    return {PARTITION_KEY: _s(f"{namespace}{_SEPARATOR}{key}")}


def _item(record: Record) -> dict[str, Any]:
    item = {
        **_pk(record.namespace, record.key),
        NAMESPACE_ATTRIBUTE: _s(record.namespace),
        "status": _s(record.status.value),
        "attempt": _n(record.attempt),
        "lease_token": _s(record.lease_token),
        "lease_expires_at": _n(record.lease_expires_at),
        "ttl_s": _n_seconds(record.ttl_ms),
        TTL_ATTRIBUTE: _n_seconds(record.expires_at),
    }
    if record.fingerprint is not None:
        item["fingerprint"] = _s(record.fingerprint)
    if record.completed_at is not None:
        item["completed_at"] = _n(record.completed_at)
    if record.result is not None:
        item["result"] = _s(record.result)
    return item


def _record(item: Mapping[str, Any]) -> Record:
    """The record an item holds; ``StorageUnavailableError`` for an item it cannot be."""
    try:
        namespace, _, key = item[PARTITION_KEY]["S"].partition(_SEPARATOR)
        return Record(
            namespace=namespace,
            key=key,
            status=Status(item["status"]["S"]),
            fingerprint=item["fingerprint"]["S"] if "fingerprint" in item else None,
            attempt=int(item["attempt"]["N"]),
            lease_token=item["lease_token"]["S"],
            lease_expires_at=int(item["lease_expires_at"]["N"]),
            ttl_ms=_ms(item["ttl_s"]),
            expires_at=_ms(item[TTL_ATTRIBUTE]),
            completed_at=int(item["completed_at"]["N"]) if "completed_at" in item else None,
            result=item["result"]["S"] if "result" in item else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StorageUnavailableError(
            f"DynamoDB answered an item that is not a record: {type(exc).__name__}: {exc}"
        ) from exc


def _held_by(token: str) -> dict[str, Any]:
    """The values of ``_HELD``: in progress, under ``token``."""
    return {":in_progress": _s(Status.IN_PROGRESS), ":token": _s(token)}


def _names(*expressions: str) -> dict[str, str]:
    text = " ".join(expressions)
    return {placeholder: name for placeholder, name in _NAMES.items() if placeholder in text}


class DynamoDBClient:
    """DynamoDB's JSON API over one pool of keep-alive connections, signed with SigV4.

    A call has ``timeout_ms`` in all. Within it, what the AWS SDKs' standard mode retries
    (``_retries``) is retried up to ``max_attempts`` attempts in all, after a full-jitter
    backoff; credentials DynamoDB calls expired or unknown are refreshed once and the call
    tried once more. Whatever still fails becomes ``StorageUnavailableError``, whose detail
    names DynamoDB's ``x-amzn-RequestId`` when there was an answer.
    """

    def __init__(
        self, location: DynamoDBLocation, *, pool_size: int, timeout_ms: int, max_attempts: int
    ) -> None:
        import botocore.session

        session = botocore.session.get_session()
        region = location.region or session.get_config_variable("region")
        if not region:
            raise ConfigurationError(
                "no AWS region: add ?region=... to the storage URL or set AWS_REGION"
            )
        route = resolve_route(session, region, location.endpoint_url)
        self.table = location.table
        self.region = region
        self.endpoint = route.endpoint
        self._credentials = CredentialSource(session)
        self._signer = SigV4Signer(region=region, service="dynamodb")
        self._timeout_s = timeout_ms / 1000
        self._max_attempts = max_attempts
        self._quota = RetryQuota()
        self._pool = ConnectionPool(
            route.endpoint, size=pool_size, proxy=route.proxy, ca_bundle=route.ca_bundle
        )

    def _signed_headers(self, target: str, body: bytes, credentials: Credentials) -> dict[str, str]:
        headers = {
            "content-type": _CONTENT_TYPE,
            "host": self._pool.authority,
            "x-amz-target": target,
        }
        amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        self._signer.sign("POST", "/", headers, body, credentials=credentials, amz_date=amz_date)
        return headers

    async def call(self, operation: str, **request: Any) -> dict[str, Any]:
        """One API call on the table, and its answer.

        Raises ``ConditionFailedError``, ``PayloadTooLargeError`` or
        ``StorageUnavailableError``.
        """
        body = orjson.dumps({"TableName": self.table, **request})
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                return await self._attempts(operation, body, deadline)
        except _GaveUpError as gave_up:
            raise StorageUnavailableError(
                f"DynamoDB {operation} on {self.table!r} failed: {gave_up}"
            ) from gave_up
        except TimeoutError as exc:
            raise StorageUnavailableError(
                f"DynamoDB {operation} on {self.table!r} failed: no answer within "
                f"{self._timeout_s * 1000:.0f} ms"
            ) from exc

    async def _attempts(self, operation: str, body: bytes, deadline: float) -> dict[str, Any]:
        target = f"{_API_VERSION}.{operation}"
        credentials = await self._credentials.get()
        refreshed = False
        attempt = retries = 0
        loop = asyncio.get_running_loop()
        while True:
            attempt += 1
            headers = self._signed_headers(target, body, credentials)
            # Each attempt gets an even share of the time left, so an answer lost on the way
            # (a write applied, its answer never seen) is retried within the call's budget.
            now = loop.time()
            attempt_deadline = now + (deadline - now) / (self._max_attempts - attempt + 1)
            try:
                async with asyncio.timeout_at(attempt_deadline):
                    response = await self._pool.post(headers, body)
            except TimeoutError:
                failure = f"no answer within {(attempt_deadline - now) * 1000:.0f} ms"
            except (ExchangeError, OSError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                answer, error, failure = _parse(response)
                if answer is not None:
                    self._quota.succeeded(retries)
                    return answer
                if error in CREDENTIALS_REFUSED and not refreshed:
                    refreshed = True
                    credentials = await self._credentials.refresh(credentials)
                    attempt -= 1
                    continue
                if error and not retryable(response.status, error):
                    raise DynamoDBRefusedError(
                        f"DynamoDB {operation} on {self.table!r} failed: {failure}", error=error
                    )
            if attempt >= self._max_attempts:
                raise _GaveUpError(f"{failure} (after {attempt} attempts)")
            pause = backoff_s(attempt)
            if loop.time() + pause >= deadline:
                raise _GaveUpError(f"{failure} (no time left to retry)")
            if not self._quota.spend():
                raise _GaveUpError(f"{failure} (retry quota exhausted)")
            retries += 1
            await asyncio.sleep(pause)

    async def close(self) -> None:
        await self._pool.close()


class _GaveUpError(Exception):
    """The last failure of a call that ran out of attempts, time or retry quota."""


def _parse(response: Answer) -> tuple[dict[str, Any] | None, str, str]:
    """The answer's body if usable, else None, the DynamoDB error name and a failure line.

    An error name of ``""`` means an answer that is not DynamoDB's (damaged, cut, or from
    something in between), worth a retry like a 5xx.
    """
    intact = response.crc32 is None or zlib.crc32(response.body) == response.crc32
    try:
        answer = orjson.loads(response.body or b"{}") if intact else None
    except orjson.JSONDecodeError:  # e.g. a proxy's HTML error page
        answer = None
    if response.status == 200 and isinstance(answer, dict):
        return answer, "", ""
    request_id = f" (x-amzn-RequestId: {response.request_id})" if response.request_id else ""
    if not intact:
        return None, "", f"HTTP {response.status}: the body does not match x-amz-crc32{request_id}"
    if not isinstance(answer, dict):
        return None, "", f"HTTP {response.status}: not a DynamoDB answer{request_id}"
    error = str(answer.get("__type", "")).rpartition("#")[2]
    message = str(answer.get("message") or answer.get("Message") or "")
    if error == "ConditionalCheckFailedException":
        raise ConditionFailedError(answer.get("Item"))
    if error == "ValidationException" and "size" in message:
        raise PayloadTooLargeError(f"DynamoDB refused the item: {message}")
    described = f" {error}: {message}" if error else ""
    return None, error, f"HTTP {response.status}{described}{request_id}"


class DynamoDBStorage(Storage):
    """Records in one DynamoDB table with a string partition key ``pk`` and TTL on expiry."""

    name = "dynamodb"

    def __init__(self, client: DynamoDBClient) -> None:
        self._client = client

    async def _write(self, operation: str, **request: Any) -> dict[str, Any] | None:
        """A conditional write; None when its condition did not hold."""
        try:
            return await self._client.call(operation, **request)
        except ConditionFailedError:
            return None

    async def _write_held(self, operation: str, token: str, **request: Any) -> bool:
        """A write conditional on the record being in progress under ``token``; whether done."""
        written = await self._write(
            operation,
            ConditionExpression=_HELD,
            ExpressionAttributeNames=_names(_HELD),
            ExpressionAttributeValues=_held_by(token),
            **request,
        )
        return written is not None

    async def _update_held(
        self, namespace: str, key: str, token: str, now: int, update: str, **values: Any
    ) -> dict[str, Any] | None:
        return await self._write(
            "UpdateItem",
            Key=_pk(namespace, key),
            UpdateExpression=update,
            ConditionExpression=_LIVE_AND_HELD,
            ExpressionAttributeNames=_names(update, _LIVE_AND_HELD),
            ExpressionAttributeValues={**_held_by(token), ":now_s": _n_seconds(now), **values},
            ReturnValues="ALL_NEW",
        )

    async def get(self, namespace: str, key: str) -> Record | None:
        answer = await self._client.call("GetItem", Key=_pk(namespace, key), ConsistentRead=True)
        item = answer.get("Item")
        return _record(item) if item else None

    async def create(self, record: Record, *, now: int) -> Record | None:
        condition = "attribute_not_exists(#pk) OR #expires <= :now_s"
        try:
            await self._client.call(
                "PutItem",
                Item=_item(record),
                ConditionExpression=condition,
                ExpressionAttributeNames=_names(condition),
                ExpressionAttributeValues={":now_s": _n_seconds(now)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailedError as failed:
            if failed.item:
                return _record(failed.item)
            return await self.get(record.namespace, record.key)
        return None

    async def take_over(self, record: Record, *, previous: Record) -> bool:
        written = await self._write(
            "PutItem",
            Item=_item(record),
            ConditionExpression=_HELD_UNTIL,
            ExpressionAttributeNames=_names(_HELD_UNTIL),
            ExpressionAttributeValues={
                **_held_by(previous.lease_token),
                ":lease": _n(previous.lease_expires_at),
            },
        )
        return written is not None

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
        values = {
            ":completed": _s(Status.COMPLETED),
            ":result": _s(result),
            ":completed_at": _n(completed_at),
            ":base": _n_seconds(expires_base),
        }
        update = "SET #status = :completed, #result = :result, #completed = :completed_at, "
        if ttl_ms is None:
            update += "#expires = :base + #ttl"
        else:
            update += "#ttl = :ttl, #expires = :base + :ttl"
            values[":ttl"] = _n_seconds(ttl_ms)
        answer = await self._update_held(namespace, key, lease_token, now, update, **values)
        return _record(answer.get("Attributes") or {}) if answer is not None else None

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
        update = "SET #lease = :lease, #expires = :base + #ttl"
        answer = await self._update_held(
            namespace,
            key,
            lease_token,
            now,
            update,
            **{":lease": _n(lease_expires_at), ":base": _n_seconds(expires_base)},
        )
        return answer is not None

    async def release(self, namespace: str, key: str, lease_token: str) -> bool:
        return await self._write_held("DeleteItem", lease_token, Key=_pk(namespace, key))

    async def delete(self, namespace: str, key: str) -> None:
        await self._client.call("DeleteItem", Key=_pk(namespace, key))

    async def check(self) -> None:
        await self._client.call("DescribeTable")

    async def close(self) -> None:
        await self._client.close()

    async def list_records(
        self, namespace: str, *, after: ListPosition | None, limit: int
    ) -> tuple[list[Record], ListPosition | None]:
        # The index holds keys only, so a complete (the write that carries the result) never
        # writes it; each listed record is then read from the table, consistently.
        page: dict[str, Any] = {}
        if after is not None:
            lease_expires_at, key = after
            page["ExclusiveStartKey"] = {
                **_pk(namespace, key),
                NAMESPACE_ATTRIBUTE: _s(namespace),
                "lease_expires_at": _n(lease_expires_at),
            }
        answer = await self._client.call(
            "Query",
            IndexName=NAMESPACE_INDEX,
            KeyConditionExpression="#namespace = :namespace",
            ExpressionAttributeNames={"#namespace": NAMESPACE_ATTRIBUTE},
            ExpressionAttributeValues={":namespace": _s(namespace)},
            ScanIndexForward=False,
            Limit=limit,
            **page,
        )
        keys = [item[PARTITION_KEY]["S"].partition(_SEPARATOR)[2] for item in answer["Items"]]
        found: list[Record | None] = []
        # A few reads at a time, so a listing never takes the connections claims are waiting on.
        for start in range(0, len(keys), _LIST_READS_AT_ONCE):
            chunk = keys[start : start + _LIST_READS_AT_ONCE]
            found += await asyncio.gather(*(self.get(namespace, key) for key in chunk))
        records = [record for record in found if record is not None]
        last = answer.get("LastEvaluatedKey")
        if last is None:
            return records, None
        _, _, last_key = last[PARTITION_KEY]["S"].partition(_SEPARATOR)
        return records, (int(last["lease_expires_at"]["N"]), last_key)

    async def end_lease(self, namespace: str, key: str, *, lease_expires_at: int) -> Record | None:
        condition = "#status = :in_progress AND #lease > :lease"
        try:
            answer = await self._client.call(
                "UpdateItem",
                Key=_pk(namespace, key),
                UpdateExpression="SET #lease = :lease",
                ConditionExpression=condition,
                ExpressionAttributeNames=_names(condition),
                ExpressionAttributeValues={
                    ":in_progress": _s(Status.IN_PROGRESS),
                    ":lease": _n(lease_expires_at),
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailedError as failed:
            return _record(failed.item) if failed.item else None
        return _record(answer["Attributes"])


_TABLE_POLL_S = 0.5
_TABLE_WAIT_S = 60.0


_NAMESPACE_INDEX_ATTRIBUTES = (
    {"AttributeName": NAMESPACE_ATTRIBUTE, "AttributeType": "S"},
    {"AttributeName": "lease_expires_at", "AttributeType": "N"},
)
_NAMESPACE_INDEX_SPEC = {
    "IndexName": NAMESPACE_INDEX,
    "KeySchema": [
        {"AttributeName": NAMESPACE_ATTRIBUTE, "KeyType": "HASH"},
        {"AttributeName": "lease_expires_at", "KeyType": "RANGE"},
    ],
    "Projection": {"ProjectionType": "KEYS_ONLY"},
}


async def _add_namespace_index(client: DynamoDBClient, table: Mapping[str, Any]) -> None:
    """Add the listing index to a table created before it existed; DynamoDB backfills it."""
    indexes = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", ())}
    if NAMESPACE_INDEX not in indexes:
        await client.call(
            "UpdateTable",
            AttributeDefinitions=list(_NAMESPACE_INDEX_ATTRIBUTES),
            GlobalSecondaryIndexUpdates=[{"Create": _NAMESPACE_INDEX_SPEC}],
        )


async def create_table(client: DynamoDBClient) -> None:
    """Create the records table (on-demand) with TTL on ``expires_at`` and the namespace index.

    Harmless to repeat; on a table made before the index existed, it adds the index.
    """
    try:
        await client.call(
            "CreateTable",
            AttributeDefinitions=[
                {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                *_NAMESPACE_INDEX_ATTRIBUTES,
            ],
            KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[_NAMESPACE_INDEX_SPEC],
            BillingMode="PAY_PER_REQUEST",
        )
    except DynamoDBRefusedError as exc:
        if exc.error != "ResourceInUseException":
            raise
    for _ in range(int(_TABLE_WAIT_S / _TABLE_POLL_S)):
        table = await client.call("DescribeTable")
        if table["Table"]["TableStatus"] == "ACTIVE":
            await _add_namespace_index(client, table["Table"])
            break
        await asyncio.sleep(_TABLE_POLL_S)
    else:
        raise StorageUnavailableError(f"table {client.table!r} did not become ACTIVE in time")
    ttl = await client.call("DescribeTimeToLive")
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await client.call(
            "UpdateTimeToLive",
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
