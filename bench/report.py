"""The report's shape (sections of tables, targets) and its Markdown rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Section", "Table", "Target", "render", "rerun_text"]


@dataclass(frozen=True, slots=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of issue 5: ``measured`` is compared with ``goal`` (a ratio or an absolute)."""

    name: str
    measured: float
    goal: float
    at_most: bool  # True: measured <= goal; False: measured >= goal
    shown_as: str  # the measured figure as the report prints it, e.g. "0.31x" or "4,210 claims/s"
    basis: str  # what the figure is made of, so a reader can check it

    @property
    def met(self) -> bool:
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal

    @property
    def goal_text(self) -> str:
        return ("≤ " if self.at_most else "≥ ") + _number(self.goal)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


@dataclass
class Section:
    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join(" --- " for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return [*lines, ""]


def _targets(targets: Sequence[Target]) -> Table:
    return Table(
        ["Target", "Measured", "Goal", "Met", "Basis"],
        [[t.name, t.shown_as, t.goal_text, "yes" if t.met else "**no**", t.basis] for t in targets],
    )


def render(
    *,
    sections: Sequence[Section],
    header: Sequence[str],
    machine: Table,
    versions: Table,
    rerun: Sequence[str],
    design: str,
) -> str:
    """docs/performance.md: targets first, then each benchmark, then where it ran and how."""
    targets = [target for section in sections for target in section.targets]
    met = sum(target.met for target in targets)
    lines = ["# Performance", "", *header, ""]
    lines += ["## Targets", "", f"{met} of {len(targets)} targets met in this run.", ""]
    lines += _table(_targets(targets))
    lines += [design.rstrip(), ""]
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", "", section.method, ""]
        for table in section.tables:
            lines += _table(table)
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    lines += ["## Machine", "", *_table(machine), "## Versions", "", *_table(versions)]
    lines += ["## How to re-run", "", *rerun, ""]
    return "\n".join(lines)


def rerun_text(*, command: str, benchmarks: Sequence[str]) -> list[str]:
    """How to run the suite again, or some of it."""
    return [
        f"`make bench` runs every benchmark and rewrites this file (this one came from "
        f"`{command}`). It needs wrk and valgrind (Debian's `wrk` and `valgrind` packages: "
        "`make bench` installs them when run as root), Java 17+ and npm for DynamoDB Local. "
        "`.venv/bin/python -m bench --only NAME "
        f"...` runs some of them ({', '.join(f'`{name}`' for name in benchmarks)}), `--quick` "
        "only checks that the suite works (its figures mean nothing), and `--output PATH` "
        "writes the report elsewhere. Each run starts its own gateways and DynamoDB Local on "
        "free loopback ports; each section above says what it ran and for how long.",
    ]
