"""Kubernetes API faults with a real kube-apiserver: restart mid-run, 409 conflicts, 410 Gone on the watch, and
races with other writers — a Node re-registered under a new uid, an address the kubelet writes meanwhile: every
write carries the uid and resourceVersion it was decided from."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from ccm.kube import patching
from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, private_vlan_nic, public_dhcp_nic, public_static_nic
from tests.integration.harness import ALICE, addresses, node_json, taint_keys
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import get_node, patch_node_status, register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import UNINIT, initialized, missing, retry_kube, running, wait_initialized

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]


def server_for(world: EmulatorState, name: str) -> dict[str, Any]:
    return world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])


async def test_apiserver_restart_mid_run(world: EmulatorState, emulator: EmulatorServer,
                                         kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server_for(world, "restart-before")
    await register_node(kube_api, "restart-before")
    await register_node(kube_api, "restart-pending")  # its server appears only while the API server is down
    names = ["restart-before", "restart-pending", "restart-after-1", "restart-after-2"]
    registry.record("fault/kubernetes", "API server restarted mid-run",
                    injected="kube-apiserver stopped and started again (1 s down) while the CCM watches",
                    verified="watch restarted (`node_watch_failed` lines with retry_in, restart metric); nodes "
                             "registered right after the restart and later initialized; a node waiting for its "
                             "server across the restart initialized; daemon running",
                    faults=1, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator, watch_timeout="60s") as ccm:
        await wait_for(lambda: initialized(kube_api, "restart-before"), 20)
        restarts = ccm.parts.watcher.restarts
        server_for(world, "restart-pending")
        server_for(world, "restart-after-1")
        server_for(world, "restart-after-2")
        await kube_apiserver.arestart(downtime=1.0)
        # right after the restart: the CCM's watch is still reconnecting (with backoff) when this node appears
        await retry_kube(lambda: register_node(kube_api, "restart-after-1"))
        await wait_for(lambda: initialized(kube_api, "restart-after-1"), 45, message="node registered at restart")
        await register_node(kube_api, "restart-after-2")
        await wait_for(lambda: initialized(kube_api, "restart-after-2"), 20, message="node registered afterwards")
        await wait_for(lambda: initialized(kube_api, "restart-pending"), 45, message="work pending across restart")
        assert ccm.alive
        assert ccm.parts.watcher.restarts > restarts
        error_restarts = ccm.metric(ccm.parts.metrics.watch_restarts, "error")
        failed = ccm.logs.named("node_watch_failed")
    assert error_restarts >= 1
    assert failed and all(f.get("retry_in") is not None for f in failed)
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_conflicts_from_a_concurrent_writer_are_retried(world: EmulatorState, emulator: EmulatorServer,
                                                              kube_apiserver: KubeAPIServer,
                                                              kube_api: ApiClient) -> None:
    server_for(world, "contended")
    await register_node(kube_api, "contended")
    registry.record("fault/kubernetes", "409 conflicts from a concurrent writer",
                    injected="3 concurrent label writes, each just before the CCM's resourceVersion-guarded patch",
                    verified="3 `node_write_conflict` lines, re-read and re-planned; node initialized; all 3 of the "
                             "other writer's labels kept",
                    faults=3, nodes_checked=1)
    other = KubeTransport(kube_api)
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        original = ccm.parts.kube.request
        raced: list[str] = []

        async def racing_request(method: str, path: str, **kw: Any) -> Any:
            # Just before each of our first three metadata patches another writer changes the node: real 409s.
            if method == "PATCH" and path.endswith("/contended") and len(raced) < 3:
                node = await node_json(kube_api, "contended")
                label = f"writer-{len(raced)}"
                await patching.patch_node(other, "contended", resource_version=node["metadata"]["resourceVersion"],
                                          labels={label: "was-here"})
                raced.append(label)
            return await original(method, path, **kw)

        ccm.parts.kube.request = racing_request  # type: ignore[method-assign]
        node = await wait_for(lambda: initialized(kube_api, "contended"), 20)
        assert ccm.alive
        conflicts = ccm.logs.named("node_write_conflict", node="contended")
    assert len(raced) == 3
    assert len(conflicts) == 3, f"{len(conflicts)} conflicts logged"
    labels = node["metadata"]["labels"]
    assert all(labels.get(label) == "was-here" for label in raced), "a concurrent writer's change was lost"
    lost = await missing(kube_api, ["contended"])
    registry.lost(len(lost))
    assert not lost


async def test_watch_410_gone_relists_without_missing_a_node(world: EmulatorState, emulator: EmulatorServer,
                                                             expiring_apiserver: KubeAPIServer) -> None:
    names = [f"gone-{i}" for i in range(3)]
    for name in names:
        server_for(world, name)
    registry.record("fault/kubernetes", "410 Gone on the watch",
                    injected="API server compacting etcd every second, watches served from etcd: every resumed "
                             "watch expires",
                    verified="relisted on every 410 (≥ 2, `node_watch_expired`); nodes registered between "
                             "relists all initialized, none missed",
                    faults=1, nodes_checked=len(names))
    api = await api_client_for(expiring_apiserver.admin_kubeconfig)
    try:
        await register_node(api, names[0])
        async with running(expiring_apiserver.admin_kubeconfig, emulator, watch_timeout="1s") as ccm:
            watcher = ccm.parts.watcher
            await wait_for(lambda: initialized(api, names[0]), 20)
            await wait_for(lambda: watcher.relists >= 2, 20, message="a relist after 410 Gone")
            await register_node(api, names[1])
            await wait_for(lambda: watcher.relists >= 3, 20, message="another relist")
            await register_node(api, names[2])
            for name in names:
                await wait_initialized(api, name, 30)
            assert ccm.alive
            gone = ccm.metric(ccm.parts.metrics.watch_restarts, "gone")
            expired = ccm.logs.named("node_watch_expired")
        lost = await missing(api, names)
    finally:
        await api.close()
    registry.lost(len(lost))
    assert gone >= 2 and expired
    assert not lost


# ------------------------------------------------------------------------------------------- write preconditions

VLAN = "5bc05e7e-6555-4f40-add8-3b8e91447702"


async def provider_set(api: ApiClient, name: str) -> dict[str, Any] | None:
    """The Node once it is untainted with a providerID (instance-type labels not required)."""
    node = await node_json(api, name)
    return node if UNINIT not in taint_keys(node) and node["spec"].get("providerID") else None


async def test_reregistered_node_never_gets_the_old_servers_provider_id(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # Two VMs carry the name (seed 001): the old one, and the new one the re-registered kubelet runs on.
    registry.record("fault/kubernetes", "re-registration race",
                    injected="a 409 (concurrent label write) on the CCM's metadata patch, then — before the retry "
                             "re-reads the Node — the Node deleted and re-registered under a new uid on the new VM "
                             "(what operators are told to do after seed 001)",
                    verified="the attempt ends at the uid change (`node_replaced`); the new Node gets the new VM's "
                             "providerID and addresses; no write accepted for the new uid carried the old VM's "
                             "providerID or address. Before the fix: the old VM's providerID landed on the new Node",
                    faults=2, nodes_checked=1)
    old = world.add_server(ALICE, "rereg", nics=[public_static_nic("185.12.30.1")])
    new = world.add_server(ALICE, "rereg", nics=[public_static_nic("185.12.30.2")])
    first = await register_node(kube_api, "rereg", system_uuid=old["uuid"])
    other = KubeTransport(kube_api)
    steps: list[str] = []
    accepted: list[dict[str, Any]] = []
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        original = ccm.parts.kube.request

        async def racing_request(method: str, path: str, **kw: Any) -> Any:
            if method == "PATCH" and path == "/api/v1/nodes/rereg" and not steps:
                # another writer changes the node just before the CCM's metadata patch: a real 409
                node = await node_json(kube_api, "rereg")
                await patching.patch_node(other, "rereg", resource_version=node["metadata"]["resourceVersion"],
                                          labels={"writer": "concurrent"})
                steps.append("conflict")
            elif method == "GET" and path == "/api/v1/nodes/rereg" and steps == ["conflict"]:
                # between the conflict and the retry's re-read: deleted and re-registered on the new VM
                await CoreV1Api(kube_api).delete_node("rereg")
                await wait_for(lambda: _absent(kube_api, "rereg"), 10)
                await register_node(kube_api, "rereg", system_uuid=new["uuid"])
                steps.append("re-registered")
            answer = await original(method, path, **kw)
            if method == "PATCH" and "/nodes/rereg" in path:
                accepted.append(answer)
            return answer

        ccm.parts.kube.request = racing_request  # type: ignore[method-assign]
        node = await wait_for(lambda: provider_set(kube_api, "rereg"), 20, message="the new Node initialized")
        replaced = ccm.logs.named("node_replaced", node="rereg")
    assert steps == ["conflict", "re-registered"]
    assert node["metadata"]["uid"] != first.metadata.uid
    assert node["spec"]["providerID"] == f"cloudsigma://{new['uuid']}"
    assert ("ExternalIP", "185.12.30.2") in addresses(node) and ("ExternalIP", "185.12.30.1") not in addresses(node)
    # no write the API server accepted for the new object carried the old server's providerID or address
    for answer in accepted:
        if answer["metadata"]["uid"] == node["metadata"]["uid"]:
            assert answer["spec"].get("providerID") != f"cloudsigma://{old['uuid']}"
            assert ("ExternalIP", "185.12.30.1") not in addresses(answer)
    assert replaced, "no node_replaced line"
    lost = await missing(kube_api, ["rereg"])
    registry.lost(len(lost))
    assert not lost


async def test_a_retry_matches_the_server_again_from_current_data(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # Matched to the old VM by systemUUID; before the CCM's metadata patch somebody else (another controller, an
    # operator) sets the providerID of the new VM on the same object: 409, and the retry must follow it.
    registry.record("fault/kubernetes", "conflict retry re-matches the server",
                    injected="before the CCM's metadata patch another writer sets the new VM's providerID on the same "
                             "Node (409); the CCM had matched the old VM by systemUUID",
                    verified="the retry matches again from current data: the write that removes the taint carries "
                             "the new VM's address, never the old one's. Before the fix (and with the old server "
                             "reused in the retry): untainted with the old VM's address",
                    faults=1, nodes_checked=1)
    old = world.add_server(ALICE, "pid-race", nics=[public_static_nic("185.12.32.1")])
    new = world.add_server(ALICE, "pid-race", nics=[public_static_nic("185.12.32.2")])
    first = await register_node(kube_api, "pid-race", system_uuid=old["uuid"])
    other = KubeTransport(kube_api)
    raced: list[bool] = []
    accepted: list[dict[str, Any]] = []
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        original = ccm.parts.kube.request

        async def racing_request(method: str, path: str, **kw: Any) -> Any:
            if method == "PATCH" and path == "/api/v1/nodes/pid-race" and not raced:
                node = await node_json(kube_api, "pid-race")
                await patching.patch_node(other, "pid-race", resource_version=node["metadata"]["resourceVersion"],
                                          provider_id=f"cloudsigma://{new['uuid']}")
                raced.append(True)
            answer = await original(method, path, **kw)
            if method == "PATCH" and "/nodes/pid-race" in path:
                accepted.append(answer)
            return answer

        ccm.parts.kube.request = racing_request  # type: ignore[method-assign]
        node = await wait_for(lambda: provider_set(kube_api, "pid-race"), 20, message="pid-race initialized")
    assert raced and node["metadata"]["uid"] == first.metadata.uid
    assert node["spec"]["providerID"] == f"cloudsigma://{new['uuid']}"
    # The write that made the node schedulable was decided for the server the fresh Node names, not for the one
    # matched before the conflict (a later resync would repair the addresses, but the node was schedulable with
    # the wrong ones meanwhile).
    untainted = next(a for a in accepted if UNINIT not in taint_keys(a))
    assert ("ExternalIP", "185.12.32.2") in addresses(untainted), addresses(untainted)
    assert ("ExternalIP", "185.12.32.1") not in addresses(untainted)
    lost = await missing(kube_api, ["pid-race"])
    registry.lost(len(lost))
    assert not lost


async def _absent(api: ApiClient, name: str) -> bool:
    return await get_node(api, name) is None


async def test_address_the_kubelet_writes_meanwhile_is_kept(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # The kubelet creates its Node first and reports its VLAN InternalIP a moment later; the CCM has already
    # decided the addresses from the Node as first seen (without it).
    registry.record("fault/kubernetes", "kubelet writes an address meanwhile",
                    injected="Node created first; its kubelet reports the VLAN InternalIP 10.0.0.4 just before the "
                             "CCM's status write, which was decided from the Node as first seen",
                    verified="the status write carries the resourceVersion it was decided from: 409, decided again; "
                             "10.0.0.4 kept next to the ExternalIP (before: lost in 2 of 2 runs)",
                    faults=1, nodes_checked=1)
    world.add_server(ALICE, "n-vlan", nics=[public_static_nic("185.12.31.1"), private_vlan_nic(VLAN)])
    await register_node(kube_api, "n-vlan")
    reported: list[bool] = []
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        original = ccm.parts.kube.request

        async def kubelet_reports_first(method: str, path: str, **kw: Any) -> Any:
            if method == "PATCH" and path == "/api/v1/nodes/n-vlan/status" and not reported:
                await patch_node_status(kube_api, "n-vlan", {"status": {"addresses": [
                    {"type": "InternalIP", "address": "10.0.0.4"}, {"type": "Hostname", "address": "n-vlan"}]}})
                reported.append(True)
            return await original(method, path, **kw)

        ccm.parts.kube.request = kubelet_reports_first  # type: ignore[method-assign]
        node = await wait_for(lambda: provider_set(kube_api, "n-vlan"), 20, message="n-vlan initialized")
        conflicts = ccm.parts.kube.writes.get("PATCH nodes/status", 0)
    assert reported
    assert ("InternalIP", "10.0.0.4") in addresses(node), addresses(node)
    assert ("ExternalIP", "185.12.31.1") in addresses(node)
    assert conflicts >= 2  # the refused write and the re-decided one
    lost = await missing(kube_api, ["n-vlan"])
    registry.lost(len(lost))
    assert not lost
