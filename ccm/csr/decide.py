"""Should a kubelet-serving CSR be approved? Pure functions over the CSR, its node and the node's server.

Approved only when every check holds (the first that fails is the answer, named in :attr:`Decision.check`):

1. ``requestor`` — spec.username is ``system:node:<name>`` in group ``system:nodes`` (the API server sets both
   from the creating identity; a client cannot choose them).
2. ``request`` — a PEM CERTIFICATE REQUEST whose signature verifies.
3. ``subject`` — exactly CN ``system:node:<name>`` of the *requesting* node and O ``system:nodes``, nothing else.
4. ``usages`` — exactly upstream's kubelet-serving sets: digital signature + server auth, key encipherment
   optional (k8s.io/kubernetes pkg/apis/certificates ValidateKubeletServingCSR).
5. ``key`` — RSA 2048 to 8192 bits (Go's TLS refuses larger peer keys), ECDSA P-256/P-384/P-521, or Ed25519.
6. ``san`` — at least one DNS or IP SAN and no other kind (upstream forbids email and URI SANs; the signer
   would drop the rest).
7. ``node`` / ``initialized`` — the Node exists and this CCM initialized it (``cloudsigma://`` providerID, no
   uninitialized taint).
8. ``server`` — the node's server is in the shared snapshot.
9. ``dns-san`` — every DNS SAN is the node's name or one of its Hostname addresses.
10. ``ip-san`` — every IP SAN is an address the cloud reports for the server, or — only on a server with a
    private VLAN NIC, whose addresses the API never knows — a private InternalIP the kubelet reported for this
    node and no other Node lists.

A failed check leaves the CSR pending (or denies it when asked to); checks that can still pass by themselves
(no Node yet, not initialized yet, cloud unavailable) say WAIT instead and never deny.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ccm.csr.request import KUBELET_SERVING, NODE_USER_PREFIX, NODES_GROUP, CSRView, PublicKey
from ccm.nodes.addresses import HOSTNAME, INTERNAL, is_private
from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from cloudsigma.addresses import server_addresses
from cloudsigma.models import Server

REQUESTOR, REQUEST, SUBJECT, USAGES, KEY, SAN = "requestor", "request", "subject", "usages", "key", "san"
NODE, INITIALIZED, SERVER, DNS_SAN, IP_SAN = "node", "initialized", "server", "dns-san", "ip-san"

SERVING_USAGES = frozenset({"digital signature", "server auth"})
SERVING_USAGES_WITH_KEY_ENCIPHERMENT = SERVING_USAGES | {"key encipherment"}
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class Verdict(Enum):
    APPROVE = "approved"
    DENY = "denied"
    PENDING = "pending"  # a check failed: left for a human (or another approver)
    WAIT = "waiting"  # a check cannot pass *yet*: decide again later
    SKIP = "skipped"  # not a kubelet-serving CSR, or approved/denied already


@dataclass(frozen=True)
class Failure:
    check: str
    message: str
    #: Can pass later without anyone changing the CSR (decide again instead of leaving it for good).
    transient: bool = False


@dataclass(frozen=True)
class ServerLookup:
    """The node's server from the snapshot, or why there is none."""

    server: Server | None
    problem: str = ""
    transient: bool = True


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    check: str = ""
    message: str = ""
    node: str = ""
    server_uuid: str = ""
    #: What the decision was based on, for its log line (the listing's request ids and age); set by the controller.
    evidence: tuple[tuple[str, object], ...] = ()

    @property
    def final(self) -> bool:
        return self.verdict in (Verdict.APPROVE, Verdict.DENY, Verdict.PENDING)


def _key_failure(key: PublicKey) -> str:
    if key.algorithm == "RSA":
        if RSA_MIN_BITS <= key.bits <= RSA_MAX_BITS:
            return ""
        return f"RSA key of {key.bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are accepted"
    if key.algorithm == "ECDSA":
        if key.curve in EC_CURVES:
            return ""
        return f"ECDSA curve {key.curve}; accepted: {', '.join(EC_CURVES.values())}"
    if key.algorithm == "Ed25519":
        return ""
    return f"{key.describe()} key; accepted: RSA {RSA_MIN_BITS}-{RSA_MAX_BITS}, ECDSA P-256/P-384/P-521, Ed25519"


def check_request(csr: CSRView) -> Failure | None:
    """The checks that need nothing but the CSR: requestor, request, subject, usages, key, SAN kinds."""
    node = csr.requesting_node
    if not node or NODES_GROUP not in csr.groups:
        return Failure(REQUESTOR, f"requested by {csr.username!r} (groups {list(csr.groups)}), not by a node "
                       f"({NODE_USER_PREFIX}<name> in group {NODES_GROUP})")
    req = csr.request
    if req is None:
        return Failure(REQUEST, csr.request_error or "spec.request cannot be read")
    expected = NODE_USER_PREFIX + node
    if list(req.common_names) != [expected]:
        asked = ", ".join(repr(cn) for cn in req.common_names) or "none"
        return Failure(SUBJECT, f"subject CN {asked} is not {expected!r}: a node may only ask for its own identity")
    if list(req.organizations) != [NODES_GROUP]:
        return Failure(SUBJECT, f"subject O {list(req.organizations)} is not [{NODES_GROUP!r}]")
    if req.other_subject_attributes:
        return Failure(SUBJECT, f"subject has attributes besides CN and O: {', '.join(req.other_subject_attributes)}")
    usages = set(csr.usages)
    if usages not in (SERVING_USAGES, SERVING_USAGES_WITH_KEY_ENCIPHERMENT):
        return Failure(USAGES, f"usages {sorted(usages)} are not {sorted(SERVING_USAGES)} (plus, optionally, "
                       "'key encipherment')")
    problem = _key_failure(req.key)
    if problem:
        return Failure(KEY, problem)
    if req.other_sans:
        return Failure(SAN, f"SANs of kind {', '.join(sorted(set(req.other_sans)))} are not allowed (only DNS and IP)")
    if not req.dns_names and not req.ip_addresses:
        return Failure(SAN, "no DNS or IP SAN")
    return None


