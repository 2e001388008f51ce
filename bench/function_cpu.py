"""1. Function-side CPU per invocation: the adapter against Powertools on the same events.

The benchmark process plays the Lambda function: CPU time is ``time.process_time()`` around each
handler call (a 128 MB function gets a fraction of a core, so its CPU time is its latency).
The gateway's and DynamoDB Local's CPU is in other processes and not counted. The paths run again
within a 128 MB function's share of a core (``bench._quota``), where wall time is what is billed.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aws_lambda_powertools.utilities import idempotency as powertools

import lambda_adapter
from bench._lab import Lab
from bench._quota import cpu_share
from bench._stats import Summary, ms, ratio_text, summarize
from bench.report import Section, Table, Target
from lambda_adapter.testing import FakeLambdaContext

__all__ = ["run"]

POWERTOOLS_TABLE = "powertools-bench"
BLOCK = 50  # invocations per turn; the two libraries take turns so drift hits both alike
QUOTA_GOALS = {"new key (claim + complete)": 0.2, "replay": 0.15}
Handler = Callable[[dict[str, Any], Any], Any]


def _business_logic(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"order_id": event["order_id"], "status": "charged", "amount": event["amount"]}


def _events(count: int) -> list[dict[str, Any]]:
    run_id = secrets.token_hex(4)
    return [
        {
            "order_id": f"order-{run_id}-{number}",
            "customer": {"id": f"c-{number % 97}", "tier": "gold"},
            "amount": 1999 + number,
            "currency": "EUR",
            "items": [{"sku": f"sku-{n}", "quantity": n + 1} for n in range(3)],
        }
        for number in range(count)
    ]


@dataclass(frozen=True, slots=True)
class _Samples:
    cpu: list[float]
    wall: list[float]


def _invoke(handler: Handler, events: Sequence[dict[str, Any]], into: _Samples) -> None:
    for event in events:
        context = FakeLambdaContext(remaining_ms=30_000)
        cpu, wall = time.process_time(), time.perf_counter()
        handler(event, context)
        into.cpu.append(time.process_time() - cpu)
        into.wall.append(time.perf_counter() - wall)


def _take_turns(
    handlers: dict[str, Handler], events: Sequence[dict[str, Any]]
) -> dict[str, _Samples]:
    samples = {name: _Samples([], []) for name in handlers}
    for start in range(0, len(events), BLOCK):
        for name, handler in handlers.items():
            _invoke(handler, events[start : start + BLOCK], samples[name])
    return samples


def _create_powertools_table(lab: Lab) -> None:
    """The table Powertools' documentation asks for: a string hash key ``id``, TTL on."""
    client = lab.boto3_client()
    client.create_table(
        TableName=POWERTOOLS_TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=POWERTOOLS_TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
    )


def _decorated(
    library: ModuleType, store: Any, *, use_local_cache: bool, cache_items: int
) -> Handler:
    """``_business_logic`` under ``library``'s ``@idempotent``: one configuration for both."""
    config = library.IdempotencyConfig(
        event_key_jmespath="order_id",
        expires_after_seconds=86_400,
        use_local_cache=use_local_cache,
        local_cache_max_items=cache_items,
    )
    handler: Handler = library.idempotent(config=config, persistence_store=store)(_business_logic)
    return handler


def _measure_path(
    handlers: dict[str, Handler], *, invocations: int, warmup: int, replay: bool
) -> dict[str, _Samples]:
    """New keys, or (``replay``) the same keys a second time; warm-up invocations discarded."""
    warm_events, events = _events(warmup), _events(invocations)
    if replay:
        _take_turns(handlers, warm_events)
        _take_turns(handlers, events)
    _take_turns(handlers, warm_events)
    return _take_turns(handlers, events)


