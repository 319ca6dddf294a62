"""The node controller against the real kube-apiserver and the CloudSigma emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube import patching
from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, private_vlan_nic, public_dhcp_nic, public_static_nic
from tests.integration.harness import (
    ALICE,
    BOB,
    UNINIT,
    addresses,
    events_for,
    initialized,
    node_json,
    running_ccm,
    taint_keys,
)
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

pytestmark = pytest.mark.usefixtures("clean_nodes")


async def test_fresh_node_is_initialized(world: EmulatorState, emulator: EmulatorServer,
                                         kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "worker-1", cpu=4000, smp=2, mem=4 * 1024**3,
                              nics=[public_dhcp_nic("94.26.101.149")])
    await register_node(kube_api, "worker-1")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator):
        node = await wait_for(lambda: initialized(kube_api, "worker-1"), 20)
        events = await wait_for(lambda: events_for(kube_api, "worker-1"), 10)
    assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"
    assert ("ExternalIP", "94.26.101.149") in addresses(node)
    assert ("Hostname", "worker-1") in addresses(node)
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "2c-4000mhz-4096mib"
    assert labels["topology.kubernetes.io/region"] == "zrh"
    assert labels["failure-domain.beta.kubernetes.io/zone"] == "zrh"
    assert any(e["reason"] == "Synced" and e["type"] == "Normal" for e in events)


async def test_private_vlan_keeps_kubelet_internal_ip(world: EmulatorState, emulator: EmulatorServer,
                                                      kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "worker-2", nics=[public_static_nic("185.12.5.5"),
                                              private_vlan_nic("5bc05e7e-6555-4f40-add8-3b8e91447702")])
    await register_node(kube_api, "worker-2", addresses=[("InternalIP", "10.10.0.7"), ("Hostname", "worker-2")],
                        provided_node_ip="10.10.0.7")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator):
        node = await wait_for(lambda: initialized(kube_api, "worker-2"), 20)
    got = node["status"]["addresses"]
    assert got[0] == {"type": "InternalIP", "address": "10.10.0.7"}  # provided-node-ip first
    assert ("ExternalIP", "185.12.5.5") in addresses(node)


async def test_changed_dhcp_ip_is_picked_up_on_resync(world: EmulatorState, emulator: EmulatorServer,
                                                      kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "worker-3", nics=[public_dhcp_nic("94.26.101.10")])
    await register_node(kube_api, "worker-3")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="1s",
                           server_cache_max_age="0.5s") as ccm:
        await wait_for(lambda: initialized(kube_api, "worker-3"), 20)
        writes_before = dict(ccm.parts.kube.writes)
        await asyncio.sleep(2.5)  # a couple of resyncs with nothing changed → no writes
        assert ccm.parts.kube.writes == writes_before
        world.set_server_ip(server["uuid"], "94.26.101.99")

        async def moved() -> bool:
            return ("ExternalIP", "94.26.101.99") in addresses(await node_json(kube_api, "worker-3"))

        await wait_for(moved, 15)
    assert ("ExternalIP", "94.26.101.10") not in addresses(await node_json(kube_api, "worker-3"))


async def test_conflict_from_a_concurrent_writer_is_retried(world: EmulatorState, emulator: EmulatorServer,
                                                            kube_apiserver: KubeAPIServer,
                                                            kube_api: ApiClient) -> None:
    world.add_server(ALICE, "worker-4", nics=[public_dhcp_nic("94.26.101.44")])
    await register_node(kube_api, "worker-4")
    other = KubeTransport(kube_api)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        original = ccm.parts.kube.request
        injected = []

        async def racing_request(method: str, path: str, **kw: Any) -> Any:
            # Just before our first metadata patch, another writer changes the node: a real 409 follows.
            if method == "PATCH" and path.endswith("/worker-4") and not injected:
                node = await node_json(kube_api, "worker-4")
                await patching.patch_node(other, "worker-4", resource_version=node["metadata"]["resourceVersion"],
                                          labels={"team": "concurrent-writer"})
                injected.append(True)
            return await original(method, path, **kw)

        ccm.parts.kube.request = racing_request  # type: ignore[method-assign]
        node = await wait_for(lambda: initialized(kube_api, "worker-4"), 20)
    assert injected
    assert node["metadata"]["labels"]["team"] == "concurrent-writer"  # their update survived
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"]  # ours landed after the retry
    assert node["spec"]["providerID"].startswith("cloudsigma://")


async def test_thirty_nodes_with_few_list_calls(world: EmulatorState, emulator: EmulatorServer,
                                                kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    for i in range(30):
        world.add_server(ALICE, f"burst-{i}", nics=[public_dhcp_nic("auto")])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, concurrent_node_syncs=4):
        await asyncio.gather(*(register_node(kube_api, f"burst-{i}") for i in range(30)))

        async def all_done() -> bool:
            nodes = await asyncio.gather(*(node_json(kube_api, f"burst-{i}") for i in range(30)))
            return all(UNINIT not in taint_keys(n) and n["spec"].get("providerID") for n in nodes)

        await wait_for(all_done, 30)
    calls = world.counters["GET /servers/detail/"] + world.counters["GET /servers/{uuid}/"]
    assert calls <= 6, f"{calls} CloudSigma calls for 30 nodes"


async def test_duplicate_name_stays_tainted_with_warning(world: EmulatorState, emulator: EmulatorServer,
                                                         kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    a = world.add_server(ALICE, "twin", nics=[public_dhcp_nic("auto")])
    b = world.add_server(ALICE, "twin", nics=[public_dhcp_nic("auto")])
    world.add_server(BOB, "unrelated")
    await register_node(kube_api, "twin")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator):
        async def warned() -> list[dict[str, Any]]:
            return [e for e in await events_for(kube_api, "twin") if e["reason"] == "DuplicateServerName"]

        events = await wait_for(warned, 15)
        await asyncio.sleep(1)
        node = await node_json(kube_api, "twin")
    assert UNINIT in taint_keys(node)
    assert not node["spec"].get("providerID")
    assert events[0]["type"] == "Warning"
    assert a["uuid"] in events[0]["message"] and b["uuid"] in events[0]["message"]


async def test_system_uuid_resolves_duplicate_names(world: EmulatorState, emulator: EmulatorServer,
                                                    kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "twin2", nics=[public_dhcp_nic("auto")])
    b = world.add_server(ALICE, "twin2", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "twin2", system_uuid=b["uuid"].upper())
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator):
        node = await wait_for(lambda: initialized(kube_api, "twin2"), 20)
    assert node["spec"]["providerID"] == f"cloudsigma://{b['uuid']}"


async def test_watch_gone_relists_without_missing_a_node(world: EmulatorState, emulator: EmulatorServer,
                                                         expiring_apiserver: KubeAPIServer) -> None:
    world.add_server(ALICE, "late-1", nics=[public_dhcp_nic("auto")])
    api = await api_client_for(expiring_apiserver.admin_kubeconfig)
    try:
        async with running_ccm(expiring_apiserver.admin_kubeconfig, emulator, watch_timeout="1s") as ccm:
            watcher = ccm.parts.watcher
            await wait_for(lambda: watcher.synced.is_set(), 10)
            # No events arrive; each 1 s watch resumes from the list's version, which compaction expires: 410.
            await wait_for(lambda: watcher.relists >= 2, 20, message="a relist after 410 Gone")
            await register_node(api, "late-1")
            node = await wait_for(lambda: initialized(api, "late-1"), 30)
            gone = ccm.parts.metrics.watch_restarts.labels("gone")._value.get()
    finally:
        await api.close()
    assert node["spec"]["providerID"]
    assert gone >= 1


def histogram_count(histogram: Any) -> float:
    return next(s.value for s in histogram.collect()[0].samples if s.name.endswith("_count"))


async def test_sync_delay_observed_once_per_initialization_and_uninitialized_gauge(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # Two nodes initialized before this CCM started (a restart or a failover) and one still tainted.
    for name in ("done-1", "done-2"):
        server = world.add_server(ALICE, name, nics=[public_static_nic("185.12.40.1" if name == "done-1"
                                                                       else "185.12.40.2")])
        await register_node(kube_api, name, taint=False, provider_id=f"cloudsigma://{server['uuid']}",
                            addresses=[("ExternalIP", server["nics"][0]["ip_v4_conf"]["ip"]["uuid"]),
                                       ("Hostname", name)])
    await register_node(kube_api, "late")  # its server does not exist yet: it waits, tainted
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        metrics = ccm.parts.metrics
        await wait_for(lambda: metrics.nodes_uninitialized._value.get() == 1, 10, message="gauge counts 'late'")
        world.add_server(ALICE, "late", nics=[public_dhcp_nic("auto")])
        await wait_for(lambda: initialized(kube_api, "late"), 30)
        await wait_for(lambda: metrics.nodes_uninitialized._value.get() == 0, 10, message="gauge back to 0")
        assert histogram_count(metrics.initial_sync_delay) == 1  # 'late' only, not the two already initialized
        assert histogram_count(metrics.taint_removal_delay) == 1
