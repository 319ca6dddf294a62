"""A read-only view of the parts of a Node the controllers decide on (from the API's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN_TAINT = "node.cloudprovider.kubernetes.io/shutdown"
PROVIDED_NODE_IP = "alpha.kubernetes.io/provided-node-ip"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Address:
    type: str
    address: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "address": self.address}


@dataclass(frozen=True)
class NodeView:
    name: str
    uid: str
    resource_version: str
    provider_id: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, Any], ...] = ()
    addresses: tuple[Address, ...] = ()
    system_uuid: str = ""
    #: "True", "False", "Unknown", or "" when the node has no Ready condition yet.
    ready: str = ""
    ready_since: datetime | None = None
    created: datetime | None = None

    @property
    def uninitialized(self) -> bool:
        return any(t.get("key") == UNINITIALIZED_TAINT for t in self.taints)

    @property
    def shutdown_tainted(self) -> bool:
        return any(t.get("key") == SHUTDOWN_TAINT for t in self.taints)

    @property
    def not_ready(self) -> bool:
        return self.ready in ("False", "Unknown")

    @property
    def provided_node_ip(self) -> str | None:
        return self.annotations.get(PROVIDED_NODE_IP)


def node_view(node: dict[str, Any]) -> NodeView:
    """Build a view from Node JSON; tolerant of missing parts (a Node being registered is sparse)."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    taints = tuple(t for t in (spec.get("taints") or []) if isinstance(t, dict))
    addresses = tuple(
        Address(str(a.get("type", "")), str(a.get("address", "")))
        for a in (status.get("addresses") or []) if isinstance(a, dict)
    )
    ready, since = "", None
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = str(cond.get("status", ""))
            since = parse_time(cond.get("lastTransitionTime"))
    info = status.get("nodeInfo") or {}
    return NodeView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        provider_id=str(spec.get("providerID") or ""),
        labels={str(k): str(v) for k, v in (labels or {}).items()},
        annotations={str(k): str(v) for k, v in (annotations or {}).items()},
        taints=taints,
        addresses=addresses,
        system_uuid=str(info.get("systemUUID") or "") if isinstance(info, dict) else "",
        ready=ready,
        ready_since=since,
        created=parse_time(meta.get("creationTimestamp")),
    )
