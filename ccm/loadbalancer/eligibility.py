"""Which Nodes can carry a load-balancer IP (pure).

CloudSigma's firewall passes traffic for a subscribed IP only on a NIC whose ``ip_v4_conf.conf`` is ``manual``
(network_interfaces.rst: such a NIC "is allowed to use all IPs for which the user has subscription"). A Node whose
server has one is eligible and labelled :data:`~ccm.loadbalancer.announcer.ELIGIBLE_LABEL`; MetalLB's
L2Advertisement announces only from those.

``--load-balancer-nic=ensure`` switches a server's first public NIC to ``manual`` with a full-object PUT, as kube-dc
does: every writable field is sent back as read, the read-only ones dropped. servers.rst says a running server
ignores every change but ``name``, ``meta`` and ``tags``, so the result is verified by reading the server again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cloudsigma.models import Server

#: Fields of a server object that a PUT does not take (kube-dc drops the same ones, plus jobs/runtime of NICs).
READ_ONLY = ("resource_uri", "runtime", "status", "uuid", "owner", "permissions", "mounted_on", "grantees", "jobs")


def nic_confs(server: Server) -> tuple[str, ...]:
    """The ``ip_v4_conf.conf`` of each public IPv4 NIC."""
    return tuple(str(nic.ip_v4_conf.conf or "") for nic in server.nics if nic.ip_v4_conf is not None)


def eligible(server: Server) -> bool:
    return "manual" in nic_confs(server)


def manual_definition(definition: Mapping[str, Any]) -> dict[str, Any] | None:
    """The PUT body switching the first public IPv4 NIC to ``manual`` (None: the server has no such NIC)."""
    body = {k: copy.deepcopy(v) for k, v in definition.items() if k not in READ_ONLY}
    nics = body.get("nics")
    if not isinstance(nics, list):
        return None
    switched = False
    for nic in nics:
        if not isinstance(nic, dict):
            continue
        nic.pop("runtime", None)
        conf = nic.get("ip_v4_conf")
        if not switched and isinstance(conf, dict):
            nic["ip_v4_conf"] = {"conf": "manual", "ip": None}
            switched = True
    return body if switched else None


def definition_is_manual(definition: Mapping[str, Any]) -> bool:
    return any(isinstance(n, dict) and isinstance(n.get("ip_v4_conf"), dict)
               and n["ip_v4_conf"].get("conf") == "manual" for n in definition.get("nics") or [])
