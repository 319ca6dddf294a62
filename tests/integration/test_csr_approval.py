"""Kubelet-serving CSR approval against the real kube-apiserver and the CloudSigma emulator.

The CSRs are real: keys and PKCS#10 requests are generated here, and each is created by the node's own identity
(a client certificate for ``system:node:<name>`` in ``system:nodes``), so the API server itself sets the
requestor the approver checks. The CCM runs in-process with ``--csr-approval``; the only thing it is told is
its settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.csr.apply import APPROVED_REASON, CSRS, DENIED_REASON
from ccm.csr.controller import CSRController
from ccm.kube.errors import Forbidden, KubeNotFound
from ccm.kube.permissions import TENANT, needed
from ccm.kube.transport import KubeTransport
from ccm.workqueue import WorkQueue
from tests.emulator import EmulatorServer, EmulatorState, private_vlan_nic, public_dhcp_nic, public_static_nic
from tests.integration.harness import ALICE, events_for, node_json, running_ccm, taint_keys
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.kustomize import render
from tests.realenv.nodes import register_node, wait_for
from tests.unit.csr_factories import ECDSA_USAGES, RSA_USAGES, create_body, request_pem

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes", "clean_csrs", "nodes_may_request")]

UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
REPO = Path(__file__).resolve().parents[2]
CSR_RBAC = REPO / "deploy" / "tenant" / "csr-approval"
TENANT_RBAC = REPO / "deploy" / "tenant" / "without-deletion"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
RBAC_PATHS = {"ClusterRole": f"{RBAC}/clusterroles", "ClusterRoleBinding": f"{RBAC}/clusterrolebindings"}


def rbac_path(obj: dict[str, Any]) -> str:
    """The collection of an RBAC object: cluster-wide, or its namespace's (the events Role)."""
    kind = obj["kind"]
    if kind in RBAC_PATHS:
        return RBAC_PATHS[kind]
    return f"{RBAC}/namespaces/{obj['metadata']['namespace']}/{kind.lower()}s"
A_IP, B_IP = "94.26.101.20", "185.12.5.21"
NODES_MAY_REQUEST = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
    "metadata": {"name": "test-nodes-request-certificates"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-bootstrapper"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
}


@pytest.fixture
async def clean_csrs(kube_api: ApiClient) -> AsyncIterator[None]:
    kube = KubeTransport(kube_api)
    await kube.request("DELETE", CSRS)
    yield
    await kube.request("DELETE", CSRS)


@pytest.fixture
async def nodes_may_request(kube_api: ApiClient) -> AsyncIterator[None]:
    """What a cluster grants its kubelets (kubeadm binds the same role): creating and reading CSRs."""
    kube = KubeTransport(kube_api)
    path = RBAC_PATHS["ClusterRoleBinding"]
    with contextlib.suppress(KubeNotFound):
        await kube.request("DELETE", f"{path}/test-nodes-request-certificates")
    await kube.request("POST", path, body=NODES_MAY_REQUEST)
    yield
    await kube.request("DELETE", f"{path}/test-nodes-request-certificates")


class Kubelet:
    """Creates CSRs as ``system:node:<name>`` (what the kubelet's certificate manager does)."""

    def __init__(self, apiserver: KubeAPIServer, name: str) -> None:
        self.name = name
        self._kubeconfig = apiserver.kubeconfig(f"system:node:{name}", ["system:nodes"])

    async def request(self, *, dns: Sequence[str] | None = None, ips: Sequence[str] = (), cn: str | None = None,
                      usages: Sequence[str] = ECDSA_USAGES, key: str = "p256") -> str:
        name = f"csr-{self.name}-{uuid.uuid4().hex[:8]}"
        pem = request_pem(self.name, cn=cn, dns=dns if dns is not None else (self.name,), ips=ips, key=key)
        api = await api_client_for(self._kubeconfig)
        try:
            created = await KubeTransport(api).request("POST", CSRS, body=create_body(pem, name, usages=usages))
        finally:
            await api.close()
        assert created["spec"]["username"] == f"system:node:{self.name}"  # set by the API server, not by us
        return name


