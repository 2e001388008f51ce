"""The benchmark suite keeps working: a ``--quick`` run writes a complete report.

Figures from tiny counts mean nothing, so nothing here looks at timings: only that every section
is there and every ratio was computed from the figures beside it.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [
    "## Targets",
    "## 1. Function-side CPU per invocation",
    "## 2. Cold start",
    "## 3. Gateway overhead (concurrency 1)",
    "## 4. Gateway throughput per box",
    "## 5. Framework tax: CPU per claim against floors",
    "## 6. Instructions per claim: the apps' own code, counted",
    "## 7. Scale",
    "## 8. Deadline adherence",
    "## 9. Authentication CPU per request",
    "## Machine",
    "## Versions",
    "## How to re-run",
]
TARGET_COUNT = 20


def _targets(report: str) -> list[list[str]]:
    table = report.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # past the header and its rule


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _rounding(text: str) -> float:
    """Half a unit of the last decimal shown in ``text``: the most rounding can have moved it."""
    decimals = len(text.partition(".")[2])
    return 0.5 * 10**-decimals


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    output = tmp_path_factory.mktemp("bench") / "performance.md"
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=REPO,
        check=True,
        timeout=600,
    )
    return output.read_text()


@pytest.mark.timeout(660)
def test_the_report_has_every_section_in_order(report: str) -> None:
    positions = [report.index(heading) for heading in SECTIONS]
    assert positions == sorted(positions)
    for fact in ("nproc", "CPU model", "Memory", "aws-lambda-powertools", "boto3", "httpx"):
        assert f"| {fact} |" in report
    assert "make bench" in report
    assert "python -m bench --only NAME" in report


@pytest.mark.timeout(660)
def test_every_target_is_judged_from_a_computed_figure(report: str) -> None:
    targets = _targets(report)
    assert len(targets) == TARGET_COUNT
    for name, measured, goal, met, basis in targets:
        figure = re.match(r"-?[\d,]+\.?\d*", measured)
        assert figure, f"{name}: no figure in {measured!r}"
        assert math.isfinite(_number(figure.group()))
        assert goal.startswith(("≤ ", "≥ "))
        assert met in ("yes", "**no**")
        pair = re.match(r"(?:median )?([\d,.]+) ms vs ([\d,.]+) ms", basis)
        if measured.endswith("x") and pair:
            # The basis rounds each figure to the decimals it shows (fewer from 10 ms up) and
            # the ratio to 0.01: allow all three roundings.
            mine, theirs = _number(pair.group(1)), _number(pair.group(2))
            mine_error, theirs_error = _rounding(pair.group(1)), _rounding(pair.group(2))
            lowest = (mine - mine_error) / (theirs + theirs_error)
            highest = (mine + mine_error) / max(theirs - theirs_error, 1e-9)
            assert lowest - 0.006 <= _number(measured[:-1]) <= highest + 0.006, name


@pytest.mark.timeout(660)
def test_instruction_ratios_come_from_the_counts_beside_them(report: str) -> None:
    section = report.split("## 6. Instructions per claim", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    apps = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[2:]}
    assert list(apps) == ["no-framework floor", "features, no framework", "gateway"]
    per_claim = {app: _number(cells[0].removesuffix("k")) for app, cells in apps.items()}
    assert all(figure > 0 for figure in per_claim.values())
    for app, (_, _, vs_floor, vs_featured) in apps.items():
        for ratio, basis in (
            (vs_floor, "no-framework floor"),
            (vs_featured, "features, no framework"),
        ):
            # Each count is rounded to 0.1k and the ratio to 0.01.
            lowest = (per_claim[app] - 0.05) / (per_claim[basis] + 0.05)
            highest = (per_claim[app] + 0.05) / (per_claim[basis] - 0.05)
            assert lowest - 0.006 <= _number(ratio.removesuffix("x")) <= highest + 0.006, app
