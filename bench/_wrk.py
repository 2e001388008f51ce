"""wrk, the load generator: C and an event loop, so the client is never the bottleneck."""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "WrkResult",
    "WrkTarget",
    "in_turns_method",
    "require_wrk",
    "run_wrk",
    "run_wrk_in_turns",
]

LUA_DIR = Path(__file__).parent / "lua"
ROUNDS = 4  # runs per target when targets take turns
_MARK = "BENCH_JSON "


class WrkMissingError(RuntimeError):
    pass


class WrkErrorsError(RuntimeError):
    pass


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissingError("the suite needs wrk: apt-get install -y wrk")
    return path


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    completed_pairs: int  # complete answers that were 200 (pairs.lua only)
    errors: int  # socket errors, timeouts and non-2xx answers
    duration_s: float
    p50_s: float
    p99_s: float

    @property
    def per_second(self) -> float:
        return self.requests / self.duration_s

    @property
    def pairs_per_second(self) -> float:
        return self.completed_pairs / self.duration_s


def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    duration_s: float,
    namespace_prefix: str = "bench-",
    namespace_count: int = 1,
    extra_args: tuple[str, ...] = (),
) -> WrkResult:
    """One bounded wrk run of ``lua/{script}.lua``; fresh keys, never seen by earlier runs."""
    threads = min(connections, 2)  # one per core: wrk shares the machine with the servers
    command = [
        require_wrk(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=5s",
        f"--script={script}.lua",
        url,
        "--",
        secrets.token_hex(4),
        namespace_prefix,
        str(namespace_count),
        *extra_args,
    ]
    done = subprocess.run(
        command, cwd=LUA_DIR, capture_output=True, text=True, check=True, timeout=duration_s + 60
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith(_MARK))
    figures = json.loads(line.removeprefix(_MARK))
    return WrkResult(
        requests=figures["requests"],
        completed_pairs=figures["completed"],
        errors=figures["errors"],
        duration_s=figures["duration_us"] / 1e6,
        p50_s=figures["p50_us"] / 1e6,
        p99_s=figures["p99_us"] / 1e6,
    )


@dataclass(frozen=True, slots=True)
class WrkTarget:
    """What one run of ``run_wrk`` aims at, as its arguments."""

    url: str
    script: str
    extra_args: tuple[str, ...] = ()
    namespace_prefix: str = "bench-"
    namespace_count: int = 1

    def run(self, seconds: float) -> WrkResult:
        return run_wrk(
            self.url,
            self.script,
            connections=1,
            duration_s=seconds,
            namespace_prefix=self.namespace_prefix,
            namespace_count=self.namespace_count,
            extra_args=self.extra_args,
        )


def _round_s(seconds: float) -> int:
    return max(1, round(seconds / ROUNDS))  # wrk runs for whole seconds


def in_turns_method(seconds: float) -> str:
    """How ``run_wrk_in_turns`` measured, for a section's method."""
    return (
        f"After a 1 s warm-up each, the targets take turns for {ROUNDS} rounds of "
        f"{_round_s(seconds)} s, and each p50 and p99 is the median of its rounds'."
    )


def run_wrk_in_turns(targets: Mapping[str, WrkTarget], *, seconds: float) -> dict[str, WrkResult]:
    """Each target at 1 connection for about ``seconds`` in all, in turns, after a warm-up.

    Taking turns lets drift on the box (DynamoDB Local's JVM, the other processes) hit every
    target alike. Per target: the rounds' counts summed, and the median of their p50s and p99s.
    A target that answered with errors fails the run: its latencies would time failures.
    """
    for target in targets.values():
        target.run(1)
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, target in targets.items():
            result = target.run(_round_s(seconds))
            if result.errors:
                raise WrkErrorsError(f"{name}: {result.errors} of {result.requests} failed")
            runs[name].append(result)
    return {
        name: WrkResult(
            requests=sum(run.requests for run in results),
            completed_pairs=sum(run.completed_pairs for run in results),
            errors=sum(run.errors for run in results),
            duration_s=sum(run.duration_s for run in results),
            p50_s=statistics.median(run.p50_s for run in results),
            p99_s=statistics.median(run.p99_s for run in results),
        )
        for name, results in runs.items()
    }
