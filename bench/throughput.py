"""4. Gateway throughput per box: wrk against gateways with several workers, against raw boto3.

The load generator, the gateway and DynamoDB Local share the same cores, as do raw boto3's
threads and DynamoDB Local in the baseline: both sides pay for their neighbours alike.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bench._lab import Lab, raw_claim, raw_complete
from bench._stats import ms, ratio_text
from bench._wrk import WrkResult, run_wrk
from bench.report import Section, Table, Target

__all__ = ["run"]

BASELINE_THREADS = 16
SQLITE_CLAIMS_GOAL = 3000


def _raw_boto3_rate(lab: Lab, *, seconds: float, pairs: bool) -> float:
    """Units of work per second from one process: 16 threads sharing one pooled client."""
    client = lab.boto3_client(pool_size=BASELINE_THREADS)
    run_id = secrets.token_hex(4)
    stop_at = time.monotonic() + seconds

    def work(thread: int) -> int:
        done = 0
        while time.monotonic() < stop_at:
            pk = f"bench-throughput-raw#{run_id}-{thread}-{done}"
            token = raw_claim(client, lab.gateway_table, pk)
            if pairs:
                raw_complete(client, lab.gateway_table, pk, token)
            done += 1
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(BASELINE_THREADS) as pool:
        total = sum(pool.map(work, range(BASELINE_THREADS)))
    return total / (time.monotonic() - started)


def _gateway_runs(
    lab: Lab,
    storage: str,
    *,
    workers: int,
    connections: Sequence[int],
    seconds: float,
) -> dict[tuple[int, str], WrkResult]:
    results = {}
    with lab.gateway(storage, workers=workers) as gateway:
        run_wrk(gateway.url, "claims", connections=16, duration_s=1)  # warm-up
        for count in connections:
            for script in ("claims", "pairs"):
                results[count, script] = run_wrk(
                    gateway.url, script, connections=count, duration_s=seconds
                )
    return results


def run(
    lab: Lab, *, worker_counts: Sequence[int], connections: Sequence[int], seconds: float
) -> Section:
    _raw_boto3_rate(lab, seconds=1, pairs=False)  # warm-up
    baseline_claims = _raw_boto3_rate(lab, seconds=seconds, pairs=False)
    baseline_pairs = _raw_boto3_rate(lab, seconds=seconds, pairs=True)
    rows = [
        [
            "raw boto3, 1 process",
            "—",
            f"{BASELINE_THREADS} threads",
            f"{baseline_claims:,.0f}",
            f"{baseline_pairs:,.0f}",
            "",
            "baseline",
            "",
        ]
    ]
    best_claims: dict[str, tuple[float, int]] = {}
    for backend in ("DynamoDB", "SQLite"):
        for workers in worker_counts:
            storage = (
                lab.dynamodb_url(lab.gateway_table)
                if backend == "DynamoDB"
                else f"sqlite:///{lab.sqlite_path(f'throughput-{workers}')}"
            )
            results = _gateway_runs(
                lab, storage, workers=workers, connections=connections, seconds=seconds
            )
            for count in connections:
                claims, pairs = results[count, "claims"], results[count, "pairs"]
                if count == 16 and claims.per_second > best_claims.get(backend, (0.0, 0))[0]:
                    best_claims[backend] = (claims.per_second, workers)
                rows.append(
                    [
                        f"gateway ({backend})",
                        str(workers),
                        str(count),
                        f"{claims.per_second:,.0f}",
                        f"{pairs.pairs_per_second:,.0f}",
                        f"{ms(claims.p50_s)} / {ms(claims.p99_s)}",
                        ratio_text(claims.per_second / baseline_claims)
                        + f" / {ratio_text(pairs.pairs_per_second / baseline_pairs)}",
                        str(claims.errors + pairs.errors),
                    ]
                )
    dynamodb_rate, dynamodb_workers = best_claims["DynamoDB"]
    sqlite_rate, sqlite_workers = best_claims["SQLite"]
    ratio = dynamodb_rate / baseline_claims
    return Section(
        title="Gateway throughput per box",
        method=(
            f"wrk with 2 threads for {seconds:g} s per run after a 1 s warm-up, every request "
            "a fresh key; *pairs* claim a key then complete it with the returned lease token. "
            f"The baseline is one Python process with {BASELINE_THREADS} threads sharing one "
            "boto3 client (pool of 16) making the gateway's own conditional PutItem (and, for "
            "pairs, its conditional UpdateItem) against the same DynamoDB Local. Each SQLite "
            "gateway starts on a fresh file."
        ),
        tables=[
            Table(
                [
                    "Target",
                    "Workers",
                    "Connections",
                    "Claims/s",
                    "Pairs/s",
                    "Claim p50 / p99 (ms)",
                    "vs boto3 (claims / pairs)",
                    "Errors",
                ],
                rows,
            )
        ],
        targets=[
            Target(
                name="Gateway (DynamoDB) claims/s at concurrency 16 vs raw single-process boto3",
                measured=ratio,
                goal=1.2,
                at_most=False,
                shown_as=ratio_text(ratio),
                basis=(
                    f"{dynamodb_rate:,.0f}/s with {dynamodb_workers} workers (the best measured) "
                    f"vs {baseline_claims:,.0f}/s"
                ),
            ),
            Target(
                name="Gateway (SQLite) claims/s at concurrency 16",
                measured=sqlite_rate,
                goal=SQLITE_CLAIMS_GOAL,
                at_most=False,
                shown_as=f"{sqlite_rate:,.0f} claims/s",
                basis=f"{sqlite_workers} workers (the best measured)",
            ),
        ],
        notes=[
            f"Recommended worker count on this machine: {dynamodb_workers} for DynamoDB, "
            f"{sqlite_workers} for SQLite (the best claims/s at 16 connections above).",
        ],
    )
