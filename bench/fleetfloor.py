"""The floor of the fleet burst: the same Kubernetes writes the CCM sends to initialise a Node, sent by a bare
client with no CCM logic (no watch, no CloudSigma lookup, no decision) right after each Node's create returns.

Per Node, exactly what ``ccm/nodes/apply.py`` sends through ``ccm/kube/patching.py`` (the same functions, with
the uid and resourceVersion preconditions): the ``nodes/status`` merge patch replacing ``status.addresses``, then
the ``nodes`` merge patch of providerID, the labels the CCM added and the taints without the uninitialized one.
The content is copied from a Node the CCM initialised in the same tenant (its addresses, providerID and
labels), so the floor writes what the CCM wrote.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from bench.kube import NODES, UNINITIALIZED_TAINT, Registration, admin_client, call, node_body
from ccm.kube import patching
from ccm.kube.transport import KubeTransport
from tests.realenv.kubeapiserver import KubeAPIServer


@dataclass(frozen=True)
class Initialised:
    """What the CCM wrote to one Node: the floor writes the same to another."""

    addresses: list[dict[str, str]]
    provider_id: str | None
    labels: dict[str, str]
    taints: list[dict[str, Any]]


def initialised_template(node: dict[str, Any], kubelet_labels: dict[str, str]) -> Initialised:
    """The CCM's part of an initialised Node: labels the kubelet did not set, taints without the uninitialized
    one."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in kubelet_labels}
    taints = [t for t in spec.get("taints") or [] if t.get("key") != UNINITIALIZED_TAINT]
    return Initialised(addresses=list((node.get("status") or {}).get("addresses") or []),
                       provider_id=spec.get("providerID"), labels=labels, taints=taints)


async def read_templates(server: KubeAPIServer, names: list[str]) -> list[Initialised]:
    """The CCM's writes on ``names`` (initialised Nodes of one tenant)."""
    api = await admin_client(server.admin_kubeconfig, pool_size=2)
    try:
        out = []
        for name in names:
            status, raw = await call(api, "GET", f"{NODES}/{name}")
            if status != 200:
                raise RuntimeError(f"reading node {name} failed: {status}")
            node = json.loads(raw)
            out.append(initialised_template(node, node_body(name)["metadata"]["labels"]))
        return out
    finally:
        await api.close()


async def floor_tenant(server: KubeAPIServer, names: list[str], templates: list[Initialised], *,
                       concurrency: int | None = None) -> Registration:
    """Create ``names`` concurrently (at most ``concurrency`` creates in flight, like the burst's registration;
    default all at once) and initialise each as soon as its create returns (two patches)."""
    api = await admin_client(server.admin_kubeconfig, pool_size=max(1, len(names)))
    kube = KubeTransport(api)
    reg = Registration(started=time.monotonic())
    creates = asyncio.Semaphore(concurrency or max(1, len(names)))

    async def one(name: str, tpl: Initialised) -> None:
        async with creates:
            status, raw = await call(api, "POST", NODES, body=node_body(name))
        if not 200 <= status < 300:
            raise RuntimeError(f"creating node {name} failed: {status} {raw[:300]!r}")
        reg.created_at[name] = time.monotonic()
        meta = json.loads(raw)["metadata"]
        uid, rv = str(meta["uid"]), str(meta["resourceVersion"])
        answer = await patching.replace_addresses(kube, name, tpl.addresses, uid=uid, resource_version=rv)
        rv = str(answer["metadata"]["resourceVersion"])
        await patching.patch_node(kube, name, uid=uid, resource_version=rv, labels=dict(tpl.labels) or None,
                                  provider_id=tpl.provider_id, taints=tpl.taints)

    try:
        await asyncio.gather(*(one(n, templates[j % len(templates)]) for j, n in enumerate(names)))
    finally:
        await api.close()
    reg.finished = time.monotonic()
    return reg
