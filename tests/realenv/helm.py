"""Lint and render the chart with the real Helm v4 (built from the Go module proxy by scripts/build-helm.sh, cached
per machine like kustomize) — what ``helm install`` would send, not an imitation of it.

``$CCM_HELM_BIN`` names a prebuilt binary instead (it must be Helm v4).
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.realenv.gotools import go_tool_binary

__all__ = ["CHART", "HelmError", "helm", "helm_binary", "template"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "cloudsigma-ccm"

Obj = dict[str, Any]


class HelmError(RuntimeError):
    """Helm could not be built, or refused the chart."""


@functools.cache
def helm_binary() -> Path:
    """The helm binary: ``$CCM_HELM_BIN``, else the build script's (cached) output."""
    return go_tool_binary("build-helm.sh", "CCM_HELM_BIN", HelmError, timeout=1800)


def helm(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with ``args``; its config, cache and data directories are private (``home``, else a throwaway one
    under the system temp dir), so nothing of the user's Helm setup leaks in or is written to."""
    base = home if home is not None else Path(os.environ.get("TMPDIR", "/tmp")) / f"ccm-helm-{os.getuid()}"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(base), "HELM_CONFIG_HOME": str(base / "config"),
           "HELM_CACHE_HOME": str(base / "cache"), "HELM_DATA_HOME": str(base / "data")}
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, check=False, timeout=120,
                          env=env)


def template(values: Sequence[Path] = (), *, namespace: str = "default", release: str = "cloudsigma-ccm",
             chart: Path = CHART, set_values: Sequence[str] = ()) -> list[Obj]:
    """``helm template``: the objects the chart renders with these values files (in order) and ``--set``s."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    proc = helm(*args)
    if proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)}: {proc.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj is not None]
