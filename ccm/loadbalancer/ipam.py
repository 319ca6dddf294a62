"""The owner's IPs and their claims, read from ``GET /ips/detail/`` (pure).

A claim is recorded on the IP itself, in its ``meta`` (networking.rst: the one field of an IP that can be edited;
an update replaces the whole map, so every other key is sent back as it was). The keys say which cluster and which
Service hold the IP, and which Service object (its uid: a Service deleted and created again under the same name is
another claimant). kube-dc records its use in tags instead (``cluster:<name>``, ``service:<namespace>-<name>``):
those are read as claims too, so an IP kube-dc handed out is never given to another Service; a Service migrated from
kube-dc adopts the IP its status names when the tags name its cluster and Service.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLAIM_CLUSTER = "k8s-cluster"
CLAIM_SERVICE = "k8s-service"
CLAIM_UID = "k8s-service-uid"
MANAGED_BY = "managed-by"
MANAGER = "cloudsigma-ccm"
CLAIM_KEYS = (CLAIM_CLUSTER, CLAIM_SERVICE, CLAIM_UID, MANAGED_BY)
KUBE_DC_CLUSTER_TAG = "cluster:"
KUBE_DC_SERVICE_TAG = "service:"


@dataclass(frozen=True)
class Claim:
    """Who holds an IP: a cluster and a Service (``namespace/name``; kube-dc's ``namespace-name``)."""

    cluster: str
    service: str
    uid: str = ""
    #: ``meta`` (ours) or ``kube-dc-tags``.
    source: str = "meta"

    def names(self, cluster: str, service_key: str, uid: str) -> bool:
        """Is this the claim of that Service object?"""
        if self.source == "kube-dc-tags":
            return self.cluster == cluster and self.service == service_key.replace("/", "-")
        return self.cluster == cluster and self.service == service_key and (not self.uid or self.uid == uid)

    def describe(self) -> str:
        return f"Service {self.service} of cluster {self.cluster}" + (" (kube-dc tags)"
                                                                      if self.source != "meta" else "")


@dataclass(frozen=True)
class CloudIp:
    address: str
    subscribed: bool
    #: uuid of the server whose NIC uses it (static conf, or a DHCP lease), or None.
    server: str | None
    meta: Mapping[str, str] = field(default_factory=dict)
    claim: Claim | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


def _ref_uuid(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("uuid"):
        return str(value["uuid"])
    return str(value) if isinstance(value, str) and value else None


def meta_claim(meta: Mapping[str, str]) -> Claim | None:
    cluster, service = meta.get(CLAIM_CLUSTER), meta.get(CLAIM_SERVICE)
    if not cluster or not service:
        return None
    return Claim(cluster=cluster, service=service, uid=meta.get(CLAIM_UID, ""))


def kube_dc_claim(tag_names: Iterable[str]) -> Claim | None:
    """kube-dc's tags on an IP: ``cluster:<name>`` and ``service:<namespace>-<name>``."""
    cluster = service = None
    for name in tag_names:
        if name.startswith(KUBE_DC_CLUSTER_TAG):
            cluster = name[len(KUBE_DC_CLUSTER_TAG):]
        elif name.startswith(KUBE_DC_SERVICE_TAG):
            service = name[len(KUBE_DC_SERVICE_TAG):]
    if cluster and service:
        return Claim(cluster=cluster, service=service, source="kube-dc-tags")
    return None


def parse_ips(objects: Iterable[Mapping[str, Any]], tag_names: Mapping[str, str] | None = None) -> list[CloudIp]:
    """The IP objects of a listing; ``tag_names`` maps tag uuids to names (for kube-dc's claims). Objects without
    a valid address are left out."""
    out: list[CloudIp] = []
    for obj in objects:
        address = str(obj.get("uuid") or "")
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            continue
        raw_meta = obj.get("meta")
        meta = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
        tags = [(tag_names or {}).get(str(_ref_uuid(t) or ""), "") for t in obj.get("tags") or []]
        claim = meta_claim(meta) or kube_dc_claim(t for t in tags if t)
        out.append(CloudIp(address=address, subscribed=bool(obj.get("subscription")),
                           server=_ref_uuid(obj.get("server")), meta=meta, claim=claim))
    return out


def in_pool(ip: CloudIp, pool: str) -> bool:
    """``static``: a subscribed IPv4 address (a DHCP lease is the cloud's to move, never a Service's)."""
    return pool == "static" and ip.subscribed and ip.version == 4


def free(ips: Iterable[CloudIp], pool: str, *, reserved: Iterable[str] = ()) -> list[CloudIp]:
    """IPs of the pool that no NIC uses, nobody claims and no decision in flight holds, by address."""
    held = set(reserved)
    return sorted((ip for ip in ips if in_pool(ip, pool) and ip.server is None and ip.claim is None
                   and ip.address not in held), key=lambda ip: ipaddress.ip_address(ip.address))


def pick(candidates: list[CloudIp], uid: str) -> CloudIp | None:
    """One of the candidates, spread by the Service's uid: two clusters deciding at once rarely want the same IP
    (when they do, the claim check settles it)."""
    if not candidates:
        return None
    index = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big") % len(candidates)
    return candidates[index]


def claimed_meta(meta: Mapping[str, str], cluster: str, service_key: str, uid: str) -> dict[str, str]:
    """``meta`` with our claim (every other key kept: an update replaces the whole map)."""
    out = {k: v for k, v in meta.items() if k not in CLAIM_KEYS}
    out.update({CLAIM_CLUSTER: cluster, CLAIM_SERVICE: service_key, CLAIM_UID: uid, MANAGED_BY: MANAGER})
    return out


def released_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """``meta`` without our claim's keys."""
    return {k: v for k, v in meta.items() if k not in CLAIM_KEYS}


def held_by(ips: Iterable[CloudIp], cluster: str) -> dict[str, CloudIp]:
    """address → IP of every IP whose meta claim names ``cluster``."""
    return {ip.address: ip for ip in ips if ip.claim is not None and ip.claim.source == "meta"
            and ip.claim.cluster == cluster}
