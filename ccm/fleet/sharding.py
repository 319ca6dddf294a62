"""Which live replica serves which tenant: bounded-load rendezvous hashing (pure, deterministic).

Every replica computes the same answer from the same (tenant keys, live replica ids), in any order, with no
coordination: each tenant ranks the replicas by a stable hash of (tenant, replica) — rendezvous (highest random
weight) hashing — and goes to the best-ranked replica that still has room. Room is
``capacity(T, R) = ⌈T/R⌉ + 1``, so no replica serves more than one tenant above an even share. Tenants are
placed in an order fixed by their own hash (not by the replica set), which keeps the overflow of a full replica
— and so the movement when a replica joins or leaves — small: a leaving replica's tenants move, a joining one
takes about ``T/(R+1)`` tenants, and only a few others shift because capacities changed.

The assignment is advice, not exclusion: replicas may briefly disagree while membership changes propagate.
Per-tenant Leases (phase 2) make sure one tenant is never served by two replicas at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["assign", "capacity", "owned_by", "rank"]


def _weight(tenant: str, replica: str) -> int:
    """A stable 64-bit hash of the pair (Python's ``hash`` differs per process, so it cannot be used)."""
    digest = hashlib.blake2b(f"{tenant}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _order(tenant: str) -> tuple[int, str]:
    digest = hashlib.blake2b(tenant.encode(), digest_size=8, person=b"ccm-order").digest()
    return int.from_bytes(digest, "big"), tenant


def capacity(tenants: int, replicas: int) -> int:
    """Most tenants one replica takes: one above an even share, ⌈T/R⌉ + 1 (0 without replicas)."""
    if replicas <= 0:
        return 0
    return -(-tenants // replicas) + 1


def rank(tenant: str, replicas: Iterable[str]) -> list[str]:
    """The replicas in ``tenant``'s order of preference (first = where it goes when there is room)."""
    return sorted(set(replicas), key=lambda r: (_weight(tenant, r), r), reverse=True)


def assign(tenants: Iterable[str], replicas: Iterable[str]) -> dict[str, str]:
    """tenant → replica for every tenant; empty when there is no replica."""
    members = sorted(set(replicas))
    keys = sorted(set(tenants), key=_order)
    if not members:
        return {}
    room = capacity(len(keys), len(members))
    load = dict.fromkeys(members, 0)
    result: dict[str, str] = {}
    for tenant in keys:
        for replica in rank(tenant, members):
            if load[replica] < room:
                load[replica] += 1
                result[tenant] = replica
                break
    return result


def owned_by(replica: str, tenants: Iterable[str], replicas: Iterable[str]) -> set[str]:
    """The tenants ``replica`` should serve."""
    return {tenant for tenant, owner in assign(tenants, replicas).items() if owner == replica}