def run(lab: Lab, *, invocations: int, warmup: int) -> Section:
    _create_powertools_table(lab)
    section = Section(
        title="Function-side CPU per invocation",
        method=(
            f"{invocations} invocations per path and library after {warmup} warm-up ones, "
            f"taking turns in blocks of {BLOCK}; CPU is `time.process_time()` around each "
            "handler call in the benchmark process (the function), wall is `perf_counter()`. "
            "Both libraries key on `order_id` of the same events, with a fake Lambda context; "
            "their local caches hold every event. "
            "The adapter talks to a 1-worker gateway on DynamoDB Local; Powertools uses "
            "`DynamoDBPersistenceLayer` on a table with an `id` hash key in the same "
            "DynamoDB Local."
        ),
    )
    rows: list[list[str]] = []
    with lab.gateway(lab.dynamodb_url(lab.gateway_table)) as gateway:
        paths = {
            "new key (claim + complete)": (False, False, 0.4, "per new-key invocation"),
            "replay": (False, True, 0.4, "per replay"),
            "local-cache replay": (True, True, 1.0, "per local-cache replay"),
        }
        # Room for every event, so each cached replay is a hit (both default to 256 items).
        cache_items = invocations + warmup
        for path, (cached, replay, goal, target_name) in paths.items():
            handlers = _handlers(lab, gateway.url, cached=cached, cache_items=cache_items)
            samples = _measure_path(handlers, invocations=invocations, warmup=warmup, replay=replay)
            adapter_cpu = summarize(samples["idemgate adapter"].cpu)
            baseline_cpu = summarize(samples["Powertools"].cpu)
            ratio = adapter_cpu.median / baseline_cpu.median
            for name, figures in samples.items():
                cpu, wall = summarize(figures.cpu), summarize(figures.wall)
                versus = ratio_text(ratio) if name == "idemgate adapter" else "baseline"
                rows.append([path, name, *_cells(cpu), *_cells(wall), versus])
            section.targets.append(
                Target(
                    name=f"Adapter CPU {target_name} vs Powertools",
                    measured=ratio,
                    goal=goal,
                    at_most=True,
                    shown_as=ratio_text(ratio),
                    basis=(
                        f"median {ms(adapter_cpu.median)} ms vs {ms(baseline_cpu.median)} ms "
                        "CPU per invocation"
                    ),
                )
            )
        # As many invocations as at full CPU: the mean within the quota turns on how many of
        # them meet a period's end, a handful per block of the adapter's, so fewer blocks
        # make a figure that moves from run to run.
        quota_rows = _under_quota(
            lab, gateway.url, paths, section, invocations=invocations, warmup=warmup
        )
    section.tables.append(
        Table(
            [
                "Path",
                "Library",
                "CPU median (ms)",
                "CPU p99 (ms)",
                "Wall median (ms)",
                "Wall p99 (ms)",
                "CPU vs Powertools (median)",
            ],
            rows,
        )
    )
    section.tables.append(
        Table(
            [
                "Path, 128 MB CPU share",
                "Library",
                "Wall mean (ms)",
                "Wall median (ms)",
                "Wall p99 (ms)",
                "CPU median (ms)",
                "Wall mean vs Powertools",
            ],
            quota_rows,
        )
    )
    return section


def _handlers(lab: Lab, url: str, *, cached: bool, cache_items: int) -> dict[str, Handler]:
    stores = {
        "idemgate adapter": (
            lambda_adapter,
            lambda_adapter.GatewayPersistenceLayer(url=url, namespace="bench-cpu"),
        ),
        "Powertools": (
            powertools,
            powertools.DynamoDBPersistenceLayer(
                table_name=POWERTOOLS_TABLE, boto3_client=lab.boto3_client()
            ),
        ),
    }
    return {
        name: _decorated(library, store, use_local_cache=cached, cache_items=cache_items)
        for name, (library, store) in stores.items()
    }


def _under_quota(
    lab: Lab,
    url: str,
    paths: dict[str, tuple[bool, bool, float, str]],
    section: Section,
    *,
    invocations: int,
    warmup: int,
) -> list[list[str]]:
    """The same paths within a 128 MB function's CPU share: wall time per invocation."""
    rows: list[list[str]] = []
    with cpu_share() as share:
        for path, (cached, replay, _, _) in paths.items():
            if cached:
                # Some microseconds of CPU: whichever invocation meets the quota's end waits
                # out the period, so a mean of them says nothing.
                continue
            handlers = _handlers(lab, url, cached=cached, cache_items=invocations + warmup)
            samples = _measure_path(handlers, invocations=invocations, warmup=warmup, replay=replay)
            means = {name: statistics.mean(figures.wall) for name, figures in samples.items()}
            ratio = means["idemgate adapter"] / means["Powertools"]
            for name, figures in samples.items():
                wall, cpu = summarize(figures.wall), summarize(figures.cpu)
                versus = ratio_text(ratio) if name == "idemgate adapter" else "baseline"
                rows.append([path, name, ms(means[name]), *_cells(wall), ms(cpu.median), versus])
            if path in QUOTA_GOALS:
                basis = (
                    f"mean {ms(means['idemgate adapter'])} ms vs {ms(means['Powertools'])} ms "
                    "wall per invocation"
                )
                section.targets.append(
                    Target(
                        name=f"Adapter wall time per {path.split(' (')[0]} at a 128 MB CPU share "
                        "vs Powertools",
                        measured=ratio,
                        goal=QUOTA_GOALS[path],
                        at_most=True,
                        shown_as=ratio_text(ratio),
                        basis=basis if share.limited else f"{basis}; {share.description}",
                    )
                )
    section.method += (
        f" Then {invocations} invocations per path and library after {warmup} warm-up ones "
        f"within {share.description}; there the mean wall time is compared, since the quota "
        "stalls one invocation in several for the rest of its period and the median misses it."
    )
    return rows


def _cells(summary: Summary) -> list[str]:
    return [ms(summary.median), ms(summary.p99)]
