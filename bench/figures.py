"""Figures the benches print alike."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank `pct`th percentile (0–100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def medians_line(results: list[Mapping[str, float]], skip: Iterable[str] = ()) -> str:
    """`median of N: key value, …` over repeated runs' figures."""
    skipped = set(skip)
    return f"median of {len(results)}: " + ", ".join(
        f"{key} {statistics.median(r[key] for r in results):.2f}" for key in results[0] if key not in skipped)