async def csr(api: ApiClient, name: str) -> dict[str, Any]:
    return await KubeTransport(api).request("GET", f"{CSRS}/{name}")


async def condition(api: ApiClient, name: str) -> dict[str, Any] | None:
    conditions = (await csr(api, name)).get("status", {}).get("conditions") or []
    return conditions[0] if conditions else None


async def event(api: ApiClient, node: str, reason: str, csr_name: str) -> dict[str, Any] | None:
    found = [e for e in await events_for(api, node) if e["reason"] == reason and csr_name in e["message"]]
    return found[0] if found else None


async def initialized(api: ApiClient, name: str) -> bool:
    return UNINIT not in taint_keys(await node_json(api, name))


def decided(logs: list[dict[str, Any]], csr_name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "csr_decided" and e["csr"] == csr_name]


@contextlib.asynccontextmanager
async def two_nodes(world: EmulatorState, emulator: EmulatorServer, apiserver: KubeAPIServer, api: ApiClient,
                    kubeconfig: Path | None = None, **settings: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """csr-a (public DHCP address) and csr-b (static address) initialized by a CCM with CSR approval on;
    yields the captured log lines."""
    world.add_server(ALICE, "csr-a", nics=[public_dhcp_nic(A_IP)])
    world.add_server(ALICE, "csr-b", nics=[public_static_nic(B_IP)])
    for name in ("csr-a", "csr-b"):
        await register_node(api, name)
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kubeconfig or apiserver.admin_kubeconfig, emulator,
                               **({"csr_approval": "approve"} | settings)):
            for name in ("csr-a", "csr-b"):
                await wait_for(lambda n=name: initialized(api, n), 20)  # type: ignore[misc]
            yield logs


async def test_valid_request_is_approved(world: EmulatorState, emulator: EmulatorServer,
                                         kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "csr-v", nics=[public_dhcp_nic(A_IP)])
    await register_node(kube_api, "csr-v")
    with structlog.testing.capture_logs() as logs:
        # A long cache age: the snapshot that initialized the node could still answer — it must not approve.
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, csr_approval="approve",
                               server_cache_max_age="30s"):
            await wait_for(lambda: initialized(kube_api, "csr-v"), 20)
            name = await Kubelet(kube_apiserver, "csr-v").request(ips=[A_IP])
            cond = await wait_for(lambda: condition(kube_api, name), 15)
            approved = await wait_for(lambda: event(kube_api, "csr-v", "CertificateApproved", name), 10)
            created = datetime.fromisoformat((await csr(kube_api, name))["metadata"]["creationTimestamp"]
                                             .replace("Z", "+00:00")).timestamp()
    # An approval cannot be undone: it was decided from a listing that started after the CSR existed.
    listings = [r for r in world.requests_to("GET /servers/detail/") if r.status == 200]
    assert any(r.started_at > created + 1.0 for r in listings), "approved from a listing older than the CSR"
    assert cond["type"] == "Approved" and cond["status"] == "True"
    assert cond["reason"] == APPROVED_REASON and server["uuid"] in cond["message"]
    assert approved["type"] == "Normal"
    [line] = decided(logs, name)
    assert line["verdict"] == "approved" and line["server_uuid"] == server["uuid"]
    assert line["requestor"] == "system:node:csr-v"
    used = [r for r in listings if r.request_id in line["evidence_request_ids"]]
    assert used and used[0].started_at > created + 1.0 and line["evidence_age_s"] >= 0


