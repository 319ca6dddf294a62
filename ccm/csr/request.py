"""A CertificateSigningRequest as the decision reads it: the API object's fields and what its PKCS#10 request
asks for. Pure functions; nothing here decides.

Parsing never raises on a bad object: an undecodable request becomes ``request_error`` (the decision then
leaves the CSR pending, saying why).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from ccm.kube.permissions import KUBELET_SERVING_SIGNER
from ccm.nodes.view import parse_time

KUBELET_SERVING = KUBELET_SERVING_SIGNER
NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"

_SAN_KINDS: dict[type[x509.GeneralName], str] = {
    x509.RFC822Name: "email",
    x509.UniformResourceIdentifier: "URI",
    x509.OtherName: "otherName",
    x509.RegisteredID: "registeredID",
    x509.DirectoryName: "directoryName",
}


class RequestError(ValueError):
    """``spec.request`` is not a PEM CERTIFICATE REQUEST with a valid signature; the message says what is wrong."""


@dataclass(frozen=True)
class PublicKey:
    """The requested key: ``algorithm`` RSA / ECDSA / Ed25519 / Ed448 / DSA / …, ``bits`` (RSA), ``curve`` (ECDSA)."""

    algorithm: str
    bits: int = 0
    curve: str = ""

    def describe(self) -> str:
        if self.algorithm == "RSA":
            return f"RSA {self.bits} bits"
        if self.algorithm == "ECDSA":
            return f"ECDSA {self.curve}"
        return self.algorithm


@dataclass(frozen=True)
class RequestFacts:
    """What the PKCS#10 request asks for (its signature has been checked)."""

    common_names: tuple[str, ...]
    organizations: tuple[str, ...]
    #: Subject attributes other than CN and O, by their RFC 4514 name (``OU``, ``C``, or a dotted OID).
    other_subject_attributes: tuple[str, ...]
    dns_names: tuple[str, ...]
    #: IP SANs in canonical text (IPv4-mapped IPv6 addresses as the IPv4 address they stand for).
    ip_addresses: tuple[str, ...]
    #: Kinds of every other SAN (``email``, ``URI``, ``otherName``, …).
    other_sans: tuple[str, ...]
    key: PublicKey


@dataclass(frozen=True)
class CSRView:
    """The fields of a CertificateSigningRequest the decision reads."""

    name: str
    uid: str
    resource_version: str
    signer_name: str
    #: The requestor, as the API server recorded it from the creating identity (not settable by the client).
    username: str
    groups: tuple[str, ...]
    usages: tuple[str, ...]
    #: Types of the conditions with status True (``Approved``, ``Denied``, ``Failed``).
    conditions: tuple[str, ...]
    request: RequestFacts | None
    request_error: str = ""
    created: datetime | None = None

    @property
    def decided(self) -> bool:
        """Approved or denied already (by us or anyone): nothing left to decide."""
        return "Approved" in self.conditions or "Denied" in self.conditions

    @property
    def requesting_node(self) -> str:
        """The node name of a ``system:node:<name>`` requestor, else ``""``."""
        if self.username.startswith(NODE_USER_PREFIX):
            return self.username[len(NODE_USER_PREFIX):]
        return ""


def canonical_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as text; an IPv4-mapped IPv6 address is the IPv4 address (Go treats both as one IP)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.compressed
    return ip.compressed


def _public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return PublicKey("unsupported key type")
    if isinstance(key, rsa.RSAPublicKey):
        return PublicKey("RSA", bits=key.key_size)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return PublicKey("ECDSA", bits=key.curve.key_size, curve=key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey("Ed25519")
    if isinstance(key, ed448.Ed448PublicKey):
        return PublicKey("Ed448")
    return PublicKey(type(key).__name__.removesuffix("PublicKey").lstrip("_") or "unknown")


def parse_request(pem: bytes) -> RequestFacts:
    """Read a PEM ``CERTIFICATE REQUEST``; raise :class:`RequestError` if it is unreadable or its signature is bad."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise RequestError("spec.request is not a PEM CERTIFICATE REQUEST") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise RequestError("the request's signature does not verify with its own public key")
    try:
        extensions = csr.extensions
    except ValueError as exc:  # duplicate or malformed extensions
        raise RequestError(f"the request's extensions cannot be read: {exc}") from None

    cns: list[str] = []
    orgs: list[str] = []
    others: list[str] = []
    for attr in csr.subject:
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        if attr.oid == NameOID.COMMON_NAME:
            cns.append(value)
        elif attr.oid == NameOID.ORGANIZATION_NAME:
            orgs.append(value)
        else:
            others.append(attr.rfc4514_attribute_name)

    dns: list[str] = []
    ips: list[str] = []
    other_sans: list[str] = []
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    for name in names:
        if isinstance(name, x509.DNSName):
            dns.append(name.value)
        elif isinstance(name, x509.IPAddress) and isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            ips.append(canonical_ip(name.value))
        else:
            other_sans.append(_SAN_KINDS.get(type(name), type(name).__name__))
    return RequestFacts(tuple(cns), tuple(orgs), tuple(others), tuple(dns), tuple(ips), tuple(other_sans),
                        _public_key(csr))


def csr_view(obj: dict[str, Any]) -> CSRView:
    """Build a view from CertificateSigningRequest JSON. Never raises: a bad request becomes ``request_error``."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    conditions = tuple(
        str(c.get("type")) for c in status.get("conditions") or []
        if isinstance(c, dict) and str(c.get("status", "True")) == "True"
    )
    request: RequestFacts | None = None
    error = ""
    raw = spec.get("request")
    try:
        if not isinstance(raw, str) or not raw:
            raise RequestError("spec.request is empty")
        try:
            pem = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("spec.request is not base64") from None
        request = parse_request(pem)
    except RequestError as exc:
        error = str(exc)
    groups = spec.get("groups") if isinstance(spec.get("groups"), list) else []
    usages = spec.get("usages") if isinstance(spec.get("usages"), list) else []
    return CSRView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        signer_name=str(spec.get("signerName") or ""),
        username=str(spec.get("username") or ""),
        groups=tuple(str(g) for g in groups or ()),
        usages=tuple(str(u) for u in usages or ()),
        conditions=conditions,
        request=request,
        request_error=error,
        created=parse_time(meta.get("creationTimestamp")),
    )
