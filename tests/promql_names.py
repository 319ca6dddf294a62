"""The metric names deploy/monitoring's rules and dashboard query (for the tests that check them against what the
daemon exports). Good enough for our own expressions, not a PromQL parser: label matchers, grouping clauses,
ranges and strings are cut out, what is left is functions (followed by ``(``), keywords, numbers and metric names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

__all__ = ["DASHBOARD", "RULE", "metric_names", "queried_metrics"]

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"

_CUT = [re.compile(p) for p in (r'"(?:[^"\\]|\\.)*"', r"\{[^}]*\}", r"\[[^\]]*\]",
                                r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")]
_TOKEN = re.compile(r"(?<![\w$:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "on", "without", "ignoring", "group_left",
             "group_right", "inf", "nan"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names in one PromQL expression (or a Grafana ``label_values(metric..., label)`` query)."""
    names = set(_LABEL_VALUES.findall(expr))
    if names:
        return names
    for pattern in _CUT:
        expr = pattern.sub(" ", expr)
    return {t for t in _TOKEN.findall(expr) if t.lower() not in _KEYWORDS}


def _dashboard_queries(node: object) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def queried_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (an alert's name or a dashboard panel's title)."""
    out: dict[str, set[str]] = {}
    spec = yaml.safe_load(RULE.read_text())["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                out.setdefault(name, set()).add(rule.get("alert") or rule.get("record", "?"))
    for query in _dashboard_queries(json.loads(DASHBOARD.read_text())):
        for name in metric_names(query):
            out.setdefault(name, set()).add("dashboard")
    return out
