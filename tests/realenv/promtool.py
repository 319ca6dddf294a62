"""Check and unit-test Prometheus rules with the real ``promtool`` (built from the Go module proxy by
scripts/build-promtool.sh, cached per machine like kustomize and Helm).

``$CCM_PROMTOOL_BIN`` names a prebuilt binary instead.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

__all__ = ["PromtoolError", "promtool", "promtool_binary"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-promtool.sh"
ENV_BINARY = "CCM_PROMTOOL_BIN"


class PromtoolError(RuntimeError):
    """promtool could not be built."""


@functools.cache
def promtool_binary() -> Path:
    """The promtool binary: ``$CCM_PROMTOOL_BIN``, else the build script's (cached) output."""
    env = os.environ.get(ENV_BINARY)
    if env:
        return Path(env)
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True,
                          check=False, timeout=2400)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise PromtoolError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    return Path(lines[-1])


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args`` (never raises on its exit code: the caller asserts on it with the output)."""
    return subprocess.run([str(promtool_binary()), *args], capture_output=True, text=True, check=False, timeout=120,
                          cwd=cwd)
