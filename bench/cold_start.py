"""2. Cold start: a fresh interpreter importing a library and constructing its store.

Each library is installed as Lambda gets it: a fresh virtual environment holding only its wheel
and its dependencies at the versions of uv.lock (the adapter's wheel built from lambda_adapter/;
aws-lambda-powertools with boto3), nothing of the development workspace. Each case is its own
``python -c`` process, timed from spawn to exit; the cases take turns, and a bare ``python -c
pass`` gives the interpreter's own start-up, which is subtracted. The same cases run again within
a 128 MB function's share of a core (``bench._quota``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._lab import Lab
from bench._quota import cpu_share
from bench._stats import ms, ratio_text, summarize
from bench.report import Section, Table, Target

__all__ = ["run"]

BARE = "interpreter only"
ADAPTER = "idemgate adapter"
LAYER = "idemgate adapter, from its layer"
POWERTOOLS = "Powertools"
LAYER_DIR = Path("build/layer")
LAYER_ZIP = LAYER_DIR / "idemgate-lambda-layer.zip"
_ADAPTER_CODE = (
    "import lambda_adapter; "
    'lambda_adapter.GatewayPersistenceLayer(url="http://127.0.0.1:8080", namespace="cold")'
)
# Which environment each case runs in: "empty" has no package at all.
CASES = {
    BARE: ("empty", "pass"),
    ADAPTER: ("adapter", _ADAPTER_CODE),
    # What a function using the layer loads: the layer's files ahead of everything else.
    LAYER: (
        "empty",
        f"import sys; sys.path.insert(0, {str((LAYER_DIR / 'python').absolute())!r}); "
        f"{_ADAPTER_CODE}",
    ),
    POWERTOOLS: (
        "powertools",
        "from aws_lambda_powertools.utilities.idempotency import "
        "DynamoDBPersistenceLayer, idempotent; "
        'DynamoDBPersistenceLayer(table_name="cold")',
    ),
    # Not compared: where the time of the two above goes.
    "import httpx (alone)": ("adapter", "import httpx"),
    "import boto3 (alone)": ("powertools", "import boto3"),
}
# Within the quota a Powertools start takes seconds: only the compared cases, fewer times.
QUOTA_CASES = (BARE, ADAPTER, POWERTOOLS)
QUOTA_REPEATS_DIVISOR = 4
GOAL = 0.25


def _uv() -> str:
    return shutil.which("uv") or ".tools/bin/uv"


def _uv_run(arguments: Sequence[str]) -> None:
    """A uv command, from uv's cache when it holds everything, else from the index."""
    command = [_uv(), *arguments]
    offline = subprocess.run([*command, "--offline"], check=False, capture_output=True)
    if offline.returncode:
        subprocess.run(command, check=True, capture_output=True)


def _environments(lab: Lab) -> dict[str, Path]:
    """The interpreters of three fresh virtual environments: adapter, Powertools, empty."""
    root = lab.work_dir / "cold-start"
    dist = root / "dist"
    constraints = root / "uv-lock-constraints.txt"
    _uv_run(["build", "--quiet", "--wheel", "--package", "idemgate-lambda", "-o", str(dist)])
    _uv_run(
        [
            "export", "--quiet", "--locked", "--all-packages", "--all-groups",
            "--no-emit-workspace", "--no-hashes", "--no-annotate", "--no-header",
            "-o", str(constraints),
        ],
    )  # fmt: skip
    wheels = sorted(str(wheel) for wheel in dist.glob("idemgate_lambda-*.whl"))
    packages = {"adapter": wheels, "powertools": ["aws-lambda-powertools", "boto3"], "empty": []}
    pythons = {}
    for name, requirements in packages.items():
        venv = root / name
        _uv_run(["venv", "--quiet", "--python", sys.executable, str(venv)])
        python = venv / "bin" / "python"
        if requirements:
            install = ["pip", "install", "--quiet", "--compile-bytecode", "--python", str(python)]
            _uv_run([*install, "-c", str(constraints), *requirements])
        pythons[name] = python
    return pythons


