"""What both benchmark reports (:mod:`bench.report`, :mod:`bench.fleetreport`) format numbers and targets with."""

from __future__ import annotations

import math
from typing import Any

#: The per-node memory goal both reports measure against.
GOAL_BYTES_PER_NODE = 3 * 1024


def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        text = f"{int(value):,}" if value.is_integer() and abs(value) >= 10 else f"{value:,.{digits}f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text}{unit}"


def met(value: bool | None) -> str:
    return "—" if value is None else ("✅ met" if value else "❌ missed")


def store_slope(store: list[dict[str, Any]]) -> float:
    """RSS growth per additional held Node between the smallest and largest N of bench.nodestore."""
    lo, hi = store[0], store[-1]
    grown = (hi["rss_after_mib"] - hi["rss_before_mib"]) - (lo["rss_after_mib"] - lo["rss_before_mib"])
    return float(grown * 1024 * 1024 / (hi["nodes"] - lo["nodes"]))
