"""Check and unit-test Prometheus rules with the real ``promtool`` (built from the Go module proxy by
scripts/build-promtool.sh, cached per machine like kustomize and Helm).

``$CCM_PROMTOOL_BIN`` names a prebuilt binary instead.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from tests.realenv.gotools import go_tool_binary

__all__ = ["PromtoolError", "promtool", "promtool_binary"]


class PromtoolError(RuntimeError):
    """promtool could not be built."""


@functools.cache
def promtool_binary() -> Path:
    """The promtool binary: ``$CCM_PROMTOOL_BIN``, else the build script's (cached) output."""
    return go_tool_binary("build-promtool.sh", "CCM_PROMTOOL_BIN", PromtoolError, timeout=2400)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args`` (never raises on its exit code: the caller asserts on it with the output)."""
    return subprocess.run([str(promtool_binary()), *args], capture_output=True, text=True, check=False, timeout=120,
                          cwd=cwd)
