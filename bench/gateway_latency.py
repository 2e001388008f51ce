"""3. Gateway overhead: a claim through the gateway against the same write made directly.

Two views. From a Python client at concurrency 1 (httpx to the gateway, boto3 to DynamoDB
Local), which is what a caller waits for. And from wrk at concurrency 1, which has no Python
client cost: the gateway's time per request minus DynamoDB Local's own time per PutItem is what
the gateway adds on the server side.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import httpx

from bench._lab import Lab, raw_claim
from bench._stats import Summary, ms, ratio_text, summarize
from bench._wrk import WrkTarget, in_turns_method, run_wrk_in_turns
from bench.report import Section, Table, Target

__all__ = ["run"]

FLOOR = "uvicorn alone, fixed answer"
CLAIM_FLOOR = "uvicorn + the claim (DynamoDB), no framework"
GATEWAY = "gateway (DynamoDB)"
DATABASE = "DynamoDB Local PutItem"
BLOCK = 100  # calls per turn; the clients take turns so drift hits all alike
CLAIM_BODY = b'{"fingerprint":null,"lease_ms":60000,"ttl_s":86400}'


def _timed(call: Callable[[int], None], start: int, count: int, into: list[float]) -> None:
    for number in range(start, start + count):
        began = time.perf_counter()
        call(number)
        into.append(time.perf_counter() - began)


def _python_clients(
    lab: Lab, urls: dict[str, str], *, calls: int, warmup: int
) -> dict[str, Summary]:
    run_id = secrets.token_hex(4)
    client = httpx.Client()
    dynamodb = lab.boto3_client()

    def via_gateway(url: str) -> Callable[[int], None]:
        def claim(number: int) -> None:
            answer = client.post(
                f"{url}/v1/records/bench-latency/{run_id}-{number}/claim",
                content=CLAIM_BODY,
                headers={"content-type": "application/json"},
            )
            answer.raise_for_status()

        return claim

    def direct(number: int) -> None:
        raw_claim(dynamodb, lab.gateway_table, f"bench-latency-raw#{run_id}-{number}")

    callers = {name: via_gateway(url) for name, url in urls.items()}
    callers["boto3 PutItem → DynamoDB Local"] = direct
    samples: dict[str, list[float]] = {name: [] for name in callers}
    for call in callers.values():
        _timed(call, -warmup, warmup, [])
    for start in range(0, calls, BLOCK):
        for name, call in callers.items():
            _timed(call, start, min(BLOCK, calls - start), samples[name])
    client.close()
    return {name: summarize(times) for name, times in samples.items()}


def run(lab: Lab, *, calls: int, warmup: int, wrk_seconds: float) -> Section:
    gateway_dynamodb = "httpx → gateway (DynamoDB)"
    gateway_sqlite = "httpx → gateway (SQLite)"
    sqlite_url = f"sqlite:///{lab.sqlite_path('latency')}"
    dynamodb_url = lab.dynamodb_url(lab.gateway_table)
    with (
        lab.gateway(dynamodb_url) as on_dynamodb,
        lab.gateway(sqlite_url) as on_sqlite,
        lab.floor_server() as floor_url,
        lab.floor_server(dynamodb_url) as claim_floor_url,
    ):
        python = _python_clients(
            lab,
            {gateway_dynamodb: on_dynamodb.url, gateway_sqlite: on_sqlite.url},
            calls=calls,
            warmup=warmup,
        )
        wrk = run_wrk_in_turns(
            {
                GATEWAY: WrkTarget(on_dynamodb.url, "claims"),
                "gateway (SQLite)": WrkTarget(on_sqlite.url, "claims"),
                CLAIM_FLOOR: WrkTarget(claim_floor_url, "claims"),
                FLOOR: WrkTarget(floor_url, "claims"),
                DATABASE: WrkTarget(
                    lab.dynamodb.endpoint_url, "dynamodb_claims", (lab.gateway_table,)
                ),
            },
            seconds=wrk_seconds,
        )

    boto3_p50 = python["boto3 PutItem → DynamoDB Local"].median
    client_ratio = python[gateway_dynamodb].median / boto3_p50
    python_rows = [
        [
            name,
            str(summary.n),
            ms(summary.median),
            ms(summary.p99),
            ratio_text(summary.median / boto3_p50) if "gateway" in name else "baseline",
        ]
        for name, summary in python.items()
    ]
    database = wrk[DATABASE]
    added_p50 = wrk[GATEWAY].p50_s - database.p50_s
    claim_floor_added = wrk[CLAIM_FLOOR].p50_s - database.p50_s
    wrk_rows = [
        [
            name,
            str(result.requests),
            ms(result.p50_s),
            ms(result.p99_s),
            ms(result.p50_s - database.p50_s) if name in (GATEWAY, CLAIM_FLOOR) else "",
        ]
        for name, result in wrk.items()
    ]
    return Section(
        title="Gateway overhead (concurrency 1)",
        method=(
            f"Python clients: {calls} claims of fresh keys each after {warmup} warm-up ones, "
            f"taking turns in blocks of {BLOCK}; one `httpx.Client` to 1-worker gateways, and "
            "boto3 making the gateway's own conditional PutItem (same table, same item, same "
            "condition). wrk: 1 connection posting claims of fresh keys (DynamoDB Local gets "
            "the same PutItem as raw JSON). " + in_turns_method(wrk_seconds)
        ),
        tables=[
            Table(
                ["Python client, concurrency 1", "Claims", "p50 (ms)", "p99 (ms)", "vs boto3"],
                python_rows,
            ),
            Table(
                ["wrk, 1 connection", "Requests", "p50 (ms)", "p99 (ms)", "Added p50 (ms)"],
                wrk_rows,
            ),
        ],
        targets=[
            Target(
                name="Gateway claim p50 at concurrency 1 vs a raw boto3 conditional write",
                measured=client_ratio,
                goal=1.3,
                at_most=True,
                shown_as=ratio_text(client_ratio),
                basis=f"{ms(python[gateway_dynamodb].median)} ms vs {ms(boto3_p50)} ms",
            ),
        ],
        notes=[
            "The gateways run their default settings, access log included (to a file).",
            f"*{FLOOR}*: `bench/_floor.py`, an ASGI app that reads the claim and answers a "
            "fixed 201, under uvicorn with the gateway's own loop and HTTP settings: what the "
            "HTTP server and loopback cost before any gateway code runs "
            f"({ms(wrk[FLOOR].p50_s)} ms p50 in this run).",
            f"*{CLAIM_FLOOR}*: `bench/_floor.py`'s `claiming_app`, the same but making each "
            "claim through the gateway's own `RecordService` and DynamoDB client first. It adds "
            f"{ms(claim_floor_added)} ms; the gateway adds {ms(added_p50 - claim_floor_added)} ms "
            "more for what it runs around the claim.",
        ],
    )