def check_node(csr: CSRView, node: NodeView | None) -> Failure | None:
    """The requesting node exists and this CCM initialized it."""
    name = csr.requesting_node
    if node is None:
        return Failure(NODE, f"no Node {name!r} in the cluster", transient=True)
    if node.provider_id:
        try:
            parse_provider_id(node.provider_id)
        except ForeignProviderID as exc:
            return Failure(NODE, f"Node {name!r} is not a CloudSigma node: {exc}")
    if not node.provider_id or node.uninitialized:
        return Failure(INITIALIZED, f"Node {name!r} is not initialized by the CCM yet", transient=True)
    return None


def check_addresses(csr: CSRView, node: NodeView, server: Server,
                    claims: Mapping[str, tuple[str, ...]]) -> Failure | None:
    """Every DNS SAN names the node; every IP SAN is the server's (or, on a private VLAN, the kubelet's)."""
    req = csr.request
    assert req is not None  # check_request passed
    names = {node.name.lower()} | {a.address.lower() for a in node.addresses if a.type == HOSTNAME and a.address}
    for dns in req.dns_names:
        if dns.lower() not in names:
            return Failure(DNS_SAN, f"DNS SAN {dns!r} is neither the node's name nor a Hostname address of it "
                           f"({', '.join(sorted(names))})")
    known = server_addresses(server)
    cloud = set(known.all)
    vlan = set(kubelet_vlan_ips(node)) if known.private_nics else set()
    for ip in req.ip_addresses:
        if ip in cloud:
            continue
        if ip in vlan:
            others = [n for n in claims.get(ip, ()) if n != node.name]
            if others:
                return Failure(IP_SAN, f"IP SAN {ip} is a kubelet-reported address of Node(s) {', '.join(others)} "
                               f"too; the cloud cannot tell whose it is")
            continue
        where = f"server {server.uuid} has {', '.join(known.all) or 'no address the API knows'}"
        if known.private_nics:
            where += f"; kubelet-reported private InternalIPs: {', '.join(sorted(vlan)) or 'none'}"
        else:
            where += " and no private VLAN NIC, so kubelet-reported addresses do not count"
        return Failure(IP_SAN, f"IP SAN {ip} is not an address of the node's server ({where})")
    return None


def kubelet_vlan_ips(node: NodeView) -> list[str]:
    """Private InternalIPs of the Node: what the kubelet reports for private VLAN NICs (the API never knows)."""
    out: list[str] = []
    for addr in node.addresses:
        if addr.type != INTERNAL:
            continue
        try:
            ip = ipaddress.ip_address(addr.address)
        except ValueError:
            continue
        if is_private(ip):
            out.append(ip.compressed)
    return out


def address_claims(nodes: Iterable[NodeView], ips: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Which Nodes list each of ``ips`` among their addresses (to spot one VLAN IP claimed twice)."""
    wanted = set(ips)
    claims: dict[str, list[str]] = {}
    if not wanted:
        return {}
    for node in nodes:
        for addr in node.addresses:
            if addr.address in wanted and node.name not in claims.get(addr.address, ()):
                claims.setdefault(addr.address, []).append(node.name)
    return {ip: tuple(names) for ip, names in claims.items()}


def decide(csr: CSRView, node: NodeView | None, lookup: ServerLookup | None, *, deny: bool = False,
           claims: Mapping[str, tuple[str, ...]] | None = None) -> Decision:
    """The one decision for ``csr``. ``lookup`` is the node's server (``None``: not looked up yet → WAIT);
    ``deny``: a failed check denies instead of leaving the CSR pending."""
    if csr.signer_name != KUBELET_SERVING or csr.decided:
        return Decision(Verdict.SKIP)
    name = csr.requesting_node
    failure = check_request(csr) or check_node(csr, node)
    server_uuid = ""
    if failure is None:
        assert node is not None
        if lookup is None or lookup.server is None:
            problem = lookup.problem if lookup is not None else "not looked up"
            failure = Failure(SERVER, f"server of Node {name!r}: {problem}",
                              transient=lookup is None or lookup.transient)
        else:
            server_uuid = lookup.server.uuid
            failure = check_addresses(csr, node, lookup.server, claims or {})
    if failure is None:
        req = csr.request
        assert req is not None and lookup is not None and lookup.server is not None
        sans = [*req.dns_names, *req.ip_addresses]
        return Decision(Verdict.APPROVE, message=(
            f"kubelet-serving certificate for Node {name} verified against server {server_uuid} "
            f"({lookup.server.name}): subject, usages, {req.key.describe()} key and SANs {', '.join(sans)}"),
            node=name, server_uuid=server_uuid)
    verdict = Verdict.WAIT if failure.transient else Verdict.DENY if deny else Verdict.PENDING
    return Decision(verdict, check=failure.check, message=failure.message, node=name, server_uuid=server_uuid)
