"""MetalLB's real CRDs (IPAddressPool, L2Advertisement) from its Go module, fetched once per machine by
scripts/fetch-metallb-crds.sh (``$CCM_METALLB_CRDS`` names a directory holding them instead), installed into a test
kube-apiserver: the objects the load-balancer controller writes are validated by MetalLB's own schemas."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ccm.kube.errors import Conflict
from ccm.kube.transport import KubeTransport
from tests.realenv.nodes import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "fetch-metallb-crds.sh"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
FILES = ("metallb.io_ipaddresspools.yaml", "metallb.io_l2advertisements.yaml")


@functools.cache
def crd_dir() -> Path:
    env = os.environ.get("CCM_METALLB_CRDS")
    if env:
        return Path(env)
    proc = subprocess.run(["bash", str(SCRIPT)], stdout=subprocess.PIPE, text=True, check=False, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{SCRIPT} failed with exit code {proc.returncode}")
    return Path(lines[-1])


def crds() -> list[dict[str, Any]]:
    return [yaml.safe_load((crd_dir() / name).read_text()) for name in FILES]


async def install_metallb_crds(kube: KubeTransport, namespace: str = "metallb-system") -> None:
    """Create MetalLB's CRDs and its namespace (once) and wait until both kinds are served."""
    for body in crds():
        with contextlib.suppress(Conflict):
            await kube.request("POST", CRDS, body=body)
    with contextlib.suppress(Conflict):
        await kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                              "metadata": {"name": namespace}})

    async def served() -> bool:
        for plural in ("ipaddresspools", "l2advertisements"):
            try:
                await kube.request("GET", f"/apis/metallb.io/v1beta1/namespaces/{namespace}/{plural}")
            except Exception:
                return False
        return True

    await wait_for(served, 30, message="MetalLB's CRDs to be served")
