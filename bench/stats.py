"""Small statistics helpers (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation between ranks."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    frac = rank - low
    return float(sorted_values[low]) * (1 - frac) + float(sorted_values[high]) * frac


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean/min of ``values`` (seconds), rounded to the millisecond."""
    data = sorted(values)
    if not data:
        return {}
    out = {
        "min": data[0],
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": data[-1],
        "mean": sum(data) / len(data),
    }
    return {k: round(v, 4) for k, v in out.items()}


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (NaN with fewer than two distinct ``xs``)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    n = len(xs)
    if n < 2:
        return math.nan
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
