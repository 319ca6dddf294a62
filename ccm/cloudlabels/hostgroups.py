"""Host groups from ``GET /servers/availability_groups/``. Pure functions.

The API answers arrays of server uuids that share a physical host, but names no host. A group's id is derived
from its smallest member uuid (hashed: opaque, a valid label value): it stays the same while that server stays
on the host, whatever else joins or leaves — fewer label changes than a hash of the whole member list. Arrays
that share a server are one host (the docs' example lists a group once per member), so they are merged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def group_id(member: str) -> str:
    """The opaque id of the host group whose smallest member uuid is ``member``."""
    return hashlib.sha256(member.lower().encode()).hexdigest()[:16]


def host_group_ids(groups: Iterable[Iterable[str]]) -> dict[str, str]:
    """server uuid (lower case) → id of its host group, for every server named in ``groups``."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in groups:
        members = [m.lower() for m in group]
        for m in members:
            parent.setdefault(m, m)
        for m in members[1:]:
            a, b = find(members[0]), find(m)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root of a set is always its smallest uuid
    return {m: group_id(find(m)) for m in parent}
