"""What to do with one Service, from the Service and a listing of the owner's IPs (pure).

- Not (or no longer) a LoadBalancer of ours, or being deleted: release the IPs whose claim names it, then drop the
  finalizer (RELEASE); nothing to do without our finalizer (SKIP).
- It holds a claim already (a restart, a resync): KEEP that IP once verified (the claim check passed, or it was
  recovered at start-up); a claim of ours never verified (written too late after its listing: not trusted) is
  checked again (CLAIM of that same IP).
- Otherwise the IP to claim: the requested one (it must be the owner's subscribed IPv4 address, on no NIC, claimed
  by nobody else), else the one its status already names (a Service migrated from kube-dc keeps its IP), else a
  free one of the pool (CLAIM) — or stay pending with the reason (PENDING): the pool is exhausted, the requested IP
  is not the owner's or is in use, no Node can carry the IP yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from ccm.loadbalancer.ipam import CloudIp, free, in_pool, pick
from ccm.loadbalancer.service import STATIC_POOL, ServiceView, valid_ipv4


class Verdict(Enum):
    SKIP = "skip"
    RELEASE = "release"
    KEEP = "keep"
    CLAIM = "claim"
    PENDING = "pending"


#: Why a Service stays pending (the ``reason`` label of the allocation-failure metric).
NO_ELIGIBLE_NODE = "no_eligible_node"
POOL_EXHAUSTED = "pool_exhausted"
REQUESTED_NOT_OWNED = "requested_not_owned"
REQUESTED_IN_USE = "requested_in_use"
INVALID_REQUEST = "invalid_request"
UNSUPPORTED_POOL = "unsupported_pool"
CLOUD_UNAVAILABLE = "cloud_unavailable"
CLAIM_LOST = "claim_lost"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    ip: str | None = None
    #: Claims of this Service to remove (RELEASE; or extra ones next to the IP kept).
    release: tuple[str, ...] = ()
    reason: str = ""
    message: str = ""


def _mine(ips: Iterable[CloudIp], view: ServiceView, cluster: str) -> list[CloudIp]:
    return [ip for ip in ips if ip.claim is not None and ip.claim.source == "meta"
            and ip.claim.names(cluster, view.key, view.uid)]


def _pending(reason: str, message: str) -> Decision:
    return Decision(Verdict.PENDING, reason=reason, message=message)


def _check_requested(address: str, ips: Sequence[CloudIp], view: ServiceView, cluster: str,
                     reserved: Iterable[str]) -> Decision | None:
    """None when ``address`` may be claimed by this Service; else why not."""
    if not valid_ipv4(address):
        return _pending(INVALID_REQUEST, f"requested IP {address!r} is not an IPv4 address")
    found = next((ip for ip in ips if ip.address == address), None)
    if found is None or not in_pool(found, STATIC_POOL):
        return _pending(REQUESTED_NOT_OWNED, f"requested IP {address} is not a subscribed IP of the cluster owner's "
                        f"CloudSigma account ({sum(in_pool(i, STATIC_POOL) for i in ips)} are): subscribe to it, "
                        "or request one of those")
    if found.server is not None:
        return _pending(REQUESTED_IN_USE, f"requested IP {address} is attached to server {found.server}")
    if found.claim is not None and not found.claim.names(cluster, view.key, view.uid):
        return _pending(REQUESTED_IN_USE, f"requested IP {address} is claimed by {found.claim.describe()}")
    if address in set(reserved):
        return _pending(REQUESTED_IN_USE, f"requested IP {address} is being claimed for another Service")
    return None


def decide(view: ServiceView, ips: Sequence[CloudIp], *, cluster: str, eligible_nodes: int,
           reserved: Iterable[str] = (), verified: str | None = None) -> Decision:
    """The decision for ``view`` given the owner's IPs (``ips``), the Nodes that can carry an IP, the IPs other
    decisions in flight in this process are claiming (``reserved``) and the IP whose claim by this Service was
    verified (``verified``: the controller's held IP)."""
    mine = _mine(ips, view, cluster)
    if not view.wants_ip:
        if not view.has_finalizer:
            return Decision(Verdict.SKIP)
        return Decision(Verdict.RELEASE, release=tuple(ip.address for ip in mine))
    if view.pool != STATIC_POOL:
        return _pending(UNSUPPORTED_POOL, f"IP pool {view.pool!r} is not supported: only {STATIC_POOL!r} (the owner's "
                        "subscribed IPs; DHCP addresses move with their server)")
    requested = view.requested_ip
    if mine and (requested is None or requested == mine[0].address or any(i.address == requested for i in mine)):
        keep = next((ip for ip in mine if ip.address == requested), mine[0])
        return Decision(Verdict.KEEP if keep.address == verified else Verdict.CLAIM, ip=keep.address,
                        release=tuple(ip.address for ip in mine if ip.address != keep.address))
    if eligible_nodes <= 0:
        return _pending(NO_ELIGIBLE_NODE, "no Node can carry a load-balancer IP yet: a Node needs a public NIC with "
                        "ip_v4_conf.conf manual (label node.cloudsigma.com/load-balancer=true, see the Node's events)")
    release = tuple(ip.address for ip in mine)
    if requested is not None:
        problem = _check_requested(requested, ips, view, cluster, reserved)
        if problem is not None:
            return problem
        return Decision(Verdict.CLAIM, ip=requested, release=release)
    for address in view.ingress:
        if _check_requested(address, ips, view, cluster, reserved) is None:
            return Decision(Verdict.CLAIM, ip=address, release=release)
    chosen = pick(free(ips, view.pool, reserved=reserved), view.uid)
    if chosen is None:
        total = sum(in_pool(ip, view.pool) for ip in ips)
        return _pending(POOL_EXHAUSTED, f"no free IP in pool {view.pool!r}: all {total} subscribed IPv4 addresses "
                        "of the owner are attached to servers or claimed: subscribe to more, or free one")
    return Decision(Verdict.CLAIM, ip=chosen.address, release=release)
