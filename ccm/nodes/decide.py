"""Decide what a Node should look like, from its server. Pure functions: no I/O, no clock.

:func:`plan_initialization` for nodes still carrying the uninitialized taint; :func:`plan_resync` for
initialized ones (addresses, and type/region/zone labels only where missing: a node another CCM initialized);
:func:`with_label_change` adds the cloud labels' change (:mod:`ccm.cloudlabels`) to either;
:func:`plan_shutdown_taint` for the lifecycle controller. :mod:`ccm.nodes.apply` is the one place that writes a
plan to the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ccm.nodes.addresses import AddressError, decide_addresses, has_ip, same_addresses
from ccm.nodes.labels import desired_labels, labels_to_add
from ccm.nodes.view import SHUTDOWN_TAINT, UNINITIALIZED_TAINT, Address, NodeView
from ccm.providerid import format_provider_id
from cloudsigma.addresses import ServerAddresses, server_addresses
from cloudsigma.models import Server

SHUTDOWN_STATUSES = frozenset({"stopped", "paused"})

#: Why a plan is blocked (also the reason of the node's Warning event).
INVALID_NODE_ADDRESSES = "InvalidNodeAddresses"
NO_NODE_ADDRESS = "NoNodeAddress"


@dataclass(frozen=True)
class NodePlan:
    """The difference between a Node and what it should be. Empty plan → nothing to write."""

    addresses: tuple[Address, ...] | None = None  # full replacement, or None = unchanged
    provider_id: str | None = None  # set only when the node has none
    labels: dict[str, str | None] = field(default_factory=dict)  # keys to set (None: remove)
    annotations: dict[str, str | None] = field(default_factory=dict)  # keys to set (None: remove)
    taints: tuple[Mapping[str, Any], ...] | None = None  # full new taint list, or None = unchanged
    #: Why the node must stay as it is (a problem the operator must fix), if any.
    blocked: str | None = None
    #: A one-word reason for ``blocked`` (``InvalidNodeAddresses``, ``NoNodeAddress``).
    blocked_reason: str = ""
    notes: tuple[str, ...] = ()

    @property
    def writes_spec(self) -> bool:
        return self.provider_id is not None or bool(self.labels) or bool(self.annotations) or self.taints is not None

    @property
    def empty(self) -> bool:
        return self.addresses is None and not self.writes_spec


def _without(taints: tuple[Mapping[str, Any], ...], key: str) -> tuple[Mapping[str, Any], ...]:
    return tuple(t for t in taints if t.get("key") != key)


def _blocked(reason: str, message: str) -> NodePlan:
    return NodePlan(blocked=message, blocked_reason=reason)


def no_address_message(server: Server, known: ServerAddresses) -> str:
    """Why a server gives its node no IP address: the same words every time (it becomes an Event message)."""
    if server.status in SHUTDOWN_STATUSES or (server.runtime is None and known.unknown_public_nics):
        why = f"server {server.uuid} is {server.status or 'in an unknown state'}: its DHCP address is not known"
    elif not server.nics:
        why = f"server {server.uuid} has no usable NIC"
    elif known.private_nics and not known.all:
        why = (f"server {server.uuid} has only private VLAN NICs and the kubelet reported no InternalIP; set the "
               "kubelet's --node-ip")
    else:
        why = f"server {server.uuid} reports no usable IP address"
    problems = server.problems + known.problems
    if problems:
        why += f" ({'; '.join(problems)})"
    return f"{why}; a node needs an InternalIP or ExternalIP before it may be scheduled"


def plan_initialization(node: NodeView, server: Server, *, region: str, zone: str, ipv6: bool = True,
                        known: ServerAddresses | None = None) -> NodePlan:
    """Everything an uninitialized node needs; addresses are written before the taint goes, and the taint goes
    only when the node has at least one InternalIP/ExternalIP. ``known``: the server's addresses if already
    extracted (the snapshot keeps them)."""
    known = server_addresses(server) if known is None else known
    try:
        decision = decide_addresses(node.name, known, node.addresses, provided_node_ip=node.provided_node_ip,
                                    ipv6=ipv6)
    except AddressError as exc:
        return _blocked(INVALID_NODE_ADDRESSES, str(exc))
    if not decision.has_ip:
        return _blocked(NO_NODE_ADDRESS, no_address_message(server, known))
    notes: list[str] = []
    if decision.kept_from_kubelet:
        notes.append("kept kubelet InternalIPs for private NICs: " + ", ".join(decision.kept_from_kubelet))
    provider_id = None if node.provider_id else format_provider_id(server.uuid)
    addresses = (None if same_addresses(decision.addresses, node.addresses, leading=decision.leading)
                 else decision.addresses)
    labels: dict[str, str | None] = dict(labels_to_add(node.labels, desired_labels(server, region=region, zone=zone)))
    taints = _without(node.taints, UNINITIALIZED_TAINT) if node.uninitialized else None
    return NodePlan(addresses=addresses, provider_id=provider_id, labels=labels, taints=taints, notes=tuple(notes))


def plan_resync(node: NodeView, server: Server, *, region: str = "", zone: str = "", ipv6: bool = True,
                known: ServerAddresses | None = None) -> NodePlan:
    """Addresses of an initialized node (DHCP addresses change on reboot), and the type/region/zone labels it
    lacks: a node initialized by another CCM (the kube-dc one sets none) is adopted; an existing label is never
    changed (add-only, as at initialization). Errors only reported."""
    known = server_addresses(server) if known is None else known
    try:
        decision = decide_addresses(node.name, known, node.addresses, provided_node_ip=node.provided_node_ip,
                                    ipv6=ipv6)
    except AddressError as exc:
        return _blocked(INVALID_NODE_ADDRESSES, str(exc))
    labels: dict[str, str | None] = dict(labels_to_add(node.labels, desired_labels(server, region=region, zone=zone)))
    if server.status in SHUTDOWN_STATUSES and not known.all:
        # A stopped server's DHCP address is not in the API; keep what the node has rather than strip it.
        return NodePlan(labels=labels, notes=("server stopped: addresses left as they are",))
    if not decision.has_ip and has_ip(node.addresses):
        # Never turn a node with an IP into one without: keep what it has until the server reports one.
        return NodePlan(labels=labels, notes=("the server reports no IP address: addresses left as they are",))
    if same_addresses(decision.addresses, node.addresses, leading=decision.leading):
        return NodePlan(labels=labels)
    return NodePlan(addresses=decision.addresses, labels=labels)


def with_label_change(plan: NodePlan, labels: Mapping[str, str | None],
                      annotations: Mapping[str, str | None]) -> NodePlan:
    """``plan`` plus a change of the cloud labels (:mod:`ccm.cloudlabels`), written in the same patch. A blocked
    plan writes nothing, so it stays as it is."""
    if plan.blocked or (not labels and not annotations):
        return plan
    return replace(plan, labels={**labels, **plan.labels}, annotations={**plan.annotations, **annotations})


def plan_shutdown_taint(node: NodeView, server_status: str | None) -> NodePlan:
    """Add the shutdown taint to a NotReady node whose server is stopped/paused; drop it otherwise."""
    shut_down = node.not_ready and server_status in SHUTDOWN_STATUSES
    if shut_down and not node.shutdown_tainted:
        taint = {"key": SHUTDOWN_TAINT, "effect": "NoSchedule"}
        return NodePlan(taints=(*node.taints, taint))
    if node.shutdown_tainted and (node.ready == "True" or server_status == "running"):
        return NodePlan(taints=_without(node.taints, SHUTDOWN_TAINT))
    return NodePlan()
