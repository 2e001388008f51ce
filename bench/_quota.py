"""A 128 MB Lambda function's share of a core, as a cgroup CPU quota on this process.

Lambda gives a function CPU in proportion to its memory (1,769 MB is one vCPU), so a 128 MB
function gets about 7% of a core: 7.2 ms of CPU in every 100 ms period here. ``cpu_share`` puts
the benchmark process (and whatever it starts meanwhile) in a child cgroup with that quota, on
cgroup v2 (``cpu.max``) or, where the cpu controller is still on cgroup v1, ``cpu.cfs_quota_us``.
It needs root; without it (or without a cpu controller) it says so and the code runs at full CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PERIOD_US", "QUOTA_US", "Share", "cpu_share"]

QUOTA_US = 7_200
PERIOD_US = 100_000
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CPU_ROOT = _CGROUP_ROOT / "cpu"


@dataclass(frozen=True, slots=True)
class Share:
    limited: bool
    description: str  # for the report: what the code ran under


def _v2_ready() -> bool:
    controllers = _CGROUP_ROOT / "cgroup.controllers"
    if not controllers.exists() or "cpu" not in controllers.read_text().split():
        return False
    subtree = _CGROUP_ROOT / "cgroup.subtree_control"
    if "cpu" not in subtree.read_text().split():
        subtree.write_text("+cpu")
    return True


def _own_cgroup(version: int) -> Path:
    """The cgroup this process is in now, for the controller that ``version`` puts CPU in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (
            version == 1 and "cpu" in controllers.split(",")
        ):
            root = _CGROUP_ROOT if version == 2 else _V1_CPU_ROOT
            return root / path.lstrip("/")
    raise OSError(f"this process is in no cgroup v{version} CPU hierarchy")


def _hierarchy() -> tuple[int, Path]:
    """The cgroup version that holds the cpu controller, and the root to create a group in."""
    if _v2_ready():
        return 2, _CGROUP_ROOT
    if (_V1_CPU_ROOT / "cpu.cfs_quota_us").exists():
        return 1, _V1_CPU_ROOT
    raise OSError("no cgroup CPU controller is mounted")


@contextlib.contextmanager
def cpu_share() -> Iterator[Share]:
    """The block runs within ``QUOTA_US`` of CPU per ``PERIOD_US``, or at full CPU if it cannot."""
    group: Path | None = None
    try:
        version, root = _hierarchy()
        home = _own_cgroup(version)
        group = root / f"idemgate-bench-{os.getpid()}"
        group.mkdir()
        if version == 2:
            (group / "cpu.max").write_text(f"{QUOTA_US} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(QUOTA_US))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()
        yield Share(False, f"full CPU: no CPU quota could be set ({exc})")
        return
    try:
        yield Share(
            True,
            f"a cgroup v{version} CPU quota of {QUOTA_US / 1000:g} ms per "
            f"{PERIOD_US / 1000:g} ms (a 128 MB Lambda function's share of a core)",
        )
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()
