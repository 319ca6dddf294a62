"""The Helm chart's values table, generated from the comments of its values.yaml so the two cannot drift.

Every key of ``deploy/helm/cloudsigma-ccm/values.yaml`` whose value is not a map of further keys is documented by
a ``# -- description`` comment right above it (continued on following ``#`` lines). ``python -m ccm.chartdocs``
(part of ``make docs``) rewrites the table between its markers in the chart's README.md; ``--check`` only says
whether it is current (a unit test does the same). An undocumented key is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["BEGIN", "CHART", "END", "Value", "render_readme", "values_of", "values_table"]

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "cloudsigma-ccm"
BEGIN = ("<!-- values table: generated from values.yaml by `make docs` (python -m ccm.chartdocs); "
         "do not edit -->")
END = "<!-- end of values table -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_DOC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


@dataclass(frozen=True)
class Value:
    """One documented value: its dotted key, its default (as values.yaml has it) and its description."""

    key: str
    default: Any
    description: str


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def values_of(text: str) -> list[Value]:
    """The documented values of a values.yaml, in file order; ``ValueError`` naming any undocumented key."""
    tree = yaml.safe_load(text) or {}
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        if (doc := _DOC.match(line)) is not None:
            pending = [doc["text"]]
            continue
        if pending is not None and (more := _MORE.match(line)) is not None:
            pending.append(more["text"] or "")
            continue
        if (found := _KEY.match(line)) is None:
            pending = None if not line.strip() or line.lstrip().startswith("#") else pending
            continue
        indent = len(found["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, found["key"]))
        if pending is not None:
            docs[".".join(k for _, k in stack)] = " ".join(" ".join(pending).split())
            pending = None
    missing = [leaf for leaf in _leaves(tree) if leaf not in docs]
    if missing:
        raise ValueError(f"values.yaml keys without a '# --' description: {', '.join(missing)}")
    out = []
    for key, description in docs.items():
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        out.append(Value(key, node, description))
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def values_table(chart: Path = CHART) -> str:
    """The markdown table: key, default, meaning — one row per documented value, in file order."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for value in values_of((chart / "values.yaml").read_text()):
        default = json.dumps(value.default, separators=(", ", ": "))
        lines.append(f"| `{value.key}` | `{_cell(default)}` | {_cell(value.description)} |")
    return "\n".join(lines)


def render_readme(text: str, chart: Path = CHART) -> str:
    """``text`` with the table between the markers replaced by the current one."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the chart's README has no values table markers ({BEGIN!r} ... {END!r})")
    return text[:start + len(BEGIN)] + "\n" + values_table(chart) + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccm.chartdocs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not current; write nothing")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args(argv)
    readme = args.chart / "README.md"
    text = readme.read_text()
    fresh = render_readme(text, args.chart)
    if fresh == text:
        return 0
    if args.check:
        print(f"{readme}: the values table is out of date; run `make docs`", file=sys.stderr)
        return 1
    readme.write_text(fresh)
    print(f"{readme}: values table regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
