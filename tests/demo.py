"""A local demo: a real kube-apiserver, a real Keycloak and the CloudSigma emulator with a handful of tainted
nodes, and ``cloudsigma-ccm`` initializing them through an impersonated token. Run: ``make demo``.

Everything listens on 127.0.0.1 and is torn down at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.emulator import (
    EmulatorServer,
    EmulatorState,
    private_vlan_nic,
    public_dhcp_nic,
    public_static_nic,
)
from tests.integration.harness import addresses, node_json, taint_keys
from tests.realenv.keycloak import Keycloak
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node

UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
OWNER = "owner@example.com"


def row(name: str, node: dict[str, object]) -> str:
    spec = node.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}  # type: ignore[union-attr]
    state = "tainted" if UNINIT in taint_keys(node) else "initialized"  # type: ignore[arg-type]
    addrs = ", ".join(f"{t}={a}" for t, a in sorted(addresses(node)) if t != "Hostname")  # type: ignore[arg-type]
    itype = labels.get("node.kubernetes.io/instance-type", "")
    return f"  {name:<10} {state:<12} {spec.get('providerID', '') or '-':<50} {itype:<20} {addrs}"  # type: ignore[union-attr]


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ccm-demo-"))
    print(f"[demo] work dir {work}")
    kube = KubeAPIServer("demo")
    keycloak = Keycloak(work / "keycloak")
    state = EmulatorState()
    proc: asyncio.subprocess.Process | None = None
    try:
        print("[demo] starting kube-apiserver and Keycloak (first run builds/downloads them: minutes)")
        await asyncio.gather(asyncio.to_thread(kube.start), keycloak.start())
        await keycloak.add_user(OWNER, "owner-password-1")
        state.add_user(OWNER, password="not-used")
        state.jwks_url = keycloak.jwks_url
        shapes = [[public_dhcp_nic("auto")], [public_static_nic("185.12.5.10")],
                  [public_dhcp_nic("auto", ip_v6="2a03:b0c0::10")],
                  [public_dhcp_nic("auto"), private_vlan_nic("5bc05e7e-6555-4f40-add8-3b8e91447702")],
                  [public_dhcp_nic("auto")]]
        for i, nics in enumerate(shapes):
            state.add_server(OWNER, f"worker-{i}", cpu=2000 * (i + 1), smp=i + 1, mem=(i + 1) * 2 * 1024**3, nics=nics)
        async with EmulatorServer(state) as emulator:
            api = await api_client_for(kube.admin_kubeconfig)
            for i in range(len(shapes)):
                extra = {"addresses": [("InternalIP", "10.20.0.3")]} if i == 3 else {}
                await register_node(api, f"worker-{i}", **extra)  # type: ignore[arg-type]
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_")}
            env.update({
                "CLOUDSIGMA_IMPERSONATION_ENABLED": "true", "CLOUDSIGMA_OAUTH_URL": keycloak.issuer,
                "CLOUDSIGMA_CLIENT_ID": keycloak.client_id, "CLOUDSIGMA_CLIENT_SECRET": keycloak.client_secret,
                "CLOUDSIGMA_TOKEN_AUDIENCE": keycloak.audience, "CLOUDSIGMA_USER_EMAIL": OWNER,
                "CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_IMPERSONATION_API_URL": emulator.api_url,
                "CLOUDSIGMA_KUBECONFIG": str(kube.admin_kubeconfig), "CLOUDSIGMA_LEADER_ELECT": "false",
                "CLOUDSIGMA_METRICS_BIND_ADDRESS": "127.0.0.1:0", "CLOUDSIGMA_LOG_FORMAT": "console",
            })
            binary = shutil.which("cloudsigma-ccm", path=str(Path(sys.executable).parent)) or "cloudsigma-ccm"
            log_path = work / "ccm.log"
            print(f"[demo] starting {binary} (logs: {log_path})")
            with log_path.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(binary, env=env, stdout=log, stderr=log)
                started = time.monotonic()
                while True:
                    nodes = {f"worker-{i}": await node_json(api, f"worker-{i}") for i in range(len(shapes))}
                    print(f"[demo] t={time.monotonic() - started:4.1f}s")
                    for name, node in nodes.items():
                        print(row(name, node))
                    if all(UNINIT not in taint_keys(n) for n in nodes.values()):
                        print("[demo] every node initialized")
                        break
                    if time.monotonic() - started > 90:
                        print("[demo] gave up after 90 s; see the CCM log")
                        return 1
                    await asyncio.sleep(1)
            await api.close()
        return 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await keycloak.stop()
        kube.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
