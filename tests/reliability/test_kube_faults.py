"""Kubernetes API faults with a real kube-apiserver: restart mid-run, 409 conflicts, 410 Gone on the watch."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube import patching
from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, node_json
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import initialized, missing, retry_kube, running, wait_initialized

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
