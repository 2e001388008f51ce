"""5. Scale: claim latency with many records already stored, and over 1,000 namespaces.

Stored records are completed ones spread over 1,000 namespaces. SQLite files are filled
directly with ``sqlite3`` in the schema the gateway created on them; DynamoDB Local is filled with
BatchWriteItem in the gateway's item layout, for as long as the time budget allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping

from bench._lab import TTL_S, Lab, claim_item
from bench._stats import ms, ratio_text
from bench._wrk import WrkResult, WrkTarget, in_turns_method, run_wrk_in_turns
from bench.report import Section, Table, Target
from idemgate._storage import DynamoDBLocation, parse_storage_url
from idemgate._storage._dynamodb import DynamoDBClient

__all__ = ["run"]

NAMESPACES = 1000
NAMESPACE_PREFIX = "bench-scale-"
SCALE_TABLE = "idemgate-scale"
BATCH = 25  # BatchWriteItem's limit
FILLERS = 4  # concurrent BatchWriteItem calls: DynamoDB Local was fastest at 4
GOAL = 1.2
PUT_ITEM = "PutItem straight to DynamoDB Local"
_INSERT = (
    "INSERT INTO records (namespace, key, status, fingerprint, attempt, lease_token, "
    "lease_expires_at, ttl_s, expires_at_s, completed_at, result) "
    "VALUES (?, ?, 'completed', NULL, 1, ?, ?, ?, ?, ?, '{\"ok\":true}')"
)


def _namespace(number: int) -> str:
    return f"{NAMESPACE_PREFIX}{number % NAMESPACES:04d}"


def _sqlite_rows(start: int, stop: int) -> Iterator[tuple[object, ...]]:
    now_ms = time.time_ns() // 1_000_000
    for number in range(start, stop):
        token = f"{number:024d}"
        yield (
            _namespace(number),
            f"stored-{number}",
            token,
            now_ms,
            TTL_S,
            now_ms // 1000 + TTL_S,
            now_ms,
        )


def _fill_sqlite(lab: Lab, records: int) -> str:
    """A SQLite storage URL holding ``records`` completed records."""
    path = lab.sqlite_path(f"scale-{records}")
    url = f"sqlite:///{path}"
    with lab.gateway(url):  # the gateway creates its schema on the new file
        pass
    with contextlib.closing(sqlite3.connect(path)) as database, database:
        database.executemany(_INSERT, _sqlite_rows(0, records))
    return url


def _fill_dynamodb(lab: Lab, table: str, records: int, deadline: float) -> int:
    """Write up to ``records`` records into ``table`` before the deadline; the count stored.

    Through the gateway's own DynamoDB client: boto3 from threads spent more CPU building
    requests than DynamoDB Local spent storing them, and filled only half a million in time.
    """
    now_ms = time.time_ns() // 1_000_000
    chunks = iter(range(0, records, BATCH))  # shared by the fillers, all on one event loop
    written = 0

    async def fill(client: DynamoDBClient) -> None:
        nonlocal written
        for first in chunks:
            if time.monotonic() >= deadline:
                return
            requests = [
                {
                    "PutRequest": {
                        "Item": claim_item(
                            f"{_namespace(n)}#stored-{n}", now_ms=now_ms, status="completed"
                        )
                    }
                }
                for n in range(first, min(first + BATCH, records))
            ]
            while requests:
                answer = await client.call("BatchWriteItem", RequestItems={table: requests})
                unprocessed = answer.get("UnprocessedItems", {}).get(table, [])
                written += len(requests) - len(unprocessed)
                requests = unprocessed

    async def fill_all() -> None:
        location = parse_storage_url(lab.dynamodb_url(table))
        assert isinstance(location, DynamoDBLocation)
        client = DynamoDBClient(location, pool_size=FILLERS, timeout_ms=30_000, max_attempts=5)
        try:
            await asyncio.gather(*(fill(client) for _ in range(FILLERS)))
        finally:
            await client.close()

    asyncio.run(fill_all())
    return written


def _latencies(
    lab: Lab, urls: Mapping[int, str], seconds: float, *, tables: Mapping[int, str] | None = None
) -> dict[int, dict[str, WrkResult]]:
    """Per size, claims of fresh keys in one namespace and rotating over 1,000.

    Every size's targets take turns in one run, so drift on the box over the minutes of
    filling and measuring hits each size alike. With ``tables``, DynamoDB Local's own time for
    the claim's PutItem into each size's table takes its turn too: the store's share.
    """
    targets: dict[tuple[int, str], WrkTarget] = {}
    for records, url in urls.items():
        for target, namespace_count in (("1 namespace", 1), ("1,000 namespaces", NAMESPACES)):
            targets[records, target] = WrkTarget(
                url, "claims", namespace_prefix=NAMESPACE_PREFIX, namespace_count=namespace_count
            )
        if tables is not None:
            targets[records, PUT_ITEM] = WrkTarget(
                lab.dynamodb.endpoint_url,
                "dynamodb_claims",
                (tables[records],),
                namespace_prefix=NAMESPACE_PREFIX,
            )
    named = {f"{records:,} stored, {target}": (records, target) for records, target in targets}
    results = run_wrk_in_turns({name: targets[key] for name, key in named.items()}, seconds=seconds)
    figures: dict[int, dict[str, WrkResult]] = {records: {} for records in urls}
    for name, (records, target) in named.items():
        figures[records][target] = results[name]
    return figures


def _rows_and_targets(
    backend: str, small: int, large: int, figures: dict[int, dict[str, WrkResult]]
) -> tuple[list[list[str]], list[Target]]:
    rows, targets = [], []
    for records, by_target in figures.items():
        for target, result in by_target.items():
            base = figures[small][target]
            rows.append(
                [
                    backend,
                    f"{records:,}",
                    target,
                    str(result.requests),
                    ms(result.p50_s),
                    ms(result.p99_s),
                    ratio_text(result.p50_s / base.p50_s) if records != small else "baseline",
                    ratio_text(result.p99_s / base.p99_s) if records != small else "baseline",
                ]
            )
    for figure in ("p50", "p99"):
        big = getattr(figures[large]["1 namespace"], f"{figure}_s")
        base = getattr(figures[small]["1 namespace"], f"{figure}_s")
        targets.append(
            Target(
                name=f"{backend}: claim {figure} with {large:,} stored vs {small:,} stored",
                measured=big / base,
                goal=GOAL,
                at_most=True,
                shown_as=ratio_text(big / base),
                basis=f"{ms(big)} ms vs {ms(base)} ms (wrk, 1 connection, 1 namespace)",
            )
        )
    return rows, targets


def run(lab: Lab, *, small: int, large: int, seconds: float, fill_budget_s: float) -> Section:
    section = Section(
        title="Scale",
        method=(
            f"Stored records are completed ones spread over {NAMESPACES:,} namespaces. Both "
            "sizes are stored side by side (two SQLite files, two tables in one DynamoDB "
            "Local), each served by its own 1-worker gateway, and all of a backend's targets "
            "take turns in one run, so the sizes are compared at the same moments. Each size is "
            "measured with wrk at 1 connection claiming fresh keys in one of those namespaces, "
            f"and rotating over all {NAMESPACES:,}. For DynamoDB, wrk also sends the claim's "
            "PutItem straight to each table, to show the store's own share. "
            + in_turns_method(seconds)
        ),
    )
    sqlite_urls = {}
    for records in (small, large):
        started = time.monotonic()
        sqlite_urls[records] = _fill_sqlite(lab, records)
        section.notes.append(
            f"SQLite: {records:,} records inserted in {time.monotonic() - started:.1f} s."
        )
    with lab.gateway(sqlite_urls[small]) as small_gateway, lab.gateway(sqlite_urls[large]) as big:
        sqlite = _latencies(lab, {small: small_gateway.url, large: big.url}, seconds)
    sqlite_rows, sqlite_targets = _rows_and_targets("SQLite", small, large, sqlite)

    tables = {
        records: lab.create_gateway_table(f"{SCALE_TABLE}-{records}") for records in (small, large)
    }
    # Gateways first: on a table of a million items, DynamoDB Local answered the readiness
    # probe's DescribeTable later than the probe's timeout.
    with (
        lab.gateway(lab.dynamodb_url(tables[small])) as small_gateway,
        lab.gateway(lab.dynamodb_url(tables[large])) as big,
    ):
        stored = _fill_dynamodb(lab, tables[small], small, deadline=float("inf"))
        started = time.monotonic()
        reached = _fill_dynamodb(lab, tables[large], large, deadline=started + fill_budget_s)
        elapsed = time.monotonic() - started
        dynamodb = _latencies(
            lab, {small: small_gateway.url, large: big.url}, seconds, tables=tables
        )
    dynamodb = {stored: dynamodb[small], reached: dynamodb[large]}
    section.notes.append(
        f"DynamoDB Local: filled to {reached:,} of the {large:,} records asked for within "
        f"a {fill_budget_s:g} s budget ({reached / elapsed:,.0f} items/s with "
        f"BatchWriteItem, {FILLERS} at a time)"
        + ("." if reached >= large else "; its target below compares that size instead.")
    )
    dynamodb_rows, dynamodb_targets = _rows_and_targets("DynamoDB", small, reached, dynamodb)
    rows = sqlite_rows + dynamodb_rows
    section.targets += sqlite_targets + dynamodb_targets
    section.tables.append(
        Table(
            [
                "Backend",
                "Stored records",
                "Claims to",
                "Requests",
                "p50 (ms)",
                "p99 (ms)",
                "p50 vs smallest",
                "p99 vs smallest",
            ],
            rows,
        )
    )
    return section
