"""The Go-built tools the tests run for real (kustomize, Helm, promtool): each built once per machine from the Go
module proxy by its ``scripts/build-<tool>.sh`` and cached, like the test kube-apiserver, or named by an environment
variable that points at a prebuilt binary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["go_tool_binary"]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def go_tool_binary(script: str, env_binary: str, error: type[Exception], *, timeout: float) -> Path:
    """``$env_binary`` if set, else the path ``scripts/<script>`` prints last (building the tool on a cold cache).

    Raises ``error`` when the build script fails or prints no path.
    """
    env = os.environ.get(env_binary)
    if env:
        return Path(env)
    build_script = SCRIPTS / script
    proc = subprocess.run(["bash", str(build_script)], stdout=subprocess.PIPE, stderr=None, text=True,
                          check=False, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise error(f"{build_script} failed with exit code {proc.returncode}")
    return Path(lines[-1])
