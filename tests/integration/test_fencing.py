"""Lease elector and write fence against a real kube-apiserver whose answers a proxy can hold back."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ccm.fencing import Fence, Fenced
from ccm.kube.clients import KubeconfigClient
from ccm.kube.transport import KubeTransport
from ccm.leader import LeaderLost, LeaseElector
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.proxy import HoldingProxy

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy(kube_apiserver: KubeAPIServer) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(kube_apiserver.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        proxy.set_hold(0.0)
        await proxy.stop()


@pytest.fixture
async def through_proxy(kube_apiserver: KubeAPIServer, proxy: HoldingProxy,
                        tmp_path: Path) -> AsyncIterator[Callable[..., KubeTransport]]:
    path = tmp_path / "proxied.kubeconfig"
    path.write_text(kube_apiserver.fresh_kubeconfig_text("fence-test", ["system:masters"], server=proxy.url))
    client = await KubeconfigClient.open(path, what="test kubeconfig")
    try:
        yield lambda **kw: KubeTransport(client, **kw)
    finally:
        await client.close()


def elector(transport: KubeTransport, name: str, **kw: object) -> LeaseElector:
    settings: dict[str, object] = {"lease_duration": 4.0, "renew_deadline": 2.0, "retry_period": 0.5}
    settings.update(kw)
    return LeaseElector(transport, name=name, namespace="default", identity=f"{name}-holder", **settings)  # type: ignore[arg-type]


async def test_a_hanging_renewal_ends_at_the_renew_deadline_not_at_the_request_timeout(
        through_proxy: Callable[..., KubeTransport], proxy: HoldingProxy) -> None:
    failures: list[str] = []
    # The request timeout (30 s) is far longer than the deadline: only the deadline may end the attempt.
    lease = elector(through_proxy(timeout=30.0), "fence-deadline", on_failure=failures.append)
    await lease.acquire()
    assert lease.fence.is_open
    keeper = asyncio.create_task(lease.keep())
    await asyncio.sleep(1.2)  # a couple of renewals
    assert not keeper.done()
    proxy.set_hold(math.inf)
    held = time.monotonic()
    with pytest.raises(LeaderLost):
        await asyncio.wait_for(keeper, 10)
    lost_at = time.monotonic()
    deadline = lease.renewed_at + 2.0
    assert not lease.fence.is_open
    assert lost_at - deadline < 0.3, f"LeaderLost {lost_at - deadline:.2f} s after the renew deadline"
    assert lost_at - held < 2.0 + 0.3
    assert "deadline" in failures


async def test_the_fence_cancels_a_write_in_flight_and_refuses_the_next(
        through_proxy: Callable[..., KubeTransport], proxy: HoldingProxy) -> None:
    fence = Fence("test")
    fence.grant(time.monotonic() + 60)
    kube = through_proxy(fence=fence)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"fenced-{time.time_ns()}"}}
    proxy.set_hold(math.inf)
    write = asyncio.create_task(kube.request("POST", "/api/v1/namespaces/default/configmaps", body=body))
    await asyncio.sleep(0.5)
    assert not write.done() and fence.in_flight == 1
    closed = time.monotonic()
    fence.close("test: lease lost")
    with pytest.raises(Fenced, match="cancelled in flight"):
        await asyncio.wait_for(write, 2)
    assert time.monotonic() - closed < 0.2
    proxy.set_hold(0.0)
    with pytest.raises(Fenced, match="not sent"):
        await kube.request("POST", "/api/v1/namespaces/default/configmaps", body=body)
    assert fence.refused == 1
    assert (await kube.request("GET", "/api/v1/namespaces/default/configmaps"))["kind"] == "ConfigMapList"


async def test_one_process_holds_several_leases_each_with_its_own_fence(
        kube_apiserver: KubeAPIServer, through_proxy: Callable[..., KubeTransport], proxy: HoldingProxy) -> None:
    direct = await KubeconfigClient.open(kube_apiserver.admin_kubeconfig, what="admin kubeconfig")
    try:
        steady = elector(KubeTransport(direct), "fence-tenant-a")
        shaky = elector(through_proxy(), "fence-tenant-b")
        await asyncio.gather(steady.acquire(), shaky.acquire())
        keepers = [asyncio.create_task(e.keep()) for e in (steady, shaky)]
        proxy.set_hold(math.inf)
        with pytest.raises(LeaderLost, match="fence-tenant-b"):
            await asyncio.wait_for(keepers[1], 10)
        assert not shaky.fence.is_open
        assert steady.fence.is_open and not keepers[0].done()
        keepers[0].cancel()
        await steady.release()
        assert not steady.fence.is_open
    finally:
        await direct.close()
