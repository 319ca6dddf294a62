"""Writing the load-balancer decisions: the only module that changes Services, MetalLB's objects, the eligible-Node
label and the claims in the IPs' ``meta``.

Service metadata writes (finalizer, annotations) carry the resourceVersion decided on (409: read again, decide
again). The status write is a merge patch of ``status.loadBalancer`` alone. MetalLB's objects are server-side
applied under our field manager, so nothing else in them is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

from ccm.kube.errors import KubeNotFound
from ccm.kube.patching import MERGE_PATCH, patch_node
from ccm.kube.transport import JSON, KubeTransport
from ccm.loadbalancer.announcer import (
    ELIGIBLE_LABEL,
    POOL_NAME,
    address_pool,
    l2_advertisement,
    metallb_path,
    service_annotations,
)
from ccm.loadbalancer.ipam import CloudIp, claimed_meta, released_meta
from ccm.loadbalancer.service import FINALIZER, ServiceView
from ccm.nodes.view import NodeView
from cloudsigma.client import CloudSigmaClient

APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "cloudsigma-ccm"


def services_path(namespace: str, name: str, subresource: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services/{name}" + (f"/{subresource}" if subresource else "")


class LoadBalancerApplier:
    """Sends the writes; decides nothing."""

    def __init__(self, kube: KubeTransport, client: CloudSigmaClient, *, announcer: str,
                 metallb_namespace: str) -> None:
        self._kube = kube
        self._client = client
        self._announcer = announcer
        self._namespace = metallb_namespace
        self._pool_lock = asyncio.Lock()
        self._pool_written: tuple[str, ...] | None = None
        self._l2_written = False

    # ---------------------------------------------------------------- the cloud: claims

    async def claim(self, ip: CloudIp, cluster: str, view: ServiceView) -> None:
        await self._client.update_ip_meta(ip.address, claimed_meta(ip.meta, cluster, view.key, view.uid))

    async def release(self, ip: CloudIp) -> None:
        await self._client.update_ip_meta(ip.address, released_meta(ip.meta))

    # ---------------------------------------------------------------- the Service

    async def _patch_service(self, view: ServiceView, metadata: JSON) -> JSON:
        body = {"metadata": {"resourceVersion": view.resource_version, **metadata}}
        return await self._kube.request("PATCH", services_path(view.namespace, view.name), body=body,
                                        content_type=MERGE_PATCH)

    async def add_finalizer(self, view: ServiceView) -> JSON:
        return await self._patch_service(view, {"finalizers": [*view.finalizers, FINALIZER]})

    async def remove_finalizer(self, view: ServiceView) -> JSON:
        return await self._patch_service(view, {"finalizers": [f for f in view.finalizers if f != FINALIZER]})

    async def set_annotations(self, view: ServiceView, ip: str | None) -> JSON | None:
        """The announcer's annotations for ``ip`` (None: removed); no write when they already say so."""
        wanted = service_annotations(self._announcer, ip)
        if all(view.annotations.get(k) == v for k, v in wanted.items()):
            return None
        return await self._patch_service(view, {"annotations": wanted})

    async def set_status(self, view: ServiceView, ip: str | None) -> JSON | None:
        """``status.loadBalancer.ingress`` = [ip] (None: emptied); no write when it already says so."""
        if view.ingress == ((ip,) if ip else ()):
            return None
        body = {"status": {"loadBalancer": {"ingress": [{"ip": ip}]} if ip else {"ingress": None}}}
        return await self._kube.request("PATCH", services_path(view.namespace, view.name, "status"), body=body,
                                        content_type=MERGE_PATCH)

    # ---------------------------------------------------------------- MetalLB

    async def sync_pool(self, addresses: Iterable[str]) -> bool:
        """The IPAddressPool holds exactly ``addresses`` (deleted when there are none) and the L2Advertisement
        exists. One writer at a time; nothing is sent when the last write said the same. True when written."""
        if self._announcer != "metallb":
            return False
        wanted = tuple(sorted(set(addresses)))
        async with self._pool_lock:
            if not self._l2_written:
                await self._apply(metallb_path(self._namespace, "l2advertisements", POOL_NAME),
                                  l2_advertisement(self._namespace))
                self._l2_written = True
            if wanted == self._pool_written:
                return False
            path = metallb_path(self._namespace, "ipaddresspools", POOL_NAME)
            if wanted:
                await self._apply(path, address_pool(self._namespace, wanted))
            else:
                with contextlib.suppress(KubeNotFound):
                    await self._kube.request("DELETE", path)
            self._pool_written = wanted
            return True

    async def _apply(self, path: str, obj: Mapping[str, object]) -> JSON:
        return await self._kube.request("PATCH", path, query={"fieldManager": FIELD_MANAGER, "force": "true"},
                                        body=dict(obj), content_type=APPLY_PATCH)

    # ---------------------------------------------------------------- Nodes

    async def label_node(self, node: NodeView, eligible: bool) -> JSON:
        return await patch_node(self._kube, node.name, resource_version=node.resource_version, uid=node.uid,
                                labels={ELIGIBLE_LABEL: "true" if eligible else None})
