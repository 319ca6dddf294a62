"""The cloudsigma-ccm image, built for real by scripts/build-image.sh (buildah, base from Debian packages via
mmdebstrap, everything cached) and run with podman from the same image store.

In CI (``CI`` set) missing tools are a failure: .ci/run installs them. On a developer machine without them the
image tests are skipped with the command that installs them.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
TOOLS = {"buildah": "buildah", "podman": "podman", "mmdebstrap": "mmdebstrap", "runc": "runc",
         "flock": "util-linux"}

__all__ = ["Image", "build_image", "require_tools"]


@dataclass(frozen=True)
class Image:
    ref: str
    storage: tuple[str, ...]  # --root/--runroot/--storage-driver of the store the image is in

    def podman(self, subcommand: str, *args: str) -> list[str]:
        """A podman command line on the image's store.

        runc with the cgroupfs manager: crun (podman's default here) refuses the hybrid cgroup layout of these
        machines. Explicit ulimits: podman's defaults (nofile 1048576) exceed this sandbox's limits, and raising a
        limit needs CAP_SYS_RESOURCE, which root does not have here.
        """
        command = ["podman", *self.storage, "--cgroup-manager", "cgroupfs", "--runtime", "runc",
                   "--events-backend", "none", subcommand]
        if subcommand in ("run", "create"):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            nofile = 65536 if soft == resource.RLIM_INFINITY else min(soft, 65536)
            command += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
        return [*command, *args]


def require_tools() -> None:
    missing = sorted(package for tool, package in TOOLS.items() if shutil.which(tool) is None)
    if not missing:
        return
    message = f"image tools missing: apt-get install {' '.join(missing)}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run must install them)")
    pytest.skip(f"{message}; CI runs these tests")


def build_image() -> Image:
    """Build (cached) and return the image. The tag is per checkout, so worktrees sharing the store don't mix."""
    require_tools()
    ref = f"localhost/cloudsigma-ccm:test-{hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:8]}"
    # Build output goes to stderr (shown by pytest when a test fails); stdout is the image reference.
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), ref], stdout=subprocess.PIPE, stderr=None, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, f"{BUILD_SCRIPT} failed with exit code {proc.returncode}"
    assert proc.stdout.strip().splitlines()[-1] == ref
    storage = subprocess.run(["bash", str(BUILD_SCRIPT), "--storage-options"], capture_output=True, text=True,
                             check=True).stdout.split()
    return Image(ref, tuple(storage))
