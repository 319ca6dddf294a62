"""What the benchmark ran on: machine, Python, Kubernetes and library versions, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def kubernetes_version() -> str:
    """The k8s.io/kubernetes version the test kube-apiserver is built from (tests/kube-apiserver/go.mod)."""
    try:
        for line in (REPO_ROOT / "tests" / "kube-apiserver" / "go.mod").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["k8s.io/kubernetes"] and len(parts) > 1:
                return parts[1]
            if len(parts) > 1 and parts[0] == "require" and parts[1] == "k8s.io/kubernetes":
                return parts[2]
    except OSError:
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    mem = psutil.virtual_memory().total
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kubernetes": kubernetes_version(),
        "libraries": {d: _version(d) for d in ("kubernetes_asyncio", "aiohttp", "prometheus-client", "structlog",
                                               "pydantic", "psutil")},
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
