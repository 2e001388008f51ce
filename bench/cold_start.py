"""2. Cold start: a fresh interpreter importing a library and constructing its store.

Each case is its own ``python -c`` process, timed from spawn to exit; the cases take turns, and
a bare ``python -c pass`` gives the interpreter's own start-up, which is subtracted.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._lab import Lab
from bench._stats import ms, ratio_text, summarize
from bench.report import Section, Table, Target

__all__ = ["run"]

BARE = "interpreter only"
ADAPTER = "idemgate adapter"
POWERTOOLS = "Powertools"
LAYER_DIR = Path("build/layer")
LAYER_ZIP = LAYER_DIR / "idemgate-lambda-layer.zip"
_ADAPTER_CODE = (
    "import lambda_adapter; "
    'lambda_adapter.GatewayPersistenceLayer(url="http://127.0.0.1:8080", namespace="cold")'
)
CASES = {
    BARE: "pass",
    ADAPTER: _ADAPTER_CODE,
    # What a function using the layer loads: the layer's files ahead of everything else.
    "idemgate adapter, from its layer": (
        f"import sys; sys.path.insert(0, {str(LAYER_DIR / 'python')!r}); {_ADAPTER_CODE}"
    ),
    POWERTOOLS: (
        "from aws_lambda_powertools.utilities.idempotency import "
        "DynamoDBPersistenceLayer, idempotent; "
        'DynamoDBPersistenceLayer(table_name="cold")'
    ),
    # Not compared: where the time of the two above goes.
    "import httpx (alone)": "import httpx",
    "import boto3 (alone)": "import boto3",
}


def _spawn_time(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    return time.perf_counter() - started


def _layer_size() -> tuple[int, int]:
    """The layer's zip size and unzipped size, in bytes, after building it afresh."""
    subprocess.run(["make", "--quiet", "layer"], check=True, stdout=subprocess.DEVNULL)
    unzipped = sum(f.stat().st_size for f in (LAYER_DIR / "python").rglob("*") if f.is_file())
    return LAYER_ZIP.stat().st_size, unzipped


def run(lab: Lab, *, repeats: int) -> Section:
    zipped, unzipped = _layer_size()
    lab.commands.append("make layer")
    for code in CASES.values():  # warm the page cache and the .pyc files; discarded
        _spawn_time(code)
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, code in CASES.items():
            samples[name].append(_spawn_time(code))
    for code in CASES.values():
        lab.commands.append(shlex.join([".venv/bin/python", "-c", code]))

    bare = statistics.median(samples[BARE])
    net = {name: statistics.median(times) - bare for name, times in samples.items()}
    ratio = net[ADAPTER] / net[POWERTOOLS]
    rows = []
    for name, times in samples.items():
        summary = summarize(times)
        versus = {ADAPTER: ratio_text(ratio), POWERTOOLS: "baseline"}.get(name, "")
        net_cell = "" if name == BARE else ms(net[name])
        rows.append([name, ms(summary.median), ms(summary.p99), net_cell, versus])
    raw_ratio = statistics.median(samples[ADAPTER]) / statistics.median(samples[POWERTOOLS])
    return Section(
        title="Cold start",
        method=(
            f"{repeats} fresh interpreters per case after one discarded warm-up, cases taking "
            "turns; wall time from spawn to exit. *Import + construct* is the median minus the "
            "bare interpreter's median."
        ),
        tables=[
            Table(
                [
                    "Case",
                    "Wall median (ms)",
                    "Wall p99 (ms)",
                    "Import + construct (ms)",
                    "vs Powertools",
                ],
                rows,
            )
        ],
        notes=[
            f"The Lambda layer (`make layer`: the adapter and its dependencies, pure Python) is "
            f"{zipped / 1024:.0f} KiB zipped, {unzipped / 1024:.0f} KiB unzipped."
        ],
        targets=[
            Target(
                name="Adapter cold start (import + construct) vs Powertools",
                measured=ratio,
                goal=0.35,
                at_most=True,
                shown_as=ratio_text(ratio),
                basis=(
                    f"{ms(net[ADAPTER])} ms vs {ms(net[POWERTOOLS])} ms beyond a "
                    f"{ms(bare)} ms bare interpreter (whole process: {ratio_text(raw_ratio)})"
                ),
            )
        ],
    )
