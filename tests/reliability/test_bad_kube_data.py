"""Odd Kubernetes data: long and dotted node names, foreign providerIDs, labels already set, invalid
``alpha.kubernetes.io/provided-node-ip`` annotations — each left as the upstream contract says, with an event."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.nodes.labels import INSTANCE_TYPE, INSTANCE_TYPE_BETA, REGION, ZONE
from tests.emulator import EmulatorServer, EmulatorState, public_static_nic
from tests.integration.harness import ALICE, addresses, node_json
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import UNINIT, is_untouched, missing, running, wait_initialized, warnings_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]

LONG = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters: the longest node name there is
ODD_NAMES = {
    "longest": LONG,
    "dotted": "worker-1.pool-a.zrh.example.com",
    "digits-first": "0-1-2.example",
    "single-char": "w",
}


async def test_odd_node_names(world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
                              kube_api: ApiClient) -> None:
    assert len(LONG) == 253
    ips = {}
    for i, name in enumerate(ODD_NAMES.values()):
        ips[name] = f"185.12.7.{10 + i}"
        world.add_server(ALICE, name, nics=[public_static_nic(ips[name])])
        # the kubelet's hostname label is the first DNS label (label values have at most 63 characters)
        await register_node(kube_api, name, labels={"kubernetes.io/hostname": name.split(".")[0]})
    registry.record("input/kubernetes", "odd node names",
                    injected="nodes named with 253 characters (the maximum), dots, a leading digit, one character",
                    verified="each initialized: providerID, ExternalIP of its server, Hostname = the full node "
                             "name, labels; nothing rejected by the API server",
                    bad_inputs=len(ODD_NAMES), nodes_checked=len(ODD_NAMES))
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        nodes = {name: await wait_initialized(kube_api, name) for name in ODD_NAMES.values()}
        assert ccm.alive
        rejected = [e for e in ccm.logs.events if e.get("k8s_status") == 422]
    for name, node in nodes.items():
        assert ("ExternalIP", ips[name]) in addresses(node)
        assert ("Hostname", name) in addresses(node)
    assert not rejected
    lost = await missing(kube_api, list(ODD_NAMES.values()))
    registry.lost(len(lost))
    assert not lost


FOREIGN = {
    "foreign-aws": ("aws:///eu-west-1a/i-0abc", True),
    "foreign-gce": ("gce://project/europe-west6-a/vm-1", False),  # already initialized by another CCM
    "foreign-malformed": ("cloudsigma://i-0abc", True),  # our scheme, but no server uuid
}


async def test_foreign_provider_id_is_left_alone(world: EmulatorState, emulator: EmulatorServer,
                                                 kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    before: dict[str, dict[str, Any]] = {}
    for name, (provider_id, tainted) in FOREIGN.items():
        world.add_server(ALICE, name, nics=[public_static_nic("185.12.8.1" if tainted else "185.12.8.2")])
        await register_node(kube_api, name, provider_id=provider_id, taint=tainted)
        before[name] = await node_json(kube_api, name)
    registry.record("input/kubernetes", "foreign providerID",
                    injected="nodes with providerID `aws:///eu-west-1a/i-0abc`, `gce://…` (initialized) and "
                             "`cloudsigma://i-0abc` (no uuid); a CloudSigma server of the same name exists",
                    verified="each untouched (same resourceVersion: no write at all) + Warning `ForeignProviderID` "
                             "and a warning log line quoting the providerID; daemon running",
                    bad_inputs=len(FOREIGN), nodes_checked=len(FOREIGN))
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        events = {name: await wait_for(partial(warnings_for, kube_api, name, "ForeignProviderID"), 15,
                                       message=f"ForeignProviderID event for {name}")
                  for name in FOREIGN}
        await asyncio.sleep(1)  # retries with backoff: still nothing written
        assert ccm.alive
        node_writes = {k: v for k, v in ccm.parts.kube.writes.items() if not k.endswith("events")}
        blocked = {name: ccm.logs.named("node_reconciled", node=name, action="blocked") for name in FOREIGN}
    for name, (provider_id, _) in FOREIGN.items():
        after = await node_json(kube_api, name)
        assert after["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"], name
        assert after["spec"]["providerID"] == provider_id
        assert provider_id in events[name][0]["message"]
        assert blocked[name] and provider_id in blocked[name][0]["reason"], f"no clear log line for {name}"
        assert blocked[name][0]["level"] == "warning"
    assert not node_writes, node_writes
    lost = await missing(kube_api, list(FOREIGN))
    registry.lost(len(lost))
    assert not lost


async def test_existing_labels_are_kept(world: EmulatorState, emulator: EmulatorServer,
                                        kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    preset = {INSTANCE_TYPE: "custom-large", REGION: "somewhere-else", "team": "blue",
              "node-role.kubernetes.io/worker": ""}
    world.add_server(ALICE, "labelled", cpu=4000, smp=2, mem=4 * 1024**3, nics=[public_static_nic("185.12.9.1")])
    await register_node(kube_api, "labelled", labels=preset)
    registry.record("input/kubernetes", "labels already set",
                    injected="node registered with instance-type `custom-large`, region `somewhere-else`, a team "
                             "label and an empty-valued role label",
                    verified="initialized; every preset label kept with its value; only missing ones added "
                             "(zone, beta instance-type)",
                    bad_inputs=1, nodes_checked=1)
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        node = await wait_initialized(kube_api, "labelled")
        assert ccm.alive
    labels = node["metadata"]["labels"]
    assert {k: labels.get(k) for k in preset} == preset
    assert labels[ZONE] == "zrh"
    assert labels[INSTANCE_TYPE_BETA] == "2c-4000mhz-4096mib"
    lost = await missing(kube_api, ["labelled"])
    registry.lost(len(lost))
    assert not lost


BAD_NODE_IPS = {
    "pni-not-an-ip": "not-an-ip",
    "pni-two-ipv4": "185.12.10.1,185.12.10.2",
    "pni-unspecified": "0.0.0.0",
    "pni-empty": "",
    "pni-blank-part": "185.12.10.1,",
    "pni-not-the-servers": "203.0.113.9",
    "pni-three": "185.12.10.1,2a02:1338::1,10.0.0.1",
}


async def test_invalid_provided_node_ip_keeps_the_node_tainted(world: EmulatorState, emulator: EmulatorServer,
                                                               kube_apiserver: KubeAPIServer,
                                                               kube_api: ApiClient) -> None:
    for i, (name, value) in enumerate(BAD_NODE_IPS.items()):
        world.add_server(ALICE, name, nics=[public_static_nic(f"185.12.11.{i + 1}")])
        await register_node(kube_api, name, provided_node_ip=value)
    registry.record("input/kubernetes", "invalid `alpha.kubernetes.io/provided-node-ip`",
                    injected="annotation values: " + ", ".join(f"`{v!r}`" for v in BAD_NODE_IPS.values()),
                    verified="each node stays tainted and untouched (no providerID, addresses or labels) + Warning "
                             "`InvalidNodeAddresses` and a log line saying what to fix; daemon running",
                    bad_inputs=len(BAD_NODE_IPS), nodes_checked=len(BAD_NODE_IPS))
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        events = {name: await wait_for(partial(warnings_for, kube_api, name, "InvalidNodeAddresses"), 15,
                                       message=f"InvalidNodeAddresses event for {name}")
                  for name in BAD_NODE_IPS}
        assert ccm.alive
        blocked = {name: ccm.logs.named("node_reconciled", node=name, action="blocked") for name in BAD_NODE_IPS}
    problems = []
    for name in BAD_NODE_IPS:
        node = await node_json(kube_api, name)
        if not is_untouched(node):
            problems.append(f"{name}: written to: {node['spec']}, {node['status'].get('addresses')}")
        message = events[name][0]["message"]
        if "provided-node-ip" not in message or "tainted" not in message:
            problems.append(f"{name}: unclear event {message!r}")
        if not blocked[name] or "provided-node-ip" not in blocked[name][0].get("problem", ""):
            problems.append(f"{name}: no clear log line")
        assert UNINIT in {t["key"] for t in node["spec"]["taints"]}
    assert not problems, problems
    lost = await missing(kube_api, list(BAD_NODE_IPS))
    registry.lost(len(lost))
    assert not lost


async def test_invalid_provided_node_ip_on_an_initialized_node_is_reported(world: EmulatorState,
                                                                           emulator: EmulatorServer,
                                                                           kube_apiserver: KubeAPIServer,
                                                                           kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "pni-later", nics=[public_static_nic("185.12.13.1")])
    await register_node(kube_api, "pni-later", taint=False, provider_id=f"cloudsigma://{server['uuid']}",
                        addresses=[("ExternalIP", "185.12.13.1"), ("Hostname", "pni-later")],
                        provided_node_ip="185.12.13.99")
    before = await node_json(kube_api, "pni-later")
    registry.record("input/kubernetes", "invalid `provided-node-ip` on an initialized node",
                    injected="an initialized node whose annotation names `185.12.13.99`, not an address of its "
                             "server; addresses re-synced every 0.5 s",
                    verified="addresses left as they are (no write); a warning `node_reconciled` line saying what "
                             "to fix and ONE Warning `InvalidNodeAddresses` Event whose count grows. Before the fix: "
                             "nothing (silent)",
                    bad_inputs=1, nodes_checked=1)
    async with running(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="0.5s") as ccm:
        events = await wait_for(partial(warnings_for, kube_api, "pni-later", "InvalidNodeAddresses"), 15,
                                message="InvalidNodeAddresses event")
        await asyncio.sleep(2)  # a few more resyncs
        events = await warnings_for(kube_api, "pni-later", "InvalidNodeAddresses")
        lines = [e for e in ccm.logs.named("node_reconciled", node="pni-later") if e.get("level") == "warning"]
        assert ccm.alive
    after = await node_json(kube_api, "pni-later")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert len(events) == 1 and "185.12.13.99" in events[0]["message"] and events[0]["count"] >= 2
    assert lines and "185.12.13.99" in lines[0]["problem"]
    lost = await missing(kube_api, ["pni-later"])
    registry.lost(len(lost))
    assert not lost


async def test_provided_node_ip_order_is_restored_once(world: EmulatorState, emulator: EmulatorServer,
                                                       kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "pni-order", nics=[public_static_nic("185.12.14.1", ip_v6="2a02:1338::14")])
    wrong = [("ExternalIP", "185.12.14.1"), ("ExternalIP", "2a02:1338::14"), ("Hostname", "pni-order")]
    await register_node(kube_api, "pni-order", taint=False, provider_id=f"cloudsigma://{server['uuid']}",
                        addresses=wrong, provided_node_ip="2a02:1338::14,185.12.14.1")
    registry.record("input/kubernetes", "provided-node-ip addresses in another order",
                    injected="dual-stack annotation `2a02:1338::14,185.12.14.1` on a node listing the IPv4 address "
                             "first; addresses re-synced every 0.5 s",
                    verified="rewritten once to the annotation's order (IPv6 first, then IPv4, then Hostname); "
                             "no further write over the following resyncs. Before the fix: never rewritten",
                    bad_inputs=1, nodes_checked=1)
    async with running(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="0.5s") as ccm:

        async def reordered() -> list[tuple[str, str]] | None:
            node = await node_json(kube_api, "pni-order")
            got = [(a["type"], a["address"]) for a in node["status"]["addresses"]]
            return got if got != wrong else None

        got = await wait_for(reordered, 15, message="addresses rewritten")
        await asyncio.sleep(2)  # four more resyncs
        writes = ccm.parts.kube.writes.get("PATCH nodes/status", 0)
        assert ccm.alive
    assert got == [("ExternalIP", "2a02:1338::14"), ("ExternalIP", "185.12.14.1"), ("Hostname", "pni-order")]
    assert writes == 1, f"{writes} status writes"
    lost = await missing(kube_api, ["pni-order"])
    registry.lost(len(lost))
    assert not lost
