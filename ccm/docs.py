"""The README's configuration table, generated from :class:`ccm.config.Settings` so the two cannot drift.

``python -m ccm.docs`` (``make docs``) rewrites the table between its markers in README.md; ``--check`` only says
whether it is current (the unit test does the same).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic.fields import FieldInfo

from ccm.config import DURATION_FIELDS, Settings, env_name, flag_name

__all__ = ["BEGIN", "END", "README", "format_duration", "render_readme", "settings_table"]

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- settings table: generated from ccm/config.py by `make docs` (python -m ccm.docs); do not edit -->"
END = "<!-- end of settings table -->"


def format_duration(seconds: float) -> str:
    """``300.0`` → ``5m``, ``2.0`` → ``2s``, ``0.25`` → ``250ms``: as the settings accept them."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds == 0:
        return "0s"
    if (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def default_text(name: str, info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "see meaning"
    value = info.default
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if name in DURATION_FIELDS and isinstance(value, int | float):
        return f"`{format_duration(float(value))}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """The markdown table: env var, flag, default, meaning — one row per setting, in declaration order."""
    lines = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        lines.append(f"| `{env_name(name)}` | `{flag_name(name)}` | {default_text(name, info)} | "
                     f"{_cell(info.description or '')} |")
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """``text`` with the table between the markers replaced by the current one."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no settings table markers ({BEGIN!r} ... {END!r})")
    return text[:start + len(BEGIN)] + "\n" + settings_table() + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccm.docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not current; write nothing")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    fresh = render_readme(text)
    if fresh == text:
        return 0
    if args.check:
        print(f"{args.readme}: the settings table is out of date; run `make docs`", file=sys.stderr)
        return 1
    args.readme.write_text(fresh)
    print(f"{args.readme}: settings table regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
