"""Read the daemon's ``/metrics`` (Prometheus text format) into plain dicts."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LabelKey = tuple[tuple[str, str], ...]


@dataclass
class MetricsSnapshot:
    """Samples by metric sample name (``..._total`` for counters), then by sorted label pairs."""

    samples: dict[str, dict[LabelKey, float]] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for key, value in self.samples.get(name, {}).items():
            have = dict(key)
            if all(have.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sum}`` over the samples of ``name``."""
        out: dict[str, float] = {}
        for key, value in self.samples.get(name, {}).items():
            lv = dict(key).get(label, "")
            out[lv] = out.get(lv, 0.0) + value
        return out

    def by_labels(self, name: str, *labels: str) -> dict[str, float]:
        """``{"v1 v2": sum}`` over the samples of ``name``, keyed by the values of ``labels``."""
        out: dict[str, float] = {}
        for key, value in self.samples.get(name, {}).items():
            have = dict(key)
            k = " ".join(have.get(lbl, "") for lbl in labels)
            out[k] = out.get(k, 0.0) + value
        return out


def parse(text: str) -> MetricsSnapshot:
    snap = MetricsSnapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key: LabelKey = tuple(sorted(sample.labels.items()))
            snap.samples.setdefault(sample.name, {})[key] = float(sample.value)
    return snap


def scrape(url: str, timeout: float = 10.0) -> MetricsSnapshot:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode())


def diff(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` per key, dropping zeros."""
    keys = set(after) | set(before)
    out = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in sorted(out.items()) if v}
