"""LoadBalancer Services against the real kube-apiserver (with MetalLB's real CRDs) and the CloudSigma emulator.

The CCM runs in-process with ``--load-balancer``; Services are created through the API like a user would; the
evidence is read back from where it lives: the Service's status and Events, MetalLB's IPAddressPool, the Nodes'
labels, and each IP's ``meta`` in the emulator (the claim).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.config import load_settings
from ccm.fleet.runtime import TenantRuntime
from ccm.fleet.shared import CredentialUsers, fleet_services
from ccm.kube.errors import KubeNotFound
from ccm.kube.transport import KubeTransport
from ccm.loadbalancer.announcer import ELIGIBLE_LABEL, POOL_NAME
from ccm.loadbalancer.ipam import CLAIM_CLUSTER, CLAIM_SERVICE
from ccm.loadbalancer.service import FINALIZER
from ccm.logging import Redactor
from ccm.metrics import Metrics
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic, public_manual_nic
from tests.integration.harness import ALICE, CLIENT_ID, CLIENT_SECRET, impersonation_overrides, running_ccm
from tests.integration.test_fleet_runtime import _open_fence, fleet_settings, spec
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.metallb import install_metallb_crds
from tests.realenv.nodes import delete_all_nodes, register_node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]

NS = "lb-test"
POOL = f"/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools/{POOL_NAME}"
L2 = f"/apis/metallb.io/v1beta1/namespaces/metallb-system/l2advertisements/{POOL_NAME}"
LB = {"load_balancer": "metallb", "load_balancer_claim_settle": "300ms"}


def services(namespace: str = NS) -> str:
    return f"/api/v1/namespaces/{namespace}/services"


def subscribe(world: EmulatorState, n: int, *, first: int = 10) -> list[str]:
    """``n`` subscribed IPs of Alice on no NIC."""
    return [world.add_ip(ALICE, f"185.77.0.{first + i}").uuid for i in range(n)]


async def reset_cluster(api: ApiClient) -> None:
    """No Service of an earlier test left (finalizers dropped), no MetalLB objects, MetalLB's CRDs served."""
    kube = KubeTransport(api)
    await install_metallb_crds(kube)
    with contextlib.suppress(Exception):
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NS}})
    for item in (await kube.request("GET", services()))["items"]:
        name = item["metadata"]["name"]
        if item["metadata"].get("finalizers"):
            await kube.request("PATCH", f"{services()}/{name}", body={"metadata": {"finalizers": None}},
                               content_type="application/merge-patch+json")
        with contextlib.suppress(KubeNotFound):
            await kube.request("DELETE", f"{services()}/{name}")
    for path in (POOL, L2):
        with contextlib.suppress(KubeNotFound):
            await kube.request("DELETE", path)


async def add_nodes(world: EmulatorState, api: ApiClient, names: list[str], *, manual: bool = True) -> None:
    for i, name in enumerate(names):
        server = world.add_server(ALICE, name, nics=[public_manual_nic() if manual else public_dhcp_nic("auto")])
        await register_node(api, name, taint=False, provider_id=f"cloudsigma://{server['uuid']}",
                            addresses=[("InternalIP", f"10.8.0.{i + 2}")])


