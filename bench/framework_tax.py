"""Framework tax: the gateway's CPU per claim and claims/s against floors, under wrk.

Four servers per backend, all under uvicorn with the gateway's loop and HTTP protocol and one
worker, take turns under the same wrk load (16 connections posting claims of fresh keys):

- *constant answer*: ``bench._floor.app``, which reads the request and answers a fixed 201;
  what the HTTP server costs, the ceiling of any ASGI app on these settings.
- *no-framework floor*: ``bench._floor.claiming_app``, which also makes the claim through the
  gateway's ``RecordService`` on the same storage: no routing, validation, metrics or log.
- *features, no framework*: ``bench._floor.featured_app``, the floor plus what the gateway does
  for each claim besides its framework (request ID, path match, body validation, answer,
  metrics and access line), in one function with the gateway's own code; what the gateway
  spends beyond it is the cost of its structure.
- *gateway*: ``idemgate serve`` with its defaults (access log on, to a file).

CPU is what the server's process and its children used (``/proc/PID/stat``) over each run,
divided by the requests it answered; DynamoDB Local and wrk are other processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from bench._lab import Lab, Served, process_cpu_s
from bench._stats import ratio_text
from bench._wrk import ROUNDS, WrkErrorsError, run_wrk
from bench.report import Section, Table, Target

__all__ = ["run"]

CONNECTIONS = 16
WARMUP_TRIES = 30
TAX_GOAL = 1.3
THROUGHPUT_GOAL = 0.75
CONSTANT = "constant answer"
FLOOR = "no-framework floor"
FEATURED = "features, no framework"
GATEWAY = "gateway"


@dataclass
class _Tally:
    requests: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6


@contextlib.contextmanager
def _servers(
    lab: Lab, storage: str, floor_storage: str, featured_storage: str
) -> Iterator[dict[str, Served]]:
    with (
        lab.floor_process() as constant,
        lab.floor_process(floor_storage) as floor,
        lab.floor_process(featured_storage, featured=True) as featured,
        lab.gateway(storage) as gateway,
    ):
        assert gateway.pid is not None
        yield {
            CONSTANT: constant,
            FLOOR: floor,
            FEATURED: featured,
            GATEWAY: Served(gateway.url, gateway.pid),
        }


def _measure(lab: Lab, servers: dict[str, Served], *, seconds: float) -> dict[str, _Tally]:
    """Each server in turn for ``ROUNDS`` rounds after a warm-up; totals per server."""
    for name, served in servers.items():
        # At least 1 s, and until it answers: a cold DynamoDB Local can take longer at first.
        for _ in range(WARMUP_TRIES):
            if run_wrk(served.url, "claims", connections=CONNECTIONS, duration_s=1).requests:
                break
        else:
            raise WrkErrorsError(f"{name} answered nothing in {WARMUP_TRIES} s of warm-up")
    tallies = {name: _Tally() for name in servers}
    round_s = max(1, round(seconds / ROUNDS))
    for _ in range(ROUNDS):
        for name, served in servers.items():
            before = process_cpu_s(served.pid)
            result = run_wrk(served.url, "claims", connections=CONNECTIONS, duration_s=round_s)
            cpu_s = process_cpu_s(served.pid) - before
            if result.errors:
                raise WrkErrorsError(f"{name}: {result.errors} of {result.requests} failed")
            tally = tallies[name]
            tally.requests += result.requests
            tally.seconds += result.duration_s
            tally.cpu_s += cpu_s
    for name, tally in tallies.items():
        if not tally.requests:
            raise WrkErrorsError(f"{name} answered no request in {tally.seconds:.0f} s")
    return tallies


def run(lab: Lab, *, seconds: float) -> Section:
    dynamodb = lab.dynamodb_url(lab.gateway_table)
    backends = {
        "SQLite": (
            f"sqlite:///{lab.sqlite_path('tax-gateway')}",
            f"sqlite:///{lab.sqlite_path('tax-floor')}",
            f"sqlite:///{lab.sqlite_path('tax-featured')}",
        ),
        "DynamoDB": (dynamodb, dynamodb, dynamodb),
    }
    measured: dict[str, dict[str, _Tally]] = {}
    for backend, storages in backends.items():
        with _servers(lab, *storages) as servers:
            measured[backend] = _measure(lab, servers, seconds=seconds)
    rows = []
    targets = []
    for backend, tallies in measured.items():
        floor = tallies[FLOOR]
        for name, tally in tallies.items():
            rows.append(
                [
                    backend,
                    name,
                    f"{tally.per_second:,.0f}",
                    f"{tally.cpu_us:.0f}",
                    ratio_text(tally.cpu_us / floor.cpu_us),
                    ratio_text(tally.per_second / floor.per_second),
                    ratio_text(tally.per_second / tallies[CONSTANT].per_second),
                ]
            )
        gateway, featured = tallies[GATEWAY], tallies[FEATURED]
        tax = gateway.cpu_us / floor.cpu_us
        targets.append(
            Target(
                name=f"Framework tax ({backend}): gateway CPU per claim vs the no-framework floor",
                measured=tax,
                goal=TAX_GOAL,
                at_most=True,
                shown_as=ratio_text(tax),
                basis=(
                    f"{gateway.cpu_us:.0f} µs vs {floor.cpu_us:.0f} µs per claim, 1 worker; "
                    f"its features with no framework {featured.cpu_us:.0f} µs "
                    f"({ratio_text(featured.cpu_us / floor.cpu_us)})"
                ),
            )
        )
    sqlite = measured["SQLite"]
    share = sqlite[GATEWAY].per_second / sqlite[FLOOR].per_second
    targets.append(
        Target(
            name=(
                f"Gateway (SQLite) claims/s at concurrency {CONNECTIONS} vs the no-framework floor"
            ),
            measured=share,
            goal=THROUGHPUT_GOAL,
            at_most=False,
            shown_as=ratio_text(share),
            basis=(
                f"{sqlite[GATEWAY].per_second:,.0f}/s vs {sqlite[FLOOR].per_second:,.0f}/s, "
                f"1 worker; the constant answer served {sqlite[CONSTANT].per_second:,.0f}/s "
                f"({ratio_text(sqlite[GATEWAY].per_second / sqlite[CONSTANT].per_second)})"
            ),
        )
    )
    return Section(
        title="Framework tax: CPU per claim against floors",
        method=(
            f"Per backend, four 1-worker servers under uvicorn with the gateway's loop and "
            f"HTTP protocol: *{CONSTANT}* (`bench/_floor.py` `app`: reads the request, answers a "
            f"fixed 201), *{FLOOR}* (`claiming_app`: the same, making the claim through the "
            f"gateway's `RecordService` and storage client first), *{FEATURED}* "
            "(`featured_app`: the floor plus, in one function and with the gateway's own code, "
            "its request ID, path match, body validation, answer, metrics and access line) and "
            f"the *{GATEWAY}* (`idemgate serve`, default settings, access log to a file; its "
            f"CPU beyond *{FEATURED}*'s is the cost of its structure). After a warm-up of at "
            f"least 1 s each, they take turns under wrk ({CONNECTIONS} connections, 2 threads, "
            f"claims of fresh keys) for {ROUNDS} rounds of {max(1, round(seconds / ROUNDS))} s. "
            "CPU per request is the user and system CPU of the server's processes "
            "(`/proc/PID/stat`) over the runs divided by the requests answered; on SQLite each "
            "server that claims uses a fresh file."
        ),
        tables=[
            Table(
                [
                    "Backend",
                    "Server",
                    "Requests/s",
                    "CPU per request (µs)",
                    "CPU vs floor",
                    "Requests/s vs floor",
                    "Requests/s vs constant",
                ],
                rows,
            )
        ],
        targets=targets,
    )