BAD_REQUESTS = {
    # id: (request arguments for csr-a, the check that must fail)
    "wrong-ip": ({"ips": ["94.26.101.99"]}, "ip-san"),
    "other-nodes-ip": ({"ips": [B_IP]}, "ip-san"),
    "foreign-dns-name": ({"dns": ["csr-a", "kubernetes.default.svc"], "ips": [A_IP]}, "dns-san"),
    "another-nodes-identity": ({"cn": "system:node:csr-b", "dns": ["csr-b"], "ips": [B_IP]}, "subject"),
    # A serving request that also asks for client auth: the certificate would authenticate as the node.
    "client-auth-usage": ({"ips": [A_IP], "usages": [*ECDSA_USAGES, "client auth"]}, "usages"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
async def test_bad_request_is_left_pending_with_event_and_log(
        case: str, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient) -> None:
    args, check = BAD_REQUESTS[case]
    async with two_nodes(world, emulator, kube_apiserver, kube_api) as logs:
        name = await Kubelet(kube_apiserver, "csr-a").request(**args)
        warning = await wait_for(lambda: event(kube_api, "csr-a", "CertificateLeftPending", name), 15)
        # One decision per CSR: a change to it (here a label, as a human reviewing it might add) decides nothing.
        await KubeTransport(kube_api).request("PATCH", f"{CSRS}/{name}", content_type="application/merge-patch+json",
                                              body={"metadata": {"labels": {"reviewed": "no"}}})
        await asyncio.sleep(0.5)
        assert await condition(kube_api, name) is None  # still pending: neither approved nor denied
    assert warning["type"] == "Warning" and f"check {check} failed" in warning["message"]
    [line] = decided(logs, name)
    assert (line["verdict"], line["check"], line["log_level"]) == ("pending", check, "warning")
    assert line["reason"] in warning["message"]


async def test_deny_mode_denies_a_bad_request(world: EmulatorState, emulator: EmulatorServer,
                                              kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    async with two_nodes(world, emulator, kube_apiserver, kube_api, csr_approval="approve-or-deny"):
        kubelet = Kubelet(kube_apiserver, "csr-b")
        bad = await kubelet.request(ips=["203.0.113.7"])
        good = await kubelet.request(ips=[B_IP], key="rsa2048", usages=RSA_USAGES)
        denied = await wait_for(lambda: condition(kube_api, bad), 15)
        approved = await wait_for(lambda: condition(kube_api, good), 15)
        await wait_for(lambda: event(kube_api, "csr-b", "CertificateDenied", bad), 10)
    assert (denied["type"], denied["reason"]) == ("Denied", DENIED_REASON)
    assert "ip-san" in denied["message"] and "203.0.113.7" in denied["message"]
    assert approved["type"] == "Approved"


async def test_kubelet_internal_ip_on_a_private_vlan_is_approved(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "csr-vlan", nics=[public_static_nic("185.12.5.30"),
                                              private_vlan_nic("5bc05e7e-6555-4f40-add8-3b8e91447702")])
    await register_node(kube_api, "csr-vlan", addresses=[("InternalIP", "10.10.0.7"), ("Hostname", "csr-vlan")],
                        provided_node_ip="10.10.0.7")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, csr_approval="approve"):
        await wait_for(lambda: initialized(kube_api, "csr-vlan"), 20)
        name = await Kubelet(kube_apiserver, "csr-vlan").request(ips=["10.10.0.7", "185.12.5.30"])
        cond = await wait_for(lambda: condition(kube_api, name), 15)
    assert cond["type"] == "Approved"


async def test_request_waits_for_initialization_then_is_approved(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    """A CSR that arrives before its node is initialized waits (never denied), and is decided again as soon as
    the node is initialized — not when its backoff (two minutes here) runs out."""
    await register_node(kube_api, "csr-late")  # its server does not exist yet: the node stays tainted
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="0.5s") as ccm:
        parts = ccm.parts
        assert parts.csr is None  # off unless chosen: the daemon runs no approver of its own here
        # The daemon's transport declares no CSR requests with the setting off: the approver gets its own.
        kube = KubeTransport(parts.tenant, permissions=needed(TENANT, deletion_enabled=True, csr_approval=True))
        approver = CSRController(kube=kube, nodes=parts.watcher, cache=parts.cache, events=parts.events,
                                 metrics=parts.metrics, deny=True, queue=WorkQueue(base_delay=120, max_delay=120))
        task = asyncio.create_task(approver.run())
        try:
            name = await Kubelet(kube_apiserver, "csr-late").request(ips=[A_IP])
            waiting = await wait_for(lambda: event(kube_api, "csr-late", "CertificateWaiting", name), 15)
            assert "check initialized" in waiting["message"]
            assert await condition(kube_api, name) is None  # waiting is never denying
            assert approver.queue.delayed == 1  # retried in ~2 minutes
            world.add_server(ALICE, "csr-late", nics=[public_dhcp_nic(A_IP)])
            await wait_for(lambda: initialized(kube_api, "csr-late"), 20)
            cond = await wait_for(lambda: condition(kube_api, name), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert cond["type"] == "Approved"


async def test_new_dhcp_address_is_looked_up_before_saying_no(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    """The kubelet asks for its new address right after a DHCP change; the snapshot may predate it."""
    server = world.add_server(ALICE, "csr-dhcp", nics=[public_dhcp_nic(A_IP)])
    await register_node(kube_api, "csr-dhcp")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, csr_approval="approve",
                           server_cache_max_age="1h", node_status_update_frequency="1h") as ccm:
        await wait_for(lambda: initialized(kube_api, "csr-dhcp"), 20)
        snapshot = ccm.parts.cache.current
        assert snapshot is not None and A_IP in str(snapshot.by_uuid[server["uuid"]].nics)
        world.set_server_ip(server["uuid"], "94.26.101.77")
        name = await Kubelet(kube_apiserver, "csr-dhcp").request(ips=["94.26.101.77"])
        cond = await wait_for(lambda: condition(kube_api, name), 15)
    assert cond["type"] == "Approved"


# ------------------------------------------------------------------------------------------------ RBAC


async def apply_rbac(kube: KubeTransport, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        path = rbac_path(obj)
        with contextlib.suppress(KubeNotFound):
            await kube.request("DELETE", f"{path}/{obj['metadata']['name']}")
        await kube.request("POST", path, body=obj)


async def remove_rbac(kube: KubeTransport, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        with contextlib.suppress(KubeNotFound):
            await kube.request("DELETE", f"{rbac_path(obj)}/{obj['metadata']['name']}")


async def test_rbac_component_is_enough_and_approves_only_kubelet_serving(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    """The CCM's tenant identity with deploy/tenant/without-deletion + deploy/tenant/csr-approval: it approves a
    kubelet-serving CSR; the API server refuses it the approval of any other signer's CSR."""
    admin = KubeTransport(kube_api)
    rbac = render(TENANT_RBAC) + render(CSR_RBAC)
    identity = kube_apiserver.kubeconfig("cloudsigma-ccm")
    ccm_api = await api_client_for(identity)
    try:
        with pytest.raises(Forbidden):  # off unless chosen: without the component, no CSR is even visible
            await KubeTransport(ccm_api).request("GET", CSRS)
        await apply_rbac(admin, rbac)
        await wait_for(lambda: KubeTransport(ccm_api).request("GET", CSRS), 15)
        async with two_nodes(world, emulator, kube_apiserver, kube_api, kubeconfig=identity):
            name = await Kubelet(kube_apiserver, "csr-a").request(ips=[A_IP])
            cond = await wait_for(lambda: condition(kube_api, name), 15)
        assert cond["type"] == "Approved"

        # A client-certificate CSR (another signer) by the same node: the CCM's identity may not approve it.
        pem = request_pem("csr-a", dns=(), ips=())
        body = create_body(pem, "csr-client-test", usages=["digital signature", "client auth"],
                           signer="kubernetes.io/kube-apiserver-client")
        created = await admin.request("POST", CSRS, body=body)
        approval = {**created, "status": {"conditions": [
            {"type": "Approved", "status": "True", "reason": "Test", "message": "test"}]}}
        with pytest.raises(Forbidden, match="kube-apiserver-client"):
            await KubeTransport(ccm_api).request("PUT", f"{CSRS}/csr-client-test/approval", body=approval)
    finally:
        await ccm_api.close()
        await remove_rbac(admin, rbac)
