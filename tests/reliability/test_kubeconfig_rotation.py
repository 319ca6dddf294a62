"""Kubeconfigs rotate without a restart: the tenant's client certificate, the management one, a token file.

Each kubeconfig is mounted as the kubelet mounts a Secret (:class:`~tests.realenv.secret_volume.SecretVolume`:
the ``..data`` symlink swap) and rotated while the daemon runs, on the real kube-apiserver. The old credential is
then made useless — the old client certificate expires, the old token's ServiceAccount is deleted — so only a
daemon that really switched keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import delete_all_nodes, register_node, wait_for
from tests.realenv.secret_volume import SecretVolume
from tests.reliability import registry
from tests.reliability.replicas import Replica, replicas
from tests.reliability.support import initialized, missing, running, wait_initialized

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
OLD_CERT_LIFETIME = 20.0


def _credential_material(kubeconfig_text: str) -> list[str]:
    """The base64 and decoded forms of the key and certificate: none may ever be logged."""
    user = yaml.safe_load(kubeconfig_text)["users"][0]["user"]
    out = []
    for key in ("client-certificate-data", "client-key-data"):
        if key in user:
            out.append(user[key])
            pem = base64.b64decode(user[key]).decode()
            out.extend(line for line in pem.splitlines() if len(line) > 40)
    return out


async def test_tenant_client_certificate_rotated_while_running(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
        tmp_path: Path) -> None:
    names = ["rotate-before", "rotate-during", "rotate-after"]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "secrets", "tenant kubeconfig: client certificate rotated while running",
        injected=f"the tenant kubeconfig (a Secret volume) starts with a certificate valid for "
                 f"{OLD_CERT_LIFETIME:g} s; a new one is swapped in (`..data` symlink) while the CCM runs; the "
                 "old one then expires; the watch reconnects every 3 s",
        verified="`kubeconfig_reloaded` naming the file (never its content) right after the next API call; nodes "
                 "registered before, during and after the expiry initialized; no failed reconcile, no failed watch "
                 "after the rotation; no certificate or key material in the log",
        faults=1, nodes_checked=len(names))
    user = "cloudsigma-ccm-rotating"
    volume = SecretVolume(tmp_path / "tenant-kubeconfig")
    old = kube_apiserver.fresh_kubeconfig_text(user, ["system:masters"],
                                               valid_for=timedelta(seconds=OLD_CERT_LIFETIME))
    expires = time.time() + OLD_CERT_LIFETIME
    volume.write({"kubeconfig": old})
    new = kube_apiserver.fresh_kubeconfig_text(user, ["system:masters"])
    for secret in _credential_material(old) + _credential_material(new):
        registry.add_secret(secret, "client certificate/key of a kubeconfig")
    async with running(volume.path("kubeconfig"), emulator, watch_timeout="3s") as ccm:
        await register_node(kube_api, names[0])
        await wait_initialized(kube_api, names[0])
        swapped = time.time()
        volume.write({"kubeconfig": new})
        await register_node(kube_api, names[1])
        await wait_initialized(kube_api, names[1])
        await asyncio.sleep(max(0.0, expires - time.time()) + 4.0)  # expired, and the watch reconnected since
        registered = time.monotonic()
        await register_node(kube_api, names[2])
        await wait_initialized(kube_api, names[2])
        after_expiry = time.monotonic() - registered
        assert ccm.alive
        reloaded = ccm.logs.named("kubeconfig_reloaded")
        events = list(ccm.logs.events)
        text = ccm.logs.text
        tenant = ccm.parts.tenant
    assert reloaded, "no kubeconfig_reloaded line"
    reload_seconds = datetime.fromisoformat(reloaded[0]["timestamp"].replace("Z", "+00:00")).timestamp() - swapped
    print(f"\nreloaded {reload_seconds:.2f} s after the swap; node initialized {after_expiry:.2f} s after "
          f"registration, {time.time() - expires:.1f} s after the old certificate expired")
    assert reloaded[0]["path"] == str(volume.path("kubeconfig")) and reloaded[0]["what"] == "tenant kubeconfig"
    assert getattr(tenant, "reloads", 0) == 1
    swap_index = next(i for i, e in enumerate(events) if e.get("event") == "watched_file_reloaded")
    later = events[swap_index:]
    failed = [e for e in later if e.get("event") == "node_reconciled" and e.get("action") == "error"]
    assert not failed, failed
    assert not [e for e in later if e.get("event") in ("node_watch_failed", "node_watch_crashed")]
    for secret in _credential_material(old) + _credential_material(new):
        assert secret not in text
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def _service_account_token(api: ApiClient, name: str) -> str:
    kube = KubeTransport(api)
    base = "/api/v1/namespaces/default/serviceaccounts"
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
    await kube.request("POST", base, body=body)
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"{name}-admin"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]}
    await kube.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body=binding)
    answer = await kube.request("POST", f"{base}/{name}/token", body={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    token: str = answer["status"]["token"]
    return token


async def _forget_service_account(api: ApiClient, name: str) -> None:
    kube = KubeTransport(api)
    await kube.request("DELETE", f"/api/v1/namespaces/default/serviceaccounts/{name}")
    await kube.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}-admin")


async def test_kubeconfig_token_file_rotated_while_running(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
        tmp_path: Path) -> None:
    names = ["token-file-before", "token-file-after"]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "secrets", "tenant kubeconfig with a tokenFile: token rotated while running",
        injected="the kubeconfig names `tokenFile: token` next to it (one Secret volume); the token (a real "
                 "ServiceAccount token) is replaced by another ServiceAccount's, then the first ServiceAccount is "
                 "deleted so its token is refused",
        verified="the next request uses the new token (node initialized after the old token stopped working); "
                 "`watched_file_reloaded` names the token file; the tokens never appear in the log",
        faults=1, nodes_checked=len(names))
    suffix = str(time.time_ns())[-8:]
    first, second = f"ccm-token-a-{suffix}", f"ccm-token-b-{suffix}"
    tokens = [await _service_account_token(kube_api, sa) for sa in (first, second)]
    for token in tokens:
        registry.add_secret(token, "ServiceAccount token in a tokenFile")
    ca = yaml.safe_load(kube_apiserver.admin_kubeconfig.read_text())["clusters"][0]["cluster"]
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": ca}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "sa"}}],
        "users": [{"name": "sa", "user": {"tokenFile": "token"}}]})
    volume = SecretVolume(tmp_path / "tenant")
    volume.write({"kubeconfig": kubeconfig, "token": tokens[0]})
    try:
        async with running(volume.path("kubeconfig"), emulator) as ccm:
            await register_node(kube_api, names[0])
            await wait_initialized(kube_api, names[0])
            volume.write({"kubeconfig": kubeconfig, "token": tokens[1]})
            await _forget_service_account(kube_api, first)
            await asyncio.sleep(1.5)  # the token file is looked at once a second at most
            await register_node(kube_api, names[1])
            await wait_initialized(kube_api, names[1])
            text = ccm.logs.text
            reloads = ccm.logs.named("watched_file_reloaded", what="kubeconfig token file")
            failed = [e for e in ccm.logs.named("node_reconciled") if e.get("action") == "error"]
    finally:
        await _forget_service_account(kube_api, second)
    assert reloads and reloads[0]["path"].endswith("/token")
    assert not failed, failed
    assert tokens[0] not in text and tokens[1] not in text
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_management_kubeconfig_rotated_while_leading(
        world: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer, tmp_path: Path) -> None:
    name = "rotate-management"
    world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "secrets", "management kubeconfig: client certificate rotated while leading",
        injected=f"the leader's management kubeconfig (a Secret volume) starts with a certificate valid for "
                 f"{OLD_CERT_LIFETIME:g} s; a new one is swapped in; the old one expires",
        verified="the process keeps leading past the expiry (no `leader_lost`, lease renewed with the new "
                 "certificate per the audit log), `kubeconfig_reloaded` names the management kubeconfig, and it "
                 "still initializes nodes",
        faults=1, nodes_checked=1)
    admin = await api_client_for(audited_apiserver.admin_kubeconfig)
    await delete_all_nodes(admin)  # the audited API server lives for the session
    await admin.close()
    replica = Replica("m1", audited_apiserver, emulator, tmp_path, lease="ccm-rotate-management",
                      management_valid_for=timedelta(seconds=OLD_CERT_LIFETIME))
    expires = time.time() + OLD_CERT_LIFETIME
    admin = await api_client_for(audited_apiserver.admin_kubeconfig)
    try:
        async with replicas(replica):
            await replica.start()
            await wait_for(replica.leading, 30, message="leading")
            replica.rotate_management()
            await asyncio.sleep(max(0.0, expires - time.time()) + 3.0)
            still_leading = await replica.leading()
            await register_node(admin, name)
            await wait_for(lambda: initialized(admin, name), 30, message="node initialized")
            reloaded = replica.events("kubeconfig_reloaded")
            lost_lines = replica.events("leader_lost")
    finally:
        await admin.close()
    renewals_after_expiry = [w for w in _lease_writes(audited_apiserver, replica.lease_user) if w > expires]
    assert still_leading and not lost_lines
    assert reloaded and reloaded[0]["what"] == "management kubeconfig"
    assert renewals_after_expiry, "no renewal after the old certificate expired"


def _lease_writes(server: KubeAPIServer, user: str) -> list[float]:
    from tests.reliability.replicas import audit_writes

    return [w.received for w in audit_writes(server) if w.user == user and w.resource == "leases" and w.code == 200]
