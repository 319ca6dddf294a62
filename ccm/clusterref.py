"""``--cluster-ref namespace/name``: the single-tenant mode reads its owner email and region from the tenant's
CloudSigmaCluster in the management cluster (seed 000's diagram) and follows them while running.

One :class:`~ccm.kube.informer.Informer` lists and watches exactly that object (a ``metadata.name`` field
selector, so a Role with ``resourceNames`` suffices); :func:`ccm.clusters.tenants.parse_owner` reads it. A change of
either value sets :attr:`ClusterRefFollower.changed`; the daemon then rebuilds its controllers with the new
identity (new credentials, new cache), without a restart. An object that disappears or turns invalid keeps the
last good identity (and says why): a half-done edit must not stop a working CCM.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from ccm.clusters.clusterapi import clusters_path
from ccm.clusters.tenants import TenantError, parse_owner, slim_cluster
from ccm.kube.informer import Informer
from ccm.kube.transport import JSON, KubeTransport

__all__ = ["ClusterIdentity", "ClusterRefFollower"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ClusterIdentity:
    """Who the tenant's CCM acts as, as its CloudSigmaCluster says: the owner's email and the region."""

    user_email: str
    region: str


class ClusterRefFollower:
    """Keeps :attr:`current` equal to the owner email and region of one CloudSigmaCluster."""

    def __init__(self, kube: KubeTransport, namespace: str, name: str, *, watch_timeout: float = 300.0) -> None:
        self.ref = f"{namespace}/{name}"
        self.informer = Informer(kube, clusters_path(namespace), field_selector=f"metadata.name={name}",
                                 transform=slim_cluster, watch_timeout=watch_timeout, name="cluster-ref")
        self.informer.add_handler(self._on_change)
        #: The identity to serve with (None until the object was read once and was valid).
        self.current: ClusterIdentity | None = None
        #: Why the object cannot be used now (the last good identity is kept), or None.
        self.problem: str | None = None
        #: Set when :attr:`current` is first known or changes.
        self.changed = asyncio.Event()

    async def run(self) -> None:
        await self.informer.run()

    async def _on_change(self, key: str, old: JSON | None, new: JSON | None) -> None:
        if new is None:
            self._trouble(f"CloudSigmaCluster {self.ref} does not exist (any more)")
            return
        try:
            email, region = parse_owner(new)
        except TenantError as exc:
            self._trouble(str(exc))
            return
        identity = ClusterIdentity(email, region)
        if self.problem is not None:
            log.info("cluster_ref_problem_resolved", cluster_ref=self.ref)
        self.problem = None
        if identity != self.current:
            log.info("cluster_ref_read", cluster_ref=self.ref, cs_user=email, region=region,
                     previous_user=self.current.user_email if self.current else None,
                     previous_region=self.current.region if self.current else None)
            self.current = identity
            self.changed.set()

    def _trouble(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("cluster_ref_unusable", cluster_ref=self.ref, error=problem,
                        keeps=("the last good owner and region" if self.current is not None
                               else "waiting: nothing is served until it can be read"))
        self.problem = problem
