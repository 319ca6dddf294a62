"""The compact record of a Node: what the controllers decide on, and all the node store keeps of it.

:func:`node_view` builds it from the API's JSON (a pure function; the node watcher runs it on every object it
lists or is told about, so the store never holds the JSON). It keeps:

- name, uid and resourceVersion (every write is guarded by uid + resourceVersion), creationTimestamp;
- ``spec.providerID``, ``status.nodeInfo.systemUUID`` and ``bootID``, ``status.addresses``;
- the Ready condition's status and lastTransitionTime;
- **every taint, whole**: a merge patch of ``spec.taints`` replaces the list, so removing ours must send the
  others exactly as they are;
- only the labels the controllers read or own: the instance-type/region/zone labels and their beta twins
  (set at initialization unless present) and every label under ``node.cloudsigma.com/`` (the cloud labels,
  including ones someone else set: those are never touched, and must be seen to be left alone);
- only the annotations read or owned: ``alpha.kubernetes.io/provided-node-ip`` and the cloud labels'
  ``node.cloudsigma.com/managed-labels``.

Everything else (managedFields, images, other conditions, capacity, other labels and annotations) is dropped.
Label and annotation keys and values, taint fields and address types repeat across nodes and are interned
(``sys.intern``; CPython frees interned strings nobody uses), so a thousand nodes share one copy of
``topology.kubernetes.io/zone``. A new reader of a Node field must add it here first: the tests compare every
decision made from this record with the same decision made from the full JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ccm.nodes.labels import (
    CLOUD_LABEL_PREFIX,
    INSTANCE_TYPE,
    INSTANCE_TYPE_BETA,
    MANAGED_LABELS_ANNOTATION,
    REGION,
    REGION_BETA,
    ZONE,
    ZONE_BETA,
)

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN_TAINT = "node.cloudprovider.kubernetes.io/shutdown"
PROVIDED_NODE_IP = "alpha.kubernetes.io/provided-node-ip"

#: Labels read by the decisions (set at initialization only when absent) — besides our own prefix.
KEPT_LABELS = frozenset({INSTANCE_TYPE, INSTANCE_TYPE_BETA, REGION, REGION_BETA, ZONE, ZONE_BETA})
#: Every label under this prefix is kept (the cloud labels, ours or someone else's).
KEPT_LABEL_PREFIX = CLOUD_LABEL_PREFIX
#: Annotations read by the decisions.
KEPT_ANNOTATIONS = frozenset({PROVIDED_NODE_IP, MANAGED_LABELS_ANNOTATION})

_EMPTY: Mapping[str, str] = MappingProxyType({})


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Address:
    type: str
    address: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "address": self.address}


def _empty() -> Mapping[str, str]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class NodeView:
    """A Node as the controllers see it (see the module docstring for what is kept). Immutable."""

    name: str
    uid: str
    resource_version: str
    provider_id: str
    labels: Mapping[str, str] = field(default_factory=_empty)
    annotations: Mapping[str, str] = field(default_factory=_empty)
    taints: tuple[Mapping[str, Any], ...] = ()
    addresses: tuple[Address, ...] = ()
    system_uuid: str = ""
    #: ``status.nodeInfo.bootID``: changes when the machine reboots (a DHCP address may have changed with it).
    boot_id: str = ""
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

    def event_ref(self) -> dict[str, str]:
        """The involvedObject of an Event about this Node."""
        return {"kind": "Node", "name": self.name, "uid": self.uid, "apiVersion": "v1"}


def kept_label(key: str) -> bool:
    """Whether the record keeps the label ``key``."""
    return key in KEPT_LABELS or key.startswith(KEPT_LABEL_PREFIX)


def _intern(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> Iterable[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else ()


def _kept(raw: Any, keep: Any) -> Mapping[str, str]:
    kept = {sys.intern(str(k)): sys.intern(str(v)) for k, v in _mapping(raw).items() if keep(str(k))}
    return kept or _EMPTY


def node_view(node: Mapping[str, Any]) -> NodeView:
    """The record of a Node's JSON; tolerant of missing or odd parts (a Node being registered is sparse)."""
    meta = _mapping(node.get("metadata"))
    spec = _mapping(node.get("spec"))
    status = _mapping(node.get("status"))
    name = str(meta.get("name", ""))
    taints = tuple({sys.intern(str(k)): _intern(v) for k, v in t.items()} for t in _items(spec.get("taints")))
    addresses = tuple(
        Address(sys.intern(str(a.get("type", ""))), name if a.get("address") == name else str(a.get("address", "")))
        for a in _items(status.get("addresses"))
    )
    ready, since = "", None
    for cond in _items(status.get("conditions")):
        if cond.get("type") == "Ready":
            ready = sys.intern(str(cond.get("status", "")))
            since = parse_time(cond.get("lastTransitionTime"))
    info = _mapping(status.get("nodeInfo"))
    return NodeView(
        name=name,
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        provider_id=str(spec.get("providerID") or ""),
        labels=_kept(meta.get("labels"), kept_label),
        annotations=_kept(meta.get("annotations"), KEPT_ANNOTATIONS.__contains__),
        taints=taints,
        addresses=addresses,
        system_uuid=str(info.get("systemUUID") or ""),
        boot_id=str(info.get("bootID") or ""),
        ready=ready,
        ready_since=since,
        created=parse_time(meta.get("creationTimestamp")),
    )
