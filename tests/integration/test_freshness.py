"""Identity is decided only from evidence that cannot be older than the Node (real kube-apiserver + emulator).

A providerID matched by systemUUID may come from any snapshot holding that uuid; matched by name only from a
listing that started after the Node existed. A systemUUID that names no server never falls back to a name match.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import (
    ALICE,
    UNINIT,
    addresses,
    events_for,
    initialized,
    node_json,
    running_ccm,
    taint_keys,
)
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

pytestmark = pytest.mark.usefixtures("clean_nodes")


async def delete_node(api: ApiClient, name: str) -> None:
    await CoreV1Api(api).delete_node(name, grace_period_seconds=0)

    async def gone() -> bool:
        try:
            await node_json(api, name)
        except Exception:
            return True
        return False

    await wait_for(gone, 10)


def swapped(uuid: str) -> str:
    """The uuid with its first three fields byte-swapped (what some firmware reports as the SMBIOS uuid)."""
    raw = uuidlib.UUID(uuid).bytes
    return str(uuidlib.UUID(bytes=raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]))


@pytest.mark.parametrize("with_system_uuid", [False, True], ids=["by-name", "system-uuid"])
async def test_replaced_vm_never_gets_the_old_servers_identity(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
        with_system_uuid: bool) -> None:
    old = world.add_server(ALICE, "web-1", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "web-1")
    # The default cache age (10 s): everything below happens well within it.
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="10s",
                               node_status_update_frequency="1h") :
            first = await wait_for(lambda: initialized(kube_api, "web-1"), 20)
            assert first["spec"]["providerID"] == f"cloudsigma://{old['uuid']}"
            listings = world.counters["GET /servers/detail/"]
            # The VM is replaced: old server deleted, a new one with the same name and a new IP, the Node
            # deleted and registered again by the new VM's kubelet.
            world.remove_server(old["uuid"])
            new = world.add_server(ALICE, "web-1", nics=[public_dhcp_nic("auto")])
            await delete_node(kube_api, "web-1")
            await register_node(kube_api, "web-1", system_uuid=new["uuid"] if with_system_uuid else None)
            node = await wait_for(lambda: initialized(kube_api, "web-1"), 20)
    assert node["spec"]["providerID"] == f"cloudsigma://{new['uuid']}", "initialized from the old snapshot"
    ip = new["nics"][0]["runtime"]["ip_v4"]["uuid"]
    assert ("ExternalIP", ip) in addresses(node)
    assert world.counters["GET /servers/detail/"] == listings + 1  # one listing newer than the Node
    synced = [e for e in logs if e["event"] == "node_reconciled" and e.get("reason") == "initialized"]
    last = synced[-1]
    assert last["matched_by"] == ("systemUUID" if with_system_uuid else "name")
    assert last["evidence_request_ids"] and last["evidence_age_s"] >= 0  # the evidence and its age are named


async def test_a_byte_swapped_system_uuid_is_recognised(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "swap-1", nics=[public_dhcp_nic("auto")])
    world.add_server(ALICE, "swap-1", nics=[public_dhcp_nic("auto")])  # a twin: only the uuid decides
    await register_node(kube_api, "swap-1", system_uuid=swapped(server["uuid"]).upper())
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator):
        node = await wait_for(lambda: initialized(kube_api, "swap-1"), 20)
    assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"


@pytest.mark.parametrize("lookup_by_uuid", [True, False], ids=["mismatch-warned", "lookup-off"])
async def test_a_system_uuid_of_no_server_never_matches_by_name(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
        lookup_by_uuid: bool) -> None:
    server = world.add_server(ALICE, "odd-1", nics=[public_dhcp_nic("auto")])
    reported = str(uuidlib.uuid4())
    await register_node(kube_api, "odd-1", system_uuid=reported)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="0.5s",
                           node_lookup_by_system_uuid=lookup_by_uuid):
        if not lookup_by_uuid:
            node = await wait_for(lambda: initialized(kube_api, "odd-1"), 20)
            assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"
            return

        async def warned() -> list[dict[str, Any]]:
            return [e for e in await events_for(kube_api, "odd-1") if e["reason"] == "SystemUUIDMismatch"]

        events = await wait_for(warned, 15)
        await asyncio.sleep(2)  # retries: still one Event (its count grows), still tainted
        events = await warned()
        node = await node_json(kube_api, "odd-1")
    assert UNINIT in taint_keys(node) and not node["spec"].get("providerID")
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert reported in events[0]["message"] and server["uuid"] in events[0]["message"]


async def test_a_node_registered_during_an_outage_waits_for_a_listing_newer_than_it(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "early", nics=[public_dhcp_nic("auto")])
    late = world.add_server(ALICE, "late", nics=[public_dhcp_nic("auto")])  # already in the snapshot
    await register_node(kube_api, "early")
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="2s",
                               api_retry_attempts=1, http_timeout="1s") :
            await wait_for(lambda: initialized(kube_api, "early"), 20)
            world.fail_next(None, status=503, path_prefix="/servers/")  # type: ignore[arg-type]
            registered = await register_node(kube_api, "late")  # no systemUUID: only its name can match
            await asyncio.sleep(3)  # the snapshot (up to max-age x stale-factor old) still names "late"'s server
            node = await node_json(kube_api, "late")
            assert UNINIT in taint_keys(node) and not node["spec"].get("providerID"), "initialized from a stale " \
                "snapshot during an outage"
            recovered_from = len(world.requests_to("GET /servers/detail/"))
            world.clear_faults()
            node = await wait_for(lambda: initialized(kube_api, "late"), 20)
    assert node["spec"]["providerID"] == f"cloudsigma://{late['uuid']}"
    ok = [r for r in world.requests_to("GET /servers/detail/")[recovered_from:] if r.status == 200]
    created = registered.metadata.creation_timestamp.timestamp()
    line = next(e for e in logs if e["event"] == "node_reconciled" and e.get("node") == "late"
                and e.get("reason") == "initialized")
    used = next(r for r in ok if r.request_id in line["evidence_request_ids"])
    assert used.started_at > created + 1.0, "the listing behind the providerID started before the Node existed"


async def test_a_burst_of_nodes_with_system_uuids_costs_at_most_two_listings(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    count = 200
    servers = [world.add_server(ALICE, f"b-{i}", nics=[public_dhcp_nic("auto")]) for i in range(count)]
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="10s",
                           node_status_update_frequency="1h", api_page_size=0):
        await asyncio.sleep(0.5)
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with sem:
                await register_node(kube_api, f"b-{i}", system_uuid=servers[i]["uuid"], status_on_create=True)

        t0 = time.time()
        await asyncio.gather(*(one(i) for i in range(count)))
        t1 = time.time()

        async def all_done() -> bool:
            nodes = (await CoreV1Api(kube_api).list_node()).items
            return sum(1 for n in nodes if not any(t.key == UNINIT for t in n.spec.taints or [])) == count

        await wait_for(all_done, 60, interval=0.5)
    listings = world.counters["GET /servers/detail/"]
    starts = [round(r.started_at - t0, 2) for r in world.requests_to("GET /servers/detail/")]
    assert listings <= 2, f"{listings} listings for {count} nodes with systemUUIDs, at {starts}, registered {t1-t0}"