@dataclass(frozen=True, slots=True)
class _Case:
    python: Path
    code: str


def _spawn_time(case: _Case, cwd: Path) -> float:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    started = time.perf_counter()
    subprocess.run([case.python, "-c", case.code], check=True, env=environment, cwd=cwd)
    return time.perf_counter() - started


def _take_turns(cases: dict[str, _Case], repeats: int, cwd: Path) -> dict[str, list[float]]:
    for case in cases.values():  # warm the page cache and the .pyc files; discarded
        _spawn_time(case, cwd)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            samples[name].append(_spawn_time(case, cwd))
    return samples


def _layer_size() -> tuple[int, int]:
    """The layer's zip size and unzipped size, in bytes, after building it afresh."""
    subprocess.run(["make", "--quiet", "layer"], check=True, stdout=subprocess.DEVNULL)
    unzipped = sum(f.stat().st_size for f in (LAYER_DIR / "python").rglob("*") if f.is_file())
    return LAYER_ZIP.stat().st_size, unzipped


def run(lab: Lab, *, repeats: int) -> Section:
    zipped, unzipped = _layer_size()
    pythons = _environments(lab)
    cases = {name: _Case(pythons[where], code) for name, (where, code) in CASES.items()}
    cwd = lab.work_dir / "cold-start"  # not the repository: its folders would shadow packages
    samples = _take_turns(cases, repeats, cwd)
    quota_repeats = max(2, repeats // QUOTA_REPEATS_DIVISOR)
    with cpu_share() as share:
        quota_samples = _take_turns({name: cases[name] for name in QUOTA_CASES}, quota_repeats, cwd)
    rows, ratio, basis = _rows(samples)
    quota_rows, quota_ratio, quota_basis = _rows(quota_samples)
    columns = [
        "Case",
        "Wall median (ms)",
        "Wall p99 (ms)",
        "Import + construct (ms)",
        "vs Powertools",
    ]
    return Section(
        title="Cold start",
        method=(
            "Each library in a fresh virtual environment holding only its wheel and its "
            "dependencies at the versions of uv.lock (`uv build` of lambda_adapter/, `uv pip "
            "install` of it or of aws-lambda-powertools and boto3), as a deployment package "
            "or a layer holds them; nothing of the development workspace. "
            f"{repeats} fresh interpreters per case after one discarded warm-up, cases taking "
            "turns; wall time from spawn to exit. *Import + construct* is the median minus the "
            f"bare interpreter's median. Then {quota_repeats} more per compared case within "
            f"{share.description}."
        ),
        tables=[
            Table(columns, rows),
            Table([f"{columns[0]}, 128 MB CPU share", *columns[1:]], quota_rows),
        ],
        notes=[
            f"The Lambda layer (`make layer`: the adapter and its dependencies, pure Python) is "
            f"{zipped / 1024:.0f} KiB zipped, {unzipped / 1024:.0f} KiB unzipped."
        ],
        targets=[
            Target(
                name="Adapter cold start (import + construct, fresh environment) vs Powertools",
                measured=ratio,
                goal=GOAL,
                at_most=True,
                shown_as=ratio_text(ratio),
                basis=basis,
            ),
            Target(
                name="Adapter init at a 128 MB CPU share vs Powertools",
                measured=quota_ratio,
                goal=GOAL,
                at_most=True,
                shown_as=ratio_text(quota_ratio),
                basis=quota_basis if share.limited else f"{quota_basis}; {share.description}",
            ),
        ],
    )


def _rows(samples: dict[str, list[float]]) -> tuple[list[list[str]], float, str]:
    """The table's rows, the adapter's import + construct against Powertools', and its basis."""
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
    basis = (
        f"{ms(net[ADAPTER])} ms vs {ms(net[POWERTOOLS])} ms beyond a "
        f"{ms(bare)} ms bare interpreter (whole process: {ratio_text(raw_ratio)})"
    )
    return rows, ratio, basis
