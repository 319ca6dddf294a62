"""The one place that writes a :class:`~ccm.nodes.decide.NodePlan` to the Kubernetes API.

Order matters: addresses first (status subresource, full replacement), then providerID/labels/taints in
one merge patch — so a node is never schedulable without its addresses (upstream removes the taint first).
Every write carries the uid and resourceVersion of the Node the plan was decided from. On a 409 the node is
re-read; if it is another object now (deleted and re-registered: a new uid) the attempt ends — the new Node
gets its own reconcile, never a decision made about its predecessor. Otherwise ``replan`` decides again from
the fresh Node, matching its server again from current data (up to 20 times, 50 ms with jitter, as upstream),
so a concurrent writer's change — a label, an address the kubelet just reported — is never lost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog

from ccm.kube import patching
from ccm.kube.errors import Conflict, KubeNotFound
from ccm.kube.fetching import get_node
from ccm.kube.transport import JSON, KubeTransport
from ccm.nodes.decide import NodePlan
from ccm.nodes.view import NodeView, node_view

log = structlog.get_logger(__name__)

Replan = Callable[[NodeView], Awaitable[NodePlan | None]]
"""Decide again for the fresh Node (its server matched again from current data); None: stop, decide later."""


@dataclass
class ApplyResult:
    #: The Node as last known: the record of the last write's answer or re-read, else the one decided from.
    node: NodeView
    #: The API's last answer (a write's or a re-read's) that ``node`` was built from; None if none came.
    fetched: JSON | None
    writes: int
    conflicts: int
    plan: NodePlan
    #: The Node was deleted, or replaced by another object of the same name, before the plan was written.
    superseded: bool = False
    #: ``replan`` found nothing to decide on any more (e.g. the server no longer matches): decide again later.
    abandoned: bool = False


class NodeApplier:
    def __init__(self, kube: KubeTransport, *, conflict_retries: int = 20, conflict_delay: float = 0.05) -> None:
        self._kube = kube
        self._retries = conflict_retries
        self._delay = conflict_delay

    async def apply(self, node: NodeView, plan: NodePlan, replan: Replan) -> ApplyResult:
        """Write ``plan`` (decided from ``node``); on conflict re-read the node and write ``await replan(fresh)``
        instead."""
        writes = conflicts = 0
        first = view = node
        fetched: JSON | None = None
        for attempt in range(self._retries + 1):
            if attempt > 0:
                if view.uid != first.uid:
                    log.info("node_replaced", node=view.name, old_uid=first.uid, new_uid=view.uid,
                             note="the decision was about the previous object: nothing written to this one")
                    return ApplyResult(view, fetched, writes, conflicts, plan, superseded=True)
                fresh_plan = await replan(view)
                if fresh_plan is None:
                    return ApplyResult(view, fetched, writes, conflicts, plan, abandoned=True)
                plan = fresh_plan
            if plan.blocked or plan.empty:
                return ApplyResult(view, fetched, writes, conflicts, plan)
            try:
                rv = view.resource_version
                if plan.addresses is not None:
                    fetched = await patching.replace_addresses(
                        self._kube, view.name, [a.as_dict() for a in plan.addresses],
                        uid=view.uid, resource_version=rv)
                    writes += 1
                    plan = replace(plan, addresses=None)
                    rv = str((fetched.get("metadata") or {}).get("resourceVersion", rv))
                if plan.writes_spec:
                    fetched = await patching.patch_node(
                        self._kube, view.name, uid=view.uid, resource_version=rv, labels=plan.labels or None,
                        annotations=plan.annotations or None, provider_id=plan.provider_id,
                        taints=[dict(t) for t in plan.taints] if plan.taints is not None else None,
                    )
                    writes += 1
                return ApplyResult(node_view(fetched) if fetched is not None else view, fetched, writes, conflicts,
                                   plan)
            except Conflict:
                conflicts += 1
                log.info("node_write_conflict", node=view.name, attempt=attempt + 1)
                await asyncio.sleep(self._delay * (0.5 + random.random()))
                try:
                    fetched = await get_node(self._kube, view.name)
                except KubeNotFound:
                    log.info("node_replaced", node=view.name, old_uid=first.uid, new_uid=None,
                             note="the node was deleted before the plan was written")
                    return ApplyResult(view, fetched, writes, conflicts, plan, superseded=True)
                view = node_view(fetched)
        raise Conflict(f"node {first.name} kept changing: gave up after {self._retries} conflicts",
                       status=409, method="PATCH", path="/api/v1/nodes")
