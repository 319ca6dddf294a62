"""What ``status.addresses`` a Node should have. Pure functions.

Rules (upstream contract, then where we do better):
- Every address the API knows for the server: ExternalIP when public, InternalIP when private — private
  means exactly RFC 1918 (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10) and IPv6 ULA (fc00::/7).
- Private VLAN NICs have no IP in the API; the kubelet's own InternalIPs are kept for them (hcloud #4/#199).
- Hostname entries of the kubelet are kept; without any, the node name is the Hostname.
- ``alpha.kubernetes.io/provided-node-ip`` (kubelet ``--node-ip``, maybe ``v4,v6``): each listed IP must be
  among the addresses, is listed first, and other addresses of the same type (single IP) — or of the same
  type and family (dual stack) — are dropped. An invalid annotation is an error: the caller keeps the node
  tainted at initialization and only reports it afterwards.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ccm.nodes.view import Address
from cloudsigma.addresses import ServerAddresses

INTERNAL = "InternalIP"
EXTERNAL = "ExternalIP"
HOSTNAME = "Hostname"

PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_SKIPPED = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "0.0.0.0/32", "::/128", "224.0.0.0/4",
              "ff00::/8")
)


class AddressError(ValueError):
    """The addresses cannot be decided (e.g. an invalid provided-node-ip); message says what to fix."""


def is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version)


def _usable(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # zone ids are not valid Node addresses
        return None
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if any(ip in net for net in _SKIPPED if net.version == ip.version):
        return None
    return ip


def cloud_addresses(server: ServerAddresses, *, ipv6: bool = True) -> list[Address]:
    """Typed addresses for the IPs the API knows."""
    result: list[Address] = []
    for text in server.ipv4 + (server.ipv6 if ipv6 else ()):
        ip = _usable(text)
        if ip is None:
            continue
        result.append(Address(INTERNAL if is_private(ip) else EXTERNAL, ip.compressed))
    return result


@dataclass(frozen=True)
class AddressDecision:
    addresses: tuple[Address, ...]
    #: Kubelet-reported InternalIPs kept because the API cannot know them (private VLAN NICs).
    kept_from_kubelet: tuple[str, ...] = ()
    #: How many leading addresses are the provided-node-ip ones: their order is part of the decision.
    leading: int = 0

    @property
    def has_ip(self) -> bool:
        return has_ip(self.addresses)


def has_ip(addresses: tuple[Address, ...]) -> bool:
    """At least one InternalIP or ExternalIP: what a node needs before it may be scheduled."""
    return any(a.type in (INTERNAL, EXTERNAL) and a.address for a in addresses)


def parse_provided_node_ip(value: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise AddressError(f"annotation alpha.kubernetes.io/provided-node-ip={value!r} is empty or malformed")
    ips = []
    for part in parts:
        try:
            if "%" in part:
                raise ValueError(part)
            ips.append(ipaddress.ip_address(part))
        except ValueError:
            raise AddressError(f"annotation alpha.kubernetes.io/provided-node-ip: {part!r} is not an IP "
                               "address; fix the kubelet's --node-ip") from None
    if len(ips) > 2 or (len(ips) == 2 and ips[0].version == ips[1].version):
        raise AddressError(f"annotation alpha.kubernetes.io/provided-node-ip={value!r}: at most one IPv4 and "
                           "one IPv6 address are allowed")
    if any(ip.is_unspecified for ip in ips):
        raise AddressError("annotation alpha.kubernetes.io/provided-node-ip: 0.0.0.0/:: means 'any'; not a node IP")
    return ips


def decide_addresses(
    node_name: str,
    server: ServerAddresses,
    current: tuple[Address, ...],
    *,
    provided_node_ip: str | None = None,
    ipv6: bool = True,
) -> AddressDecision:
    """The full ``status.addresses`` list the node should have. Raises :class:`AddressError`."""
    addresses = cloud_addresses(server, ipv6=ipv6)
    known = {a.address for a in addresses}
    kept: list[str] = []
    if server.private_nics or server.unknown_public_nics:
        for addr in current:
            if addr.type != INTERNAL:
                continue
            ip = _usable(addr.address)
            if ip is None or ip.compressed in known or (ip.version == 6 and not ipv6):
                continue
            addresses.append(Address(INTERNAL, ip.compressed))
            known.add(ip.compressed)
            kept.append(ip.compressed)

    leading = 0
    if provided_node_ip is not None:
        addresses, leading = _apply_provided_node_ip(addresses, provided_node_ip)

    hostnames = [a for a in current if a.type == HOSTNAME and a.address]
    if not hostnames:
        hostnames = [Address(HOSTNAME, node_name)]
    for hostname in hostnames:
        if hostname not in addresses:
            addresses.append(hostname)
    return AddressDecision(addresses=tuple(addresses), kept_from_kubelet=tuple(kept), leading=leading)


def _apply_provided_node_ip(addresses: list[Address], value: str) -> tuple[list[Address], int]:
    node_ips = parse_provided_node_ip(value)
    first: list[Address] = []
    for node_ip in node_ips:
        matches = [a for a in addresses if _same_ip(a.address, node_ip)]
        if not matches:
            have = ", ".join(a.address for a in addresses) or "none"
            raise AddressError(f"provided-node-ip {node_ip} is not an address of the server (known: {have}); "
                               "fix the kubelet's --node-ip or the server's NICs")
        first.extend(m for m in matches if m not in first)
    dual = len(node_ips) == 2
    rest: list[Address] = []
    for addr in addresses:
        if addr in first:
            continue
        ip = _usable(addr.address)
        same_type = [f for f in first if f.type == addr.type]
        if dual:
            same_type = [f for f in same_type if ip is not None and _version(f.address) == ip.version]
        if same_type:
            continue
        rest.append(addr)
    return first + rest, len(first)


def _version(text: str) -> int:
    return ipaddress.ip_address(text).version


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return "%" not in text and ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def same_addresses(a: tuple[Address, ...], b: tuple[Address, ...], *, leading: int = 0) -> bool:
    """Compare as sets of (type, address) — upstream compares by type and re-patches dual-stack nodes forever —
    except the first ``leading`` entries (the provided-node-ip addresses), whose order matters: consumers take
    the first address of a type as the node's IP."""
    return set(a) == set(b) and len(a) == len(b) and a[:leading] == b[:leading]
