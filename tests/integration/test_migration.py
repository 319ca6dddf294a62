"""Migrating a tenant from the kube-dc CCM (deploy/README.md, "Migrating from the kube-dc CCM").

The Go CCM of kube-dc leaves Nodes with ``spec.providerID`` ``cloudsigma://<uuid>`` (set by the kubelet), the
uninitialized taint removed, **no addresses** and no instance-type or topology labels. This CCM, started on such
a cluster, adopts them: addresses and the missing labels are added; nothing is deleted (no Node, no label, no
annotation, no taint), no taint is added back, and each Node costs two writes at most (one patch of its labels, one
of its status). Real kube-apiserver with an audit log of every write, the CloudSigma emulator, the CCM's
controllers as the daemon runs them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubernetes_asyncio.client import CoreV1Api

from ccm.nodes.labels import INSTANCE_TYPE, REGION, ZONE
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, addresses, node_json, running_ccm, taint_keys, two_users
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import delete_all_nodes, register_node, wait_for
from tests.reliability.replicas import audit_writes

NODES = 5
OPERATOR_LABEL = ("example.com/pool", "workers")  # the operator's own: must survive
OPERATOR_TAINT = {"key": "dedicated", "value": "ingress", "effect": "NoSchedule"}


def kube_dc_shaped(node: dict[str, Any]) -> bool:
    return (not (node.get("status") or {}).get("addresses") and INSTANCE_TYPE not in node["metadata"]["labels"]
            and str((node.get("spec") or {}).get("providerID", "")).startswith("cloudsigma://"))


async def test_nodes_left_by_the_kube_dc_ccm_are_adopted(
        emulator_state: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer) -> None:
    two_users(emulator_state)
    api = await api_client_for(audited_apiserver.admin_kubeconfig)
    try:
        await delete_all_nodes(api)  # the audited API server lives for the session
        ips = {}
        for i in range(NODES):
            name = f"kube-dc-{i}"
            ips[name] = f"94.26.101.{20 + i}"
            server = emulator_state.add_server(ALICE, name, nics=[public_dhcp_nic(ips[name])])
            await register_node(api, name, taint=False, addresses=None, provider_id=f"cloudsigma://{server['uuid']}",
                                labels=dict([OPERATOR_LABEL]))
        # One with an operator's taint of its own (the kube-dc CCM removed only its uninitialized taint).
        await CoreV1Api(api).patch_node("kube-dc-0", {"spec": {"taints": [OPERATOR_TAINT]}})
        before = {f"kube-dc-{i}": await node_json(api, f"kube-dc-{i}") for i in range(NODES)}
        assert all(kube_dc_shaped(n) for n in before.values())

        started = time.time()
        async with running_ccm(audited_apiserver.admin_kubeconfig, emulator, cluster_name="migrated"):
            async def adopted() -> bool:
                nodes = [await node_json(api, name) for name in before]
                return all(addresses(n) and INSTANCE_TYPE in n["metadata"]["labels"] for n in nodes)

            await wait_for(adopted, 30)
            await asyncio.sleep(3)  # a few resync periods more: nothing further may be written
        after = {name: await node_json(api, name) for name in before}
    finally:
        await api.close()

    for name, node in after.items():
        old = before[name]
        assert node["metadata"]["uid"] == old["metadata"]["uid"], f"{name} was deleted and re-created"
        assert node["spec"]["providerID"] == old["spec"]["providerID"]
        assert ("ExternalIP", ips[name]) in addresses(node), node["status"]["addresses"]
        labels = node["metadata"]["labels"]
        assert labels[INSTANCE_TYPE] == "1c-2000mhz-2048mib"
        assert labels[REGION] == "zrh" and labels[ZONE] == "zrh"
        # Nothing removed or changed: every label, annotation and taint the node had is still there, as it was.
        assert old["metadata"]["labels"].items() <= labels.items(), name
        assert (old["metadata"].get("annotations") or {}).items() <= (node["metadata"].get("annotations")
                                                                      or {}).items(), name
        assert (old["spec"].get("taints") or []) == (node["spec"].get("taints") or []), name
        assert "node.cloudprovider.kubernetes.io/uninitialized" not in taint_keys(node)
    assert after["kube-dc-0"]["spec"]["taints"] == [OPERATOR_TAINT]

    writes = [w for w in audit_writes(audited_apiserver) if w.received >= started and w.resource.startswith("nodes")]
    assert not [w for w in writes if w.verb == "delete"], writes
    per_node: dict[str, list[str]] = {}
    for w in writes:
        per_node.setdefault(w.name, []).append(f"{w.verb} {w.resource} {w.code}")
    assert set(per_node) == set(before), per_node
    assert all(len(ws) <= 2 for ws in per_node.values()), per_node