async def create_service(api: ApiClient, name: str, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    return await KubeTransport(api).request("POST", services(), body=body)


async def service(api: ApiClient, name: str) -> dict[str, Any] | None:
    try:
        return await KubeTransport(api).request("GET", f"{services()}/{name}")
    except KubeNotFound:
        return None


def ingress(svc: dict[str, Any] | None) -> str | None:
    items = ((svc or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return items[0]["ip"] if items else None


async def ips_of(api: ApiClient, names: list[str]) -> dict[str, str] | None:
    """name → IP once every Service has one."""
    out = {n: ingress(await service(api, n)) for n in names}
    return out if all(out.values()) else None  # type: ignore[return-value]


async def events_of(api: ApiClient, name: str, reason: str) -> list[dict[str, Any]]:
    items = await KubeTransport(api).request("GET", f"/api/v1/namespaces/{NS}/events",
                                             query={"fieldSelector": f"involvedObject.name={name},reason={reason}"})
    return list(items.get("items") or [])


async def pool_addresses(api: ApiClient) -> list[str] | None:
    try:
        pool = await KubeTransport(api).request("GET", POOL)
    except KubeNotFound:
        return None
    assert pool["spec"]["autoAssign"] is False
    return sorted(a.removesuffix("/32") for a in pool["spec"]["addresses"])


def claims(world: EmulatorState) -> dict[str, tuple[str, str]]:
    """address → (cluster, service) of every claim recorded in the cloud."""
    return {r.uuid: (r.meta[CLAIM_CLUSTER], r.meta[CLAIM_SERVICE]) for r in world.ips.values()
            if CLAIM_CLUSTER in r.meta}


@pytest.fixture
async def tenant_b(kube_apiserver_factory: Callable[..., KubeAPIServer]) -> KubeAPIServer:
    server = kube_apiserver_factory("lb-tenant-b")
    api = await api_client_for(server.admin_kubeconfig)
    try:
        await reset_cluster(api)
        await delete_all_nodes(api)
    finally:
        await api.close()
    return server


@pytest.fixture
async def cluster(kube_api: ApiClient) -> ApiClient:
    await reset_cluster(kube_api)
    return kube_api


async def test_twenty_services_across_two_tenants_of_one_owner_get_distinct_ips_and_keep_them(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient,
        tenant_b: KubeAPIServer) -> None:
    """Two clusters of one owner, 10 Services each created at once: 20 distinct IPs, each claimed once in the
    cloud by the Service whose status names it; IPs claimed elsewhere (another cluster, kube-dc's tags) are
    never handed out; MetalLB's pool of each cluster holds exactly its IPs; a restart keeps every IP."""
    free = subscribe(world, 20)  # exactly enough: an IP claimed elsewhere would be needed if it were offered
    world.add_ip(ALICE, "185.77.1.1", meta={CLAIM_CLUSTER: "elsewhere", CLAIM_SERVICE: "x/y"})
    kube_dc_ip = world.add_ip(ALICE, "185.77.1.2").uuid
    world.set_ip_tags(kube_dc_ip, [world.add_tag("cluster:old-cluster", owner=ALICE),
                                   world.add_tag("service:default-web", owner=ALICE)])
    api_b = await api_client_for(tenant_b.admin_kubeconfig)
    try:
        await add_nodes(world, cluster, ["lb-a1"])
        await add_nodes(world, api_b, ["lb-b1"])
        names = [f"svc-{i}" for i in range(10)]
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="tenant-a", **LB), \
                running_ccm(tenant_b.admin_kubeconfig, emulator, cluster_name="tenant-b", **LB):
            await asyncio.gather(*(create_service(api, n) for api in (cluster, api_b) for n in names))
            got_a = await wait_for(lambda: ips_of(cluster, names), 60, message="tenant A's IPs")
            got_b = await wait_for(lambda: ips_of(api_b, names), 60, message="tenant B's IPs")
            every = [*got_a.values(), *got_b.values()]
            assert len(set(every)) == 20 and set(every) <= set(free)
            recorded = claims(world)
            for tenant, got in (("tenant-a", got_a), ("tenant-b", got_b)):
                for name, address in got.items():
                    assert recorded[address] == (tenant, f"{NS}/{name}")
            assert len([a for a, c in recorded.items() if c[0].startswith("tenant-")]) == 20
            assert await wait_for(lambda: pool_addresses(cluster)) == sorted(got_a.values())
            assert await wait_for(lambda: pool_addresses(api_b)) == sorted(got_b.values())
            svc = await service(cluster, "svc-0")
            assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
            assert svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == got_a["svc-0"]
            l2 = await KubeTransport(cluster).request("GET", L2)
            assert l2["spec"]["nodeSelectors"] == [{"matchLabels": {ELIGIBLE_LABEL: "true"}}]
        listings = len(world.requests_to("GET /ips/detail/"))
        assert listings < 40, listings  # 2 per Service without sharing: decide + check
        # A claim left by a Service object that is gone (recreated under the same name while the CCM was down).
        world.ips["185.77.1.3"] = world.add_ip(ALICE, "185.77.1.3", meta={
            CLAIM_CLUSTER: "tenant-a", CLAIM_SERVICE: f"{NS}/svc-0", "k8s-service-uid": "an-older-object"})
        # A restart: every Service keeps its IP, and no claim is written again but the orphan's release.
        writes = len(world.requests_to("PUT /ips/{ip}/"))
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="tenant-a", **LB) as ccm:
            assert ccm.parts.load_balancer is not None
            await wait_for(lambda: ccm.parts.load_balancer is not None and len(ccm.parts.load_balancer.held) == 10,
                           20)
            await asyncio.sleep(1.0)
            assert await ips_of(cluster, names) == got_a
            assert await pool_addresses(cluster) == sorted(got_a.values())
        assert len(world.requests_to("PUT /ips/{ip}/")) == writes + 1
        assert claims(world) == recorded and world.ips["185.77.1.3"].meta == {}
    finally:
        await reset_cluster(api_b)
        await api_b.close()


async def test_two_clusters_racing_for_the_last_ip_one_gets_it_and_the_other_waits(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient,
        tenant_b: KubeAPIServer) -> None:
    """One free IP, one Service in each of two clusters of the owner, decided at the same moment (a claim write
    takes 150 ms, so both listings see the IP free and both claims are written): the listing taken after the
    settle time shows one claim, so exactly one Service gets the IP and the other waits with an Event."""
    [last] = subscribe(world, 1)
    world.delay_next(None, 150, path_prefix="/ips/", method="PUT")
    api_b = await api_client_for(tenant_b.admin_kubeconfig)
    try:
        await add_nodes(world, cluster, ["lb-a1"])
        await add_nodes(world, api_b, ["lb-b1"])
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="tenant-a", **LB), \
                running_ccm(tenant_b.admin_kubeconfig, emulator, cluster_name="tenant-b", **LB):
            await asyncio.gather(create_service(cluster, "race"), create_service(api_b, "race"))

            async def one_winner() -> tuple[str, ApiClient] | None:
                got = {t: ingress(await service(api, "race")) for t, api in (("a", cluster), ("b", api_b))}
                assert list(got.values()).count(last) <= 1, got  # never both
                loser = api_b if got["a"] else cluster if got["b"] else None
                if loser is None or not await events_of(loser, "race", "IPAllocationFailed"):
                    return None
                return ("a" if got["a"] else "b"), loser

            winner, loser = await wait_for(one_winner, 20, message="one winner, one Event")
            await asyncio.sleep(1.0)
            assert await one_winner() is not None and ingress(await service(loser, "race")) is None
            assert claims(world)[last] == (f"tenant-{winner}", f"{NS}/race")
            assert len(world.requests_to("PUT /ips/{ip}/")) >= 2  # both wrote: the check decided, not luck
    finally:
        await reset_cluster(api_b)
        await api_b.close()


