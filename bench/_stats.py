"""Medians and tail percentiles of samples, and how figures are written in the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "ms", "percentile", "ratio_text", "summarize"]


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, median and 99th percentile of one set of samples (in their own unit)."""

    n: int
    median: float
    p99: float


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(len(samples), statistics.median(samples), percentile(samples, 99))


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with the precision that matters at that size."""
    value = seconds * 1000
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x"
