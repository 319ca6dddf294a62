"""The one place that writes a :class:`~ccm.nodes.decide.NodePlan` to the Kubernetes API.

Order matters: addresses first (status subresource, full replacement), then providerID/labels/taints in
one merge patch guarded by resourceVersion — so a node is never schedulable without its addresses
(upstream removes the taint first). On a 409 the node is re-read and the plan recomputed from the fresh
object (up to 20 times, 50 ms with jitter, as upstream), so a concurrent writer's change is never lost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from ccm.kube import patching
from ccm.kube.errors import Conflict
from ccm.kube.fetching import get_node
from ccm.kube.transport import JSON, KubeTransport
from ccm.nodes.decide import NodePlan
from ccm.nodes.view import NodeView, node_view

log = structlog.get_logger(__name__)

Replan = Callable[[NodeView], NodePlan]


@dataclass
class ApplyResult:
    node: JSON
    writes: int
    conflicts: int
    plan: NodePlan


class NodeApplier:
    def __init__(self, kube: KubeTransport, *, conflict_retries: int = 20, conflict_delay: float = 0.05) -> None:
        self._kube = kube
        self._retries = conflict_retries
        self._delay = conflict_delay

    async def apply(self, node: JSON, plan: NodePlan, replan: Replan) -> ApplyResult:
        """Write ``plan``; on conflict re-read the node and write ``replan(fresh)`` instead."""
        writes = conflicts = 0
        current = node
        for attempt in range(self._retries + 1):
            view = node_view(current)
            if attempt > 0:
                plan = replan(view)
            if plan.blocked or plan.empty:
                return ApplyResult(current, writes, conflicts, plan)
            try:
                if plan.addresses is not None:
                    current = await patching.replace_addresses(
                        self._kube, view.name, [a.as_dict() for a in plan.addresses])
                    writes += 1
                    plan = replace(plan, addresses=None)
                if plan.writes_spec:
                    rv = str((current.get("metadata") or {}).get("resourceVersion", view.resource_version))
                    current = await patching.patch_node(
                        self._kube, view.name, resource_version=rv, labels=plan.labels or None,
                        annotations=plan.annotations or None, provider_id=plan.provider_id,
                        taints=list(plan.taints) if plan.taints is not None else None,
                    )
                    writes += 1
                return ApplyResult(current, writes, conflicts, plan)
            except Conflict:
                conflicts += 1
                log.info("node_write_conflict", node=view.name, attempt=attempt + 1)
                await asyncio.sleep(self._delay * (0.5 + random.random()))
                current = await get_node(self._kube, view.name)
        raise Conflict(f"node {node_view(node).name} kept changing: gave up after {self._retries} conflicts",
                       status=409, method="PATCH", path="/api/v1/nodes")
