"""What a Service asks of the load-balancer controller: a pure view of the API's JSON."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Ours: kept on every Service that holds (or may hold) a claim, removed once the claim is released.
FINALIZER = "loadbalancer.cloudsigma.com/ip-claim"
#: ``spec.loadBalancerClass`` naming this CCM (no class at all is ours too).
LOAD_BALANCER_CLASS = "cloudsigma.com/load-balancer"
#: A specific IP (also read: ``spec.loadBalancerIP``, MetalLB's and kube-vip's annotations).
REQUESTED_IP = "loadbalancer.cloudsigma.com/ip"
#: A pool; kube-dc's annotation is read too, for Services migrated from it.
POOL = "loadbalancer.cloudsigma.com/ip-pool"
KUBE_DC_POOL = "cloudsigma.com/ip-pool"
STATIC_POOL = "static"
METALLB_IPS = "metallb.io/loadBalancerIPs"
METALLB_POOL = "metallb.io/address-pool"
KUBE_VIP_IPS = "kube-vip.io/loadbalancerIPs"


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    type: str
    load_balancer_class: str | None
    annotations: Mapping[str, str]
    finalizers: tuple[str, ...]
    deleting: bool
    #: Addresses in ``status.loadBalancer.ingress`` (IPs only).
    ingress: tuple[str, ...]
    spec_ip: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ours(self) -> bool:
        """A LoadBalancer of no class or of ours."""
        return self.type == "LoadBalancer" and self.load_balancer_class in (None, "", LOAD_BALANCER_CLASS)

    @property
    def wants_ip(self) -> bool:
        return self.ours and not self.deleting

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def pool(self) -> str:
        return (self.annotations.get(POOL) or self.annotations.get(KUBE_DC_POOL) or STATIC_POOL).strip()

    @property
    def requested_ip(self) -> str | None:
        """The IP the Service asks for: our annotation, ``spec.loadBalancerIP``, or the announcers' annotations
        (the first address of a list) unless they name the IP the status names — then they are what this CCM wrote
        itself, not a request. ``None``: any IP of the pool."""
        for raw, announcer in ((self.annotations.get(REQUESTED_IP), False), (self.spec_ip, False),
                               (self.annotations.get(METALLB_IPS), True), (self.annotations.get(KUBE_VIP_IPS), True)):
            if raw and raw.strip():
                address = raw.split(",")[0].strip()
                if announcer and address in self.ingress:
                    continue
                return address
        return None

    def event_ref(self) -> dict[str, str]:
        return {"kind": "Service", "namespace": self.namespace, "name": self.name, "uid": self.uid,
                "apiVersion": "v1"}


def valid_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def service_view(obj: Mapping[str, Any]) -> ServiceView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    lb = ((obj.get("status") or {}).get("loadBalancer") or {})
    annotations = meta.get("annotations") or {}
    return ServiceView(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""), type=str(spec.get("type") or "ClusterIP"),
        load_balancer_class=spec.get("loadBalancerClass"),
        annotations={str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
        finalizers=tuple(str(f) for f in meta.get("finalizers") or []),
        deleting=bool(meta.get("deletionTimestamp")),
        ingress=tuple(str(i["ip"]) for i in lb.get("ingress") or [] if isinstance(i, dict) and i.get("ip")),
        spec_ip=str(spec.get("loadBalancerIP") or ""),
    )
