"""The announcer's side (pure): what MetalLB or kube-vip is told, so that it answers ARP for the IPs we allocated.

MetalLB (tested against the CRDs of v0.16.2): one ``IPAddressPool`` holding exactly the allocated IPs (``/32``
each) with ``autoAssign: false`` — MetalLB hands out nothing on its own — and one ``L2Advertisement`` of that pool
limited to the eligible Nodes (:data:`ELIGIBLE_LABEL`); each Service carries ``metallb.io/loadBalancerIPs`` and
``metallb.io/address-pool`` (MetalLB's annotations for a requested IP and its pool). kube-vip: each Service carries
``kube-vip.io/loadbalancerIPs`` (what kube-vip's own cloud provider writes for kube-vip to announce).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ccm.loadbalancer.service import KUBE_VIP_IPS, METALLB_IPS, METALLB_POOL

#: On every Node that can carry a load-balancer IP (a public NIC with ``ip_v4_conf.conf: manual``).
ELIGIBLE_LABEL = "node.cloudsigma.com/load-balancer"
POOL_NAME = "cloudsigma-ccm"
METALLB_GROUP = "metallb.io"
METALLB_VERSION = "v1beta1"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def metallb_path(namespace: str, plural: str, name: str | None = None) -> str:
    base = f"/apis/{METALLB_GROUP}/{METALLB_VERSION}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def address_pool(namespace: str, addresses: Iterable[str]) -> dict[str, Any]:
    """The IPAddressPool holding exactly ``addresses``."""
    ordered = sorted(set(addresses), key=ipaddress.ip_address)
    return {"apiVersion": f"{METALLB_GROUP}/{METALLB_VERSION}", "kind": "IPAddressPool",
            "metadata": {"name": POOL_NAME, "namespace": namespace, "labels": {MANAGED_BY_LABEL: "cloudsigma-ccm"}},
            "spec": {"addresses": [f"{a}/32" for a in ordered], "autoAssign": False, "avoidBuggyIPs": False}}


def l2_advertisement(namespace: str) -> dict[str, Any]:
    """The L2Advertisement of our pool, from eligible Nodes only."""
    return {"apiVersion": f"{METALLB_GROUP}/{METALLB_VERSION}", "kind": "L2Advertisement",
            "metadata": {"name": POOL_NAME, "namespace": namespace, "labels": {MANAGED_BY_LABEL: "cloudsigma-ccm"}},
            "spec": {"ipAddressPools": [POOL_NAME],
                     "nodeSelectors": [{"matchLabels": {ELIGIBLE_LABEL: "true"}}]}}


def service_annotations(announcer: str, ip: str | None) -> dict[str, str | None]:
    """The Service annotations for ``ip`` (None: removed) — a merge patch."""
    if announcer == "metallb":
        return {METALLB_IPS: ip, METALLB_POOL: POOL_NAME if ip else None}
    if announcer == "kube-vip":
        return {KUBE_VIP_IPS: ip}
    return {}
