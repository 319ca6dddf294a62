"""Run the daemon with the packages of the production image, not the development venv's extras.

The image installs ``requirements/runtime.txt`` only. The development venv also holds tools' dependencies, and a
library that *probes* for an optional package picks it up: structlog imports ``rich`` (+3.4 MiB, pulled in by
import-linter) for pretty tracebacks when it is installed. A memory benchmark run from the venv would charge the
daemon for a package production never loads. :func:`runtime_pythonpath` returns a directory to put first on the
daemon's ``PYTHONPATH`` in which each such optional package, absent from the runtime lock, is a module that
raises ``ImportError`` — as if it were not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = REPO_ROOT / "requirements" / "runtime.txt"
#: Optional packages that the runtime libraries import when present (structlog's dev helpers), by distribution name
#: and the top-level module to hide.
PROBED = {"rich": "rich", "better-exceptions": "better_exceptions", "colorama": "colorama"}


def runtime_distributions(lock: Path = RUNTIME_LOCK) -> set[str]:
    """Distribution names pinned in the runtime lock (``name==version`` lines), normalised."""
    names = set()
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def hidden_packages(lock: Path = RUNTIME_LOCK) -> list[str]:
    """The probed packages installed here that the production image does not have."""
    runtime = runtime_distributions(lock)
    return sorted(module for dist, module in PROBED.items()
                  if dist not in runtime and importlib.util.find_spec(module) is not None)


def runtime_pythonpath(lock: Path = RUNTIME_LOCK) -> tuple[str | None, list[str]]:
    """A directory hiding :func:`hidden_packages` (None when there is nothing to hide) and their names."""
    hidden = hidden_packages(lock)
    if not hidden:
        return None, []
    root = Path(tempfile.mkdtemp(prefix="ccm-runtime-image-"))
    for module in hidden:
        (root / f"{module}.py").write_text(
            f"raise ImportError({module!r} + ' is not in the production image (requirements/runtime.txt)')\n")
    return str(root), hidden


def apply_to_environ(lock: Path = RUNTIME_LOCK) -> list[str]:
    """Put the hiding directory first on ``PYTHONPATH`` of this process's environment, which the daemons it starts
    inherit; returns the hidden packages."""
    path, hidden = runtime_pythonpath(lock)
    if path is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)
    return hidden