async def test_exhausted_pool_leaves_the_rest_pending_with_one_event_and_a_deletion_frees_an_ip(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    three = subscribe(world, 3)
    await add_nodes(world, cluster, ["lb-n1"])
    names = [f"web-{i}" for i in range(5)]
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", **LB) as ccm:
        await asyncio.gather(*(create_service(cluster, n) for n in names))

        async def settled() -> tuple[dict[str, str | None], list[str]] | None:
            got = {n: ingress(await service(cluster, n)) for n in names}
            waiting = [n for n, ip in got.items() if ip is None]
            if len(waiting) != 2:
                return None
            for n in waiting:
                if not await events_of(cluster, n, "IPAllocationFailed"):
                    return None
            return got, waiting

        got, waiting = await wait_for(settled, 30, message="3 allocated, 2 pending with an Event")
        assert sorted(ip for ip in got.values() if ip) == sorted(three)
        await asyncio.sleep(2.0)  # retries keep failing for the same reason: still one Event each
        for n in waiting:
            [event] = await events_of(cluster, n, "IPAllocationFailed")
            assert event["type"] == "Warning" and "no free IP" in event["message"] and event["count"] == 1
        for n in (n for n in names if n not in waiting):
            [allocated] = await events_of(cluster, n, "IPAllocated")
            assert got[n] in allocated["message"]
        text = ccm.parts.metrics.render().decode()
        assert 'cloudsigma_ccm_load_balancer_ips{cluster="c1",pool="static",state="held"} 3.0' in text
        assert 'cloudsigma_ccm_load_balancer_ips{cluster="c1",pool="static",state="free"} 0.0' in text
        assert 'load_balancer_allocation_failures_total{cluster="c1",reason="pool_exhausted"}' in text
        # Deleting a Service releases its IP (claim removed in the cloud) and a waiting Service gets it.
        gone = next(n for n, ip in got.items() if ip)
        freed = got[gone]
        await KubeTransport(cluster).request("DELETE", f"{services()}/{gone}")
        await wait_for(lambda: _absent(cluster, gone), 15, message="the deleted Service to be gone")
        taker = await wait_for(lambda: _taker(cluster, waiting, freed), 30, message="a waiting Service to get it")
        assert claims(world)[str(freed)] == ("c1", f"{NS}/{taker}")
        assert await events_of(cluster, gone, "IPReleased")


async def _absent(api: ApiClient, name: str) -> bool:
    return await service(api, name) is None


async def _taker(api: ApiClient, waiting: list[str], address: str | None) -> str | None:
    for n in waiting:
        if ingress(await service(api, n)) == address:
            return n
    return None


async def test_type_change_releases_and_a_foreign_requested_ip_is_an_event_not_a_crash(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    mine = subscribe(world, 2)
    world.add_ip("bob@example.com", "185.99.0.1")  # somebody else's
    await add_nodes(world, cluster, ["lb-n1"])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", **LB):
        await create_service(cluster, "foreign", annotations={"loadbalancer.cloudsigma.com/ip": "185.99.0.1"})
        await create_service(cluster, "wanted", annotations={"metallb.io/loadBalancerIPs": mine[1]})
        [event] = await wait_for(lambda: events_of(cluster, "foreign", "IPAllocationFailed"), 20)
        assert "185.99.0.1 is not a subscribed IP of the cluster owner" in event["message"]
        assert await wait_for(lambda: ips_of(cluster, ["wanted"]), 20) == {"wanted": mine[1]}
        assert ingress(await service(cluster, "foreign")) is None
        # LoadBalancer → ClusterIP: status emptied, annotations and claim gone, finalizer dropped, pool emptied.
        await KubeTransport(cluster).request(
            "PATCH", f"{services()}/wanted", body={"spec": {"type": "ClusterIP"}},
            content_type="application/merge-patch+json")

        async def released() -> dict[str, Any] | None:
            svc = await service(cluster, "wanted")
            if svc is None or FINALIZER in (svc["metadata"].get("finalizers") or []) or ingress(svc):
                return None
            return svc

        svc = await wait_for(released, 20, message="the claim to be released")
        assert "metallb.io/loadBalancerIPs" not in (svc["metadata"].get("annotations") or {})
        assert mine[1] not in claims(world)
        assert await wait_for(lambda: _pool_gone(cluster), 10)


async def _pool_gone(api: ApiClient) -> bool:
    return await pool_addresses(api) is None


async def node_labels(api: ApiClient, name: str) -> dict[str, str]:
    node = await KubeTransport(api).request("GET", f"/api/v1/nodes/{name}")
    return dict(node["metadata"].get("labels") or {})


async def node_events(api: ApiClient, name: str, reason: str) -> list[dict[str, Any]]:
    items = await KubeTransport(api).request("GET", "/api/v1/namespaces/default/events",
                                             query={"fieldSelector": f"involvedObject.name={name},reason={reason}"})
    return list(items.get("items") or [])


async def test_only_nodes_with_a_manual_nic_are_eligible_and_no_ip_is_given_without_one(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    subscribe(world, 2)
    await add_nodes(world, cluster, ["lb-dhcp"], manual=False)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", **LB):
        [warning] = await wait_for(lambda: node_events(cluster, "lb-dhcp", "LoadBalancerNICNotManual"), 20)
        assert "ip_v4_conf.conf manual" in warning["message"]
        await create_service(cluster, "web")
        [pending] = await wait_for(lambda: events_of(cluster, "web", "IPAllocationFailed"), 20)
        assert "no Node can carry" in pending["message"]
        assert ELIGIBLE_LABEL not in await node_labels(cluster, "lb-dhcp")
        await add_nodes(world, cluster, ["lb-manual"])
        await wait_for(lambda: _labelled(cluster, "lb-manual"), 45, message="the manual Node to be labelled")
        await wait_for(lambda: ips_of(cluster, ["web"]), 20)
    assert ELIGIBLE_LABEL not in await node_labels(cluster, "lb-dhcp")


async def _labelled(api: ApiClient, name: str) -> bool:
    return (await node_labels(api, name)).get(ELIGIBLE_LABEL) == "true"


@pytest.mark.parametrize("cloud", ["ignore", "apply", "refuse"])
async def test_ensure_switches_the_nic_and_reports_when_the_cloud_ignores_it(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient,
        cloud: str) -> None:
    """servers.rst: a running server ignores NIC changes (``ignore``); kube-dc reports the switch working
    (``apply``). Either way the CCM reads the server again and says what happened."""
    world.running_server_changes = "apply" if cloud == "apply" else "ignore"
    if cloud == "refuse":
        world.fail_next(1, status=400, error_type="validation", path_prefix="/servers/", method="PUT")
    await add_nodes(world, cluster, ["lb-e1"], manual=False)
    server = world.servers_of(ALICE)[0]
    before = {k: v for k, v in server.items() if k not in ("nics", "runtime")}
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", load_balancer_nic="ensure",
                           **LB):
        if cloud == "ignore":
            [event] = await wait_for(lambda: node_events(cluster, "lb-e1", "LoadBalancerNICSwitchIgnored"), 20)
            assert "ignored" in event["message"] and server["uuid"] in event["message"]
            assert ELIGIBLE_LABEL not in await node_labels(cluster, "lb-e1")
            assert server["nics"][0]["ip_v4_conf"]["conf"] == "dhcp"
        elif cloud == "refuse":
            [event] = await wait_for(lambda: node_events(cluster, "lb-e1", "LoadBalancerNICSwitchFailed"), 20)
            assert server["uuid"] in event["message"]
            await wait_for(lambda: node_events(cluster, "lb-e1", "LoadBalancerNICNotManual"), 10)
            assert ELIGIBLE_LABEL not in await node_labels(cluster, "lb-e1")
        else:
            await wait_for(lambda: node_events(cluster, "lb-e1", "LoadBalancerNICSwitched"), 20)
            await wait_for(lambda: _labelled(cluster, "lb-e1"), 10)
            assert server["nics"][0]["ip_v4_conf"] == {"conf": "manual", "ip": None}
    assert len(world.requests_to("PUT /servers/{uuid}/")) == 1  # one try per server, not one per pass
    assert {k: v for k, v in server.items() if k not in ("nics", "runtime")} == before  # nothing else changed



async def test_kube_vip_gets_its_annotation_and_no_metallb_objects(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    [address] = subscribe(world, 1)
    await add_nodes(world, cluster, ["lb-v1"])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1",
                           **(LB | {"load_balancer": "kube-vip"})):
        await create_service(cluster, "vip")
        assert await wait_for(lambda: ips_of(cluster, ["vip"]), 20) == {"vip": address}
        svc = await service(cluster, "vip")
        assert svc is not None
        annotations = svc["metadata"]["annotations"]
        assert annotations["kube-vip.io/loadbalancerIPs"] == address and "metallb.io/loadBalancerIPs" not in annotations
        await wait_for(lambda: _labelled(cluster, "lb-v1"), 10)  # kube-vip's own election picks among all Nodes
    assert await pool_addresses(cluster) is None
    with contextlib.suppress(KubeNotFound):
        await KubeTransport(cluster).request("GET", L2)
        raise AssertionError("an L2Advertisement was written in kube-vip mode")


async def test_fleet_handover_keeps_every_ip(world: EmulatorState, emulator: EmulatorServer,
                                             kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    """A tenant served by one fleet replica's runtime, then handed to another replica's (its own shared services,
    as in another pod): the new one holds the same IPs from the claims in the cloud and writes none again."""
    world.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    subscribe(world, 4)
    await add_nodes(world, cluster, ["lb-f1"])
    settings = load_settings(fleet_settings(emulator, **LB))
    tenant = spec(kube_apiserver, "lb", ALICE)
    names = ["f-0", "f-1", "f-2"]

    async def serve(replica: str) -> tuple[TenantRuntime, Any]:
        metrics = Metrics()
        services = fleet_services(settings, Redactor(), metrics)
        runtime = TenantRuntime(tenant, services, credentials=CredentialUsers(services), fence=_open_fence(),
                                metrics=metrics.for_cluster(tenant.key), replica=replica, fleet="test")
        runtime.start()
        return runtime, services

    first, services = await serve("r1")
    try:
        await asyncio.gather(*(create_service(cluster, n) for n in names))
        got = await wait_for(lambda: ips_of(cluster, names), 30, message="the IPs under replica r1")
        assert {claims(world)[ip] for ip in got.values()} == {(tenant.key, f"{NS}/{n}") for n in names}
    finally:
        await first.stop(1.0)
        await services.close()
    writes = len(world.requests_to("PUT /ips/{ip}/"))
    second, services = await serve("r2")
    try:
        await wait_for(lambda: second.parts is not None and second.parts.load_balancer is not None
                       and len(second.parts.load_balancer.held) == 3, 20, message="r2 to hold the IPs")
        await asyncio.sleep(1.0)
        assert await ips_of(cluster, names) == got
        assert await pool_addresses(cluster) == sorted(got.values())
    finally:
        await second.stop(1.0)
        await services.close()
    assert len(world.requests_to("PUT /ips/{ip}/")) == writes


async def test_a_claim_overwritten_elsewhere_is_withdrawn_from_the_pool_and_status(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    """A Service's verified claim is later overwritten by another cluster and no other IP is free: it stops being
    announced (out of MetalLB's pool, status and our annotations cleared), and our own announcer annotation is not
    taken for the user's request (no REQUESTED_IN_USE blaming the user)."""
    [only] = subscribe(world, 1)
    await add_nodes(world, cluster, ["lb-w1"])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", **LB) as ccm:
        lb = ccm.parts.load_balancer
        assert lb is not None
        await create_service(cluster, "web")
        await wait_for(lambda: _pooled(cluster, [only]), 20, message="the IP announced")
        world.ips[only].meta = {CLAIM_CLUSTER: "elsewhere", CLAIM_SERVICE: "x/y"}
        await asyncio.sleep(0.5)  # past the settle time: the next decision lists the IPs again
        lb.queue.add(f"{NS}/web")
        await wait_for(lambda: _pooled(cluster, None), 20, message="the lost IP out of the pool")

        async def withdrawn() -> bool:  # the pool is synced first, then the Service's status and annotations
            svc = await service(cluster, "web")
            return (ingress(svc) is None and not lb.held
                    and "metallb.io/loadBalancerIPs" not in (svc or {})["metadata"].get("annotations", {}))

        await wait_for(withdrawn, 20, message="the lost IP out of the Service's status and annotations")
        text = ccm.parts.metrics.render().decode()  # the Event is one series per reason: its message is replaced
        assert 'load_balancer_allocation_failures_total{cluster="c1",reason="pool_exhausted"}' in text
        assert 'reason="requested_in_use"' not in text


async def _pooled(api: ApiClient, wanted: list[str] | None) -> bool:
    return await pool_addresses(api) == wanted


async def test_a_listing_by_the_fallback_credential_claims_and_releases_nothing(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, cluster: ApiClient) -> None:
    """Impersonation is preferred but refused (wrong client secret): the chain falls back to the password user,
    which may be another account. Its IP listings are not used: no claim written, no orphan claim released, no IP
    announced (the start-up recovery keeps waiting for a listing by the primary credential)."""
    subscribe(world, 2)
    world.add_ip(ALICE, "185.77.1.1", meta={CLAIM_CLUSTER: "c1", CLAIM_SERVICE: f"{NS}/gone"})  # an orphan of c1
    await add_nodes(world, cluster, ["lb-f1"])
    overrides = LB | impersonation_overrides(emulator, client_secret="wrong-secret-value")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, cluster_name="c1", **overrides) as ccm:
        lb = ccm.parts.load_balancer
        assert lb is not None
        await create_service(cluster, "web")
        await wait_for(lambda: len(world.requests_to("GET /ips/detail/")) >= 2, 20,
                       message="the IPs listed (through the fallback) twice")
        await wait_for(lambda: bool(lb.eligible), 10, message="a Node that could carry the IP")
        await asyncio.sleep(1.0)
        assert not world.requests_to("PUT /ips/{ip}/")
        assert claims(world) == {"185.77.1.1": ("c1", f"{NS}/gone")}
        assert ingress(await service(cluster, "web")) is None and lb.held == {}
