"""Instructions per claim: the gateway and its floors counted by callgrind rather than timed.

CPU time on a shared box moves by several percent from one run to the next, as much as a change
to the hot path is worth; the number of instructions a claim executes hardly moves. Each app is
driven in-process on SQLite by ``bench._driven`` (no HTTP server: the uvicorn work that every
app shares is left out) under ``valgrind --tool=callgrind``, once with ``claims`` claims more
than the other; the difference in instructions divided by ``claims`` is that app's instructions
per claim, without its imports and start-up. Each pair runs ``repeats`` times and the median is
kept. Instructions are not time: a cache miss or a system call counts as little as an addition,
so these ratios are for comparing the apps' own code, not a replacement for the CPU figures.

    python -m bench.instructions [--claims 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import framework_tax
from bench._stats import ratio_text
from bench.report import Section, Table

__all__ = ["ValgrindMissingError", "measure", "require_valgrind", "run"]

# The smaller run of each pair: enough for the ledger to settle a few batches in both.
BASE_CLAIMS = 500
NAMES = {
    "floor": framework_tax.FLOOR,
    "featured": framework_tax.FEATURED,
    "gateway": framework_tax.GATEWAY,
}
_COLLECTED = re.compile(rb"Collected : (\d+)")


class ValgrindMissingError(RuntimeError):
    """valgrind is not installed."""


def require_valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise ValgrindMissingError("the suite needs valgrind: apt-get install -y valgrind")
    return path


def _instructions(valgrind: str, app: str, claims: int, directory: Path) -> int:
    """Instructions a process driving ``claims`` claims (and the warm-up) into ``app`` ran."""
    database = Path(tempfile.mkdtemp(dir=directory)) / "records.db"
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench._driven", app, str(database), str(claims)]
    done = subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
        check=False,
        timeout=900,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"callgrind of {app} ({claims} claims) failed:\n{tail}")
    return int(found.group(1))


def measure(*, claims: int, repeats: int) -> dict[str, list[float]]:
    """Each app's instructions per claim, once per repeat; two callgrind runs at a time."""
    valgrind = require_valgrind()
    runs = [(app, n, repeat) for repeat in range(repeats) for app in NAMES for n in (0, claims)]
    with (
        tempfile.TemporaryDirectory(prefix="idemgate-callgrind-") as directory,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        counted = pool.map(
            lambda run: _instructions(valgrind, run[0], BASE_CLAIMS + run[1], Path(directory)),
            runs,
        )
        totals = dict(zip(runs, counted, strict=True))
    return {
        app: [
            (totals[app, claims, repeat] - totals[app, 0, repeat]) / claims
            for repeat in range(repeats)
        ]
        for app in NAMES
    }


def run(*, claims: int, repeats: int) -> Section:
    measured = measure(claims=claims, repeats=repeats)
    per_claim = {app: statistics.median(figures) for app, figures in measured.items()}
    floor, featured = per_claim["floor"], per_claim["featured"]
    rows = [
        [
            name,
            f"{per_claim[app] / 1000:,.1f}k",
            " / ".join(f"{figure / 1000:,.1f}k" for figure in measured[app]),
            ratio_text(per_claim[app] / floor),
            ratio_text(per_claim[app] / featured),
        ]
        for app, name in NAMES.items()
    ]
    return Section(
        title="Instructions per claim: the apps' own code, counted",
        method=(
            "The no-framework floor, the features floor and the gateway (the apps of the "
            "framework tax section) each driven in-process on SQLite by `bench/_driven.py`, with "
            "no HTTP server, under `valgrind --tool=callgrind`: a run of "
            f"{BASE_CLAIMS + claims:,} claims minus a run of {BASE_CLAIMS:,} (both after the "
            f"same warm-up), divided by {claims:,}; {repeats} pairs per app, median kept. "
            "Instructions are not time (a cache miss or a system call counts as little as an "
            "addition), but they hardly move with the box's load: a change to the hot path shows "
            "here when the CPU figures' noise hides it. No target: the targets are CPU."
        ),
        tables=[
            Table(
                [
                    "App",
                    "Instructions per claim",
                    "Each pair",
                    "vs no-framework floor",
                    "vs features floor",
                ],
                rows,
            )
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    section = run(claims=args.claims, repeats=args.repeats)
    for row in section.tables[0].rows:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
