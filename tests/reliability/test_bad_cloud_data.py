"""Odd CloudSigma data through the emulator: missing, null and wrong-typed fields, invalid IP strings, objects
that cannot be parsed at all, and a single page of 5,000 servers. The API server never rejects a write."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, private_vlan_nic, public_dhcp_nic, public_static_nic
from tests.integration.harness import ALICE, node_json, taint_keys
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import (
    UNINIT,
    CCMRun,
    is_untouched,
    missing,
    running,
    wait_initialized,
    warnings_for,
)
from tests.unit.test_properties import valid_ip

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
VLAN = "5bc05e7e-6555-4f40-add8-3b8e91447702"
ADDRESS_TYPES = {"InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"}


def address_problems(node: dict[str, Any]) -> list[str]:
    problems = []
    for entry in (node.get("status") or {}).get("addresses") or []:
        kind, value = entry.get("type"), entry.get("address", "")
        if kind not in ADDRESS_TYPES:
            problems.append(f"address type {kind!r}")
        elif kind.endswith("IP") and not valid_ip(value):
            problems.append(f"{kind} {value!r} is not an IP address")
    return problems


def rejected_writes(ccm: CCMRun) -> list[dict[str, Any]]:
    """Log lines of Kubernetes calls the API server refused (other than 409 conflicts, which are retried)."""
    return [e for e in ccm.logs.events
            if isinstance(e.get("k8s_status"), int) and e["k8s_status"] >= 400 and e["k8s_status"] != 409]


def mutate(server: dict[str, Any], **fields: Any) -> None:
    server.update(fields)


def bad_nic(v4: Any = None, v6: Any = None, runtime: Any = None, mac: str = "22:bb:00:00:00:01") -> dict[str, Any]:
    return {"boot_order": None, "ip_v4_conf": v4, "ip_v6_conf": v6, "mac": mac, "model": "virtio",
            "runtime": runtime, "vlan": None}


async def test_odd_server_objects(world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
                                  kube_api: ApiClient) -> None:
    # (name, what is wrong, expect an instance-type label)
    cases: list[tuple[str, str, bool]] = []

    def case(name: str, what: str, sized: bool, ip: str, **fields: Any) -> dict[str, Any]:
        server = world.add_server(ALICE, name, nics=[public_static_nic(ip)])
        mutate(server, **fields)
        cases.append((name, what, sized))
        return server

    case("odd-types", "cpu `\"fast\"`, smp `true`, mem `null`", False, "185.12.20.1", cpu="fast", smp=True, mem=None)
    case("odd-huge", "cpu 10^30, smp 10^6, mem 10^40 (instance type longer than 63 characters)", False,
         "185.12.20.2", cpu=10**30, smp=10**6, mem=10**40)
    case("odd-negative", "negative cpu and memory", False, "185.12.20.3", cpu=-2000, mem=-1)
    case("odd-float", "cpu 2000.5, mem `\"4096\"` as a string", False, "185.12.20.4", cpu=2000.5, mem="4096")
    case("odd-shapes", "meta a list, tags a string, owner-less runtime a string, unknown extra fields", True,
         "185.12.20.5", meta=["x"], tags="none", runtime="running", surprise={"nested": [1, 2]})
    odd_ips = case("odd-ips", "invalid IP strings next to a valid NIC", True, "185.12.20.6")
    odd_ips["nics"].append(bad_nic(v4={"conf": "static", "ip": {"uuid": "999.1.2.3"}}, mac="22:bb:00:00:00:02"))
    odd_ips["nics"].append(bad_nic(v4={"conf": "dhcp", "ip": None}, runtime={"ip_v4": {"uuid": "not-an-ip"}},
                                   mac="22:bb:00:00:00:03"))
    odd_ips["nics"].append(bad_nic(v4={"conf": "static", "ip": {"uuid": " 185.12.20.60 "}}, mac="22:bb:00:00:00:04"))
    odd_ips["nics"].append(bad_nic(v4={"conf": "static", "ip": {"uuid": "127.0.0.1"}}, mac="22:bb:00:00:00:05"))
    scoped = case("odd-scoped-ipv6", "IPv6 with a zone id (`2001:db8::7%eth0`)", True, "185.12.20.7")
    scoped["nics"].append(bad_nic(v6={"conf": "static", "ip": {"uuid": "2001:db8::7%eth0"}}, mac="22:bb:00:00:00:06"))
    nic_shapes = case("odd-nic-shapes", "NICs that are null, a number, a list; conf of wrong types", True,
                      "185.12.20.8")
    nic_shapes["nics"] += [None, 42, ["x"], bad_nic(v4="static", v6=17, runtime=[], mac="22:bb:00:00:00:07"),
                           {"ip_v4_conf": {"conf": None, "ip": 5}, "mac": None, "vlan": "not-a-ref"}]
    unparseable = world.add_server(ALICE, "odd-unparseable", nics=[public_static_nic("185.12.20.9")])
    unparseable["uuid"] = None  # an object the CCM cannot use at all
    names = [c[0] for c in cases]
    for name in [*names, "odd-unparseable"]:
        await register_node(kube_api, name)
    registry.record("input/cloud", "odd server objects through the emulator",
                    injected="; ".join(f"{name}: {what}" for name, what, _ in cases)
                             + "; odd-unparseable: `uuid: null`",
                    verified="every usable server's node initialized (instance-type label only from valid sizes), "
                             "every written address a valid IP of an allowed type (invalid/loopback/zoned ones "
                             "dropped); the unusable object logged (`cloudsigma_invalid_objects`) and its node left "
                             "untouched; no write rejected by the API server (no 4xx/422 in the CCM's log)",
                    bad_inputs=len(cases) + 1, nodes_checked=len(cases) + 1)
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        nodes = {}
        for name, _, sized in cases:
            nodes[name] = await wait_initialized(kube_api, name, instance_type=sized)
        await wait_for(lambda: warnings_for(kube_api, "odd-unparseable", "ServerNotFound"), 15)
        assert ccm.alive
        rejected = rejected_writes(ccm)
        invalid_logged = ccm.logs.named("cloudsigma_invalid_objects")
        writes = dict(ccm.parts.kube.writes)
    problems = {name: address_problems(node) for name, node in nodes.items() if address_problems(node)}
    for name, _, sized in cases:
        assert ("node.kubernetes.io/instance-type" in nodes[name]["metadata"]["labels"]) == sized, name
    ips = {a["address"] for a in nodes["odd-ips"]["status"]["addresses"]}
    assert "185.12.20.6" in ips and "185.12.20.60" in ips and "127.0.0.1" not in ips
    assert invalid_logged and invalid_logged[0]["count"] == 1
    assert is_untouched(await node_json(kube_api, "odd-unparseable"))
    assert not rejected, rejected
    assert writes.get("PATCH nodes/status", 0) >= len(cases)
    lost = await missing(kube_api, [*names, "odd-unparseable"])
    registry.lost(len(lost))
    assert not lost
    assert not problems, problems


async def test_five_thousand_servers_in_one_page(world: EmulatorState, emulator: EmulatorServer,
                                                 kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    total = 5000
    started = time.monotonic()
    for i in range(total):
        world.add_server(ALICE, f"big-{i:04d}", nics=[public_dhcp_nic("auto")])
    world.servers[next(iter(world.servers))]["cpu"] = {"not": "a number"}  # one odd object among them
    build_seconds = time.monotonic() - started
    names = [f"big-{i:04d}" for i in (0, 1, 2499, 2500, 4998, 4999)]
    for name in names:
        await register_node(kube_api, name)
    registry.record("input/cloud", "huge page: 5,000 servers in one response",
                    injected=f"{total} servers listed in ONE page (`limit=0`), one with a wrong-typed cpu",
                    verified="the nodes of the first, middle and last servers initialized from one listing per "
                             "refresh; no write rejected; daemon running",
                    bad_inputs=1, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator, server_cache_max_age="10s",
                       http_timeout="10s") as ccm:
        for name in names:
            await wait_initialized(kube_api, name, 30, instance_type=name != "big-0000")
        assert ccm.alive
        rejected = rejected_writes(ccm)
    listings = world.requests_to("GET /servers/detail/")
    assert listings and all("limit=0" in r.query for r in listings)
    assert len(listings) <= 3, f"{len(listings)} listings of {total} servers"
    assert not rejected
    assert build_seconds < 60
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_servers_without_an_ip_keep_their_nodes_tainted(world: EmulatorState, emulator: EmulatorServer,
                                                              kube_apiserver: KubeAPIServer,
                                                              kube_api: ApiClient) -> None:
    stopped = world.add_server(ALICE, "noip-stopped", status="stopped", nics=[public_dhcp_nic("auto")])
    not_a_list = world.add_server(ALICE, "noip-nics-not-a-list", nics=[public_static_nic("185.12.21.1")])
    not_a_list["nics"] = {"0": not_a_list["nics"][0]}  # an object instead of the documented list
    bad_ip = world.add_server(ALICE, "noip-bad-ip")
    bad_ip["nics"] = [bad_nic(v4={"conf": "static", "ip": {"uuid": "not-an-ip"}})]
    world.add_server(ALICE, "noip-vlan-bare", nics=[private_vlan_nic(VLAN)])
    world.add_server(ALICE, "noip-vlan-kubelet", nics=[private_vlan_nic(VLAN)])
    tainted = ["noip-stopped", "noip-nics-not-a-list", "noip-bad-ip", "noip-vlan-bare"]
    for name in tainted:
        await register_node(kube_api, name)
    await register_node(kube_api, "noip-vlan-kubelet", addresses=[("InternalIP", "10.0.0.9")])
    registry.record("input/cloud", "servers without a usable IP address",
                    injected="a stopped server (DHCP address unknown), `nics` an object instead of a list, a NIC "
                             "whose IP is `\"not-an-ip\"`, a VLAN-only server whose kubelet reported no IP; and a "
                             "VLAN-only server whose kubelet reported InternalIP 10.0.0.9",
                    verified="the 4 nodes stay tainted, untouched, with ONE Warning `NoNodeAddress` Event each; "
                             "`cloudsigma_server_data_unusable` names the server and what was wrong (`nics is not a "
                             "list`, `ip \"not-an-ip\" ignored`) at most once per snapshot; the VLAN node with the "
                             "kubelet's InternalIP initialized; the stopped server started → its node initialized. "
                             "Before the fix: untainted with only a Hostname",
                    bad_inputs=len(tainted) + 1, nodes_checked=len(tainted) + 1)
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        vlan = await wait_initialized(kube_api, "noip-vlan-kubelet")

        async def decided(name: str) -> bool:
            # an event says why it stays tainted — or (the failure this guards against) the taint is gone
            node = await node_json(kube_api, name)
            return bool(await warnings_for(kube_api, name, "NoNodeAddress")) or UNINIT not in taint_keys(node)

        for name in tainted:
            await wait_for(partial(decided, name), 15, message=f"a decision on {name}")
        await asyncio.sleep(3)  # a few retries with backoff
        nodes = {name: await node_json(kube_api, name) for name in tainted}
        for name in tainted:
            assert is_untouched(nodes[name]), f"{name} was written to: {nodes[name]['status'].get('addresses')}"
        events = {name: await warnings_for(kube_api, name, "NoNodeAddress") for name in tainted}
        unusable = ccm.logs.named("cloudsigma_server_data_unusable")
        snapshots = ccm.parts.cache.refreshes
        world.set_status(stopped["uuid"], "running")  # its DHCP address is known again
        started = await wait_initialized(kube_api, "noip-stopped", 20)
        assert ccm.alive
    for name in tainted:
        assert len(events[name]) == 1, f"{len(events[name])} NoNodeAddress Events for {name}"
        assert "InternalIP or ExternalIP" in events[name][0]["message"]
    by_server: dict[str, list[dict[str, Any]]] = {}
    for line in unusable:
        by_server.setdefault(line["server_uuid"], []).append(line)
    assert by_server.get(not_a_list["uuid"]) and "nics is not a list (dict)" in by_server[not_a_list["uuid"]][0][
        "problems"]
    assert by_server.get(bad_ip["uuid"]) and 'ip "not-an-ip" ignored' in by_server[bad_ip["uuid"]][0]["problems"]
    assert all(len(lines) <= snapshots for lines in by_server.values()), (len(unusable), snapshots)
    assert all(line["level"] == "warning" for line in unusable)
    assert ("InternalIP", "10.0.0.9") in {(a["type"], a["address"]) for a in vlan["status"]["addresses"]}
    assert any(a["type"] == "ExternalIP" for a in started["status"]["addresses"])
    lost = await missing(kube_api, [*tainted, "noip-vlan-kubelet"])
    registry.lost(len(lost))
    assert not lost
