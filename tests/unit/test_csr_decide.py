"""The CSR decision, table-driven: every check, with real PKCS#10 requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ccm.csr.decide import (
    DNS_SAN,
    INITIALIZED,
    IP_SAN,
    KEY,
    NODE,
    REQUEST,
    REQUESTOR,
    SAN,
    SERVER,
    SUBJECT,
    USAGES,
    ServerLookup,
    Verdict,
    _key_failure,
    address_claims,
    decide,
)
from ccm.csr.request import PublicKey, csr_view
from ccm.nodes.view import node_view
from tests.unit.csr_factories import ECDSA_USAGES, RSA_USAGES, csr_object, request_pem
from tests.unit.factories import UUID1, dhcp_nic, node, server, static_nic, vlan_nic

PID = f"cloudsigma://{UUID1}"
IP = "94.26.101.149"
INITIALIZED_ADDRESSES = [("ExternalIP", IP), ("Hostname", "node-1")]


@dataclass
class Case:
    """A CSR against node-1 (initialized from server UUID1 with public DHCP address 94.26.101.149)."""

    id: str
    verdict: Verdict
    check: str = ""
    request: dict[str, Any] = field(default_factory=dict)  # request_pem(**request)
    csr: dict[str, Any] = field(default_factory=dict)  # csr_object(**csr)
    node: dict[str, Any] | None = field(default_factory=dict)  # node(**node) over the initialized defaults
    nics: list[dict[str, Any]] | None = None  # the server's NICs (default: the DHCP one)
    lookup: str = "found"  # found | missing | none
    claims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deny: bool = False
    message: str = ""  # a fragment the message must contain


CASES = [
    # --- approved
    Case("kubelet-ecdsa-p256", Verdict.APPROVE),
    Case("rsa-2048-with-key-encipherment", Verdict.APPROVE, request={"key": "rsa2048"}, csr={"usages": RSA_USAGES}),
    Case("ecdsa-with-key-encipherment", Verdict.APPROVE, csr={"usages": RSA_USAGES}),
    Case("ecdsa-p384", Verdict.APPROVE, request={"key": "p384"}),
    Case("ecdsa-p521", Verdict.APPROVE, request={"key": "p521"}),
    Case("ed25519", Verdict.APPROVE, request={"key": "ed25519"}),
    Case("usages-in-any-order", Verdict.APPROVE, csr={"usages": ("server auth", "digital signature")}),
    Case("dns-only", Verdict.APPROVE, request={"ips": ()}),
    Case("ip-only", Verdict.APPROVE, request={"dns": ()}),
    Case("dns-is-a-hostname-address", Verdict.APPROVE, request={"dns": ("node-1", "node-1.internal.example")},
         node={"addresses": [*INITIALIZED_ADDRESSES, ("Hostname", "node-1.internal.example")]}),
    Case("dns-case-insensitive", Verdict.APPROVE, request={"dns": ("Node-1",)}),
    Case("static-and-ipv6", Verdict.APPROVE, request={"ips": ("185.12.5.5", "2a00:1::5")},
         nics=[static_nic("185.12.5.5"), dhcp_nic(None, mac="22:aa:00:00:00:09", ipv6="2a00:1::5")]),
    Case("ipv4-mapped-ipv6-is-the-ipv4", Verdict.APPROVE, request={"ips": (f"::ffff:{IP}",)}),
    Case("vlan-kubelet-internal-ip", Verdict.APPROVE, request={"ips": (IP, "10.10.0.7")},
         nics=[dhcp_nic(IP), vlan_nic()], node={"addresses": [*INITIALIZED_ADDRESSES, ("InternalIP", "10.10.0.7")]}),
    Case("vlan-only-server", Verdict.APPROVE, request={"ips": ("10.10.0.7",)}, nics=[vlan_nic()],
         node={"addresses": [("InternalIP", "10.10.0.7"), ("Hostname", "node-1")]}),
    Case("vlan-ip-listed-by-this-node-only", Verdict.APPROVE, request={"ips": ("10.10.0.7",)}, nics=[vlan_nic()],
         node={"addresses": [("InternalIP", "10.10.0.7")]}, claims={"10.10.0.7": ("node-1",)}),
    # --- not ours / decided
    Case("other-signer", Verdict.SKIP, csr={"signer": "kubernetes.io/kube-apiserver-client-kubelet"}),
    Case("approved-already", Verdict.SKIP, csr={"conditions": ("Approved",)}),
    Case("denied-already", Verdict.SKIP, csr={"conditions": ("Denied",)}),
    # --- requestor
    Case("requestor-not-a-node", Verdict.PENDING, REQUESTOR, csr={"username": "alice", "groups": ("devs",)}),
    Case("requestor-without-nodes-group", Verdict.PENDING, REQUESTOR, csr={"groups": ("system:authenticated",)}),
    Case("requestor-empty-node-name", Verdict.PENDING, REQUESTOR, csr={"username": "system:node:"}),
    Case("service-account-requestor", Verdict.PENDING, REQUESTOR,
         csr={"username": "system:serviceaccount:kube-system:x", "groups": ("system:serviceaccounts",)}),
    # --- request
    Case("bad-signature", Verdict.PENDING, REQUEST, request={"break_signature": True}, message="signature"),
    Case("request-not-base64", Verdict.PENDING, REQUEST, csr={"pem": "not base64!"}, message="base64"),
    Case("request-not-pem", Verdict.PENDING, REQUEST, csr={"pem": b"hello"}, message="PEM"),
    # --- subject: another node's identity
    Case("cn-of-another-node", Verdict.PENDING, SUBJECT, request={"cn": "system:node:node-2"},
         message="its own identity"),
    Case("cn-not-a-node", Verdict.PENDING, SUBJECT, request={"cn": "admin"}),
    Case("o-missing", Verdict.PENDING, SUBJECT, request={"orgs": ()}),
    Case("o-masters", Verdict.PENDING, SUBJECT, request={"orgs": ("system:nodes", "system:masters")}),
    Case("o-other", Verdict.PENDING, SUBJECT, request={"orgs": ("system:node",)}),
    Case("extra-subject-attribute", Verdict.PENDING, SUBJECT,
         request={"extra_subject": (x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x"),)}, message="OU"),
    # --- usages
    Case("client-auth-added", Verdict.PENDING, USAGES, csr={"usages": (*ECDSA_USAGES, "client auth")}),
    Case("client-auth-instead", Verdict.PENDING, USAGES, csr={"usages": ("digital signature", "client auth")}),
    Case("no-digital-signature", Verdict.PENDING, USAGES, csr={"usages": ("server auth",)}),
    Case("cert-sign", Verdict.PENDING, USAGES, csr={"usages": (*ECDSA_USAGES, "cert sign")}),
    Case("no-usages", Verdict.PENDING, USAGES, csr={"usages": ()}),
    # --- key
    Case("rsa-1024", Verdict.PENDING, KEY, request={"key": "rsa1024"}, csr={"usages": RSA_USAGES}, message="1024"),
    Case("ecdsa-p224", Verdict.PENDING, KEY, request={"key": "p224"}, message="secp224r1"),
    Case("ecdsa-secp256k1", Verdict.PENDING, KEY, request={"key": "secp256k1"}),
    Case("ed448", Verdict.PENDING, KEY, request={"key": "ed448"}, message="Ed448"),
    Case("dsa", Verdict.PENDING, KEY, request={"key": "dsa2048"}),
    # --- SAN kinds
    Case("email-san", Verdict.PENDING, SAN, request={"emails": ("root@node-1",)}, message="email"),
    Case("uri-san", Verdict.PENDING, SAN, request={"uris": ("spiffe://x/y",)}, message="URI"),
    Case("no-san", Verdict.PENDING, SAN, request={"dns": (), "ips": ()}),
    # --- the node
    Case("no-such-node", Verdict.WAIT, NODE, node=None),
    Case("node-still-tainted", Verdict.WAIT, INITIALIZED, node={"tainted": True}),
    Case("node-without-provider-id", Verdict.WAIT, INITIALIZED, node={"provider_id": ""}),
    Case("node-of-another-cloud", Verdict.PENDING, NODE, node={"provider_id": "hcloud://123"}),
    # --- the server
    Case("server-not-in-snapshot", Verdict.WAIT, SERVER, lookup="missing"),
    Case("server-not-looked-up", Verdict.WAIT, SERVER, lookup="none"),
    # --- DNS SANs
    Case("foreign-dns-name", Verdict.PENDING, DNS_SAN, request={"dns": ("node-1", "api.example.com")},
         message="api.example.com"),
    Case("other-nodes-name", Verdict.PENDING, DNS_SAN, request={"dns": ("node-2",)}),
    Case("wildcard-dns", Verdict.PENDING, DNS_SAN, request={"dns": ("*.node-1",)}),
    Case("hostname-of-node-does-not-leak-from-name", Verdict.PENDING, DNS_SAN, request={"dns": ("node-1.evil",)}),
    # --- IP SANs
    Case("wrong-ip", Verdict.PENDING, IP_SAN, request={"ips": ("203.0.113.9",)}, message="203.0.113.9"),
    Case("one-right-one-wrong-ip", Verdict.PENDING, IP_SAN, request={"ips": (IP, "94.26.101.150")}),
    Case("kubelet-ip-without-vlan-nic", Verdict.PENDING, IP_SAN, request={"ips": ("10.10.0.7",)},
         node={"addresses": [*INITIALIZED_ADDRESSES, ("InternalIP", "10.10.0.7")]}, message="no private VLAN NIC"),
    Case("kubelet-ip-on-manual-public-nic", Verdict.PENDING, IP_SAN, request={"ips": ("185.1.1.1",)},
         nics=[{"ip_v4_conf": {"conf": "manual", "ip": None}, "mac": "22:aa:00:00:00:03", "vlan": None,
                "runtime": None}],
         node={"addresses": [("InternalIP", "185.1.1.1")]}),
    Case("public-kubelet-ip-on-vlan-server", Verdict.PENDING, IP_SAN, request={"ips": ("185.1.1.1",)},
         nics=[vlan_nic()], node={"addresses": [("InternalIP", "185.1.1.1")]}),
    Case("kubelet-external-ip-on-vlan-server", Verdict.PENDING, IP_SAN, request={"ips": ("10.10.0.7",)},
         nics=[vlan_nic()], node={"addresses": [("ExternalIP", "10.10.0.7")]}),
    Case("vlan-ip-not-reported-by-kubelet", Verdict.PENDING, IP_SAN, request={"ips": ("10.10.0.8",)},
         nics=[vlan_nic()], node={"addresses": [("InternalIP", "10.10.0.7")]}),
    Case("vlan-ip-claimed-by-another-node", Verdict.PENDING, IP_SAN, request={"ips": ("10.10.0.7",)},
         nics=[vlan_nic()], node={"addresses": [("InternalIP", "10.10.0.7")]},
         claims={"10.10.0.7": ("node-1", "node-7")}, message="node-7"),
    # --- deny mode: failed checks deny, waiting ones never do
    Case("deny-mode-wrong-ip", Verdict.DENY, IP_SAN, request={"ips": ("203.0.113.9",)}, deny=True),
    Case("deny-mode-client-auth", Verdict.DENY, USAGES, csr={"usages": ("digital signature", "client auth")},
         deny=True),
    Case("deny-mode-still-tainted", Verdict.WAIT, INITIALIZED, node={"tainted": True}, deny=True),
    Case("deny-mode-valid", Verdict.APPROVE, deny=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    csr_args = dict(case.csr)
    pem = csr_args.pop("pem", None)
    view = csr_view(csr_object(pem if pem is not None else request_pem(**case.request), **csr_args))
    node_args: dict[str, Any] = {"tainted": False, "provider_id": PID, "addresses": INITIALIZED_ADDRESSES}
    nview = None if case.node is None else node_view(node("node-1", **{**node_args, **case.node}))
    srv = server(nics=case.nics) if case.nics is not None else server()
    lookup = {"found": ServerLookup(srv), "missing": ServerLookup(None, "not among the 1 servers"),
              "none": None}[case.lookup]

    decision = decide(view, nview, lookup, deny=case.deny, claims=case.claims)

    assert (decision.verdict, decision.check) == (case.verdict, case.check), decision.message
    assert case.message in decision.message
    if case.verdict is Verdict.APPROVE:
        assert decision.server_uuid == UUID1 and decision.node == "node-1"
    if case.verdict in (Verdict.PENDING, Verdict.DENY, Verdict.WAIT):
        assert decision.message  # says why


@pytest.mark.parametrize(("key", "accepted"), [
    (PublicKey("RSA", bits=2048), True), (PublicKey("RSA", bits=8192), True), (PublicKey("RSA", bits=2047), False),
    (PublicKey("RSA", bits=8200), False), (PublicKey("RSA", bits=16384), False),
    (PublicKey("ECDSA", 256, "secp256r1"), True), (PublicKey("ECDSA", 384, "secp384r1"), True),
    (PublicKey("ECDSA", 521, "secp521r1"), True), (PublicKey("ECDSA", 224, "secp224r1"), False),
    (PublicKey("ECDSA", 256, "brainpoolP256r1"), False), (PublicKey("Ed25519"), True), (PublicKey("Ed448"), False),
    (PublicKey("unsupported key type"), False),
])
def test_key_policy(key: PublicKey, accepted: bool) -> None:
    assert (_key_failure(key) == "") is accepted


def test_request_facts() -> None:
    view = csr_view(csr_object(request_pem(dns=("node-1",), ips=("94.26.101.149", "::ffff:10.1.2.3", "2a00::1"),
                                           key="rsa2048")))
    assert view.request is not None, view.request_error
    assert view.request.common_names == ("system:node:node-1",)
    assert view.request.organizations == ("system:nodes",)
    assert view.request.ip_addresses == ("94.26.101.149", "10.1.2.3", "2a00::1")
    assert view.request.key == PublicKey("RSA", bits=2048)
    assert view.requesting_node == "node-1" and not view.decided


def test_address_claims() -> None:
    nodes = [node_view(node(n, addresses=[("InternalIP", ip), ("Hostname", n)]))
             for n, ip in (("a", "10.0.0.1"), ("b", "10.0.0.1"), ("c", "10.0.0.3"))]
    assert address_claims(nodes, ["10.0.0.1", "10.0.0.9"]) == {"10.0.0.1": ("a", "b")}
    assert address_claims(nodes, []) == {}
