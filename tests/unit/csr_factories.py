"""Real PKCS#10 requests (generated with ``cryptography``) and CertificateSigningRequest JSON for tests."""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from ccm.csr.request import KUBELET_SERVING

KUBELET_GROUPS = ("system:nodes", "system:authenticated")
#: What a kubelet with an ECDSA key asks for (k8s.io/kubelet pkg/kubelet/certificate: no key encipherment).
ECDSA_USAGES = ("digital signature", "server auth")
RSA_USAGES = ("key encipherment", "digital signature", "server auth")

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
              | dsa.DSAPrivateKey)


@functools.cache
def private_key(kind: str = "p256") -> PrivateKey:
    """One key per kind for the whole run (RSA generation is slow): p256, p384, p521, p224, secp256k1,
    rsa1024, rsa2048, ed25519, ed448, dsa2048."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if kind.startswith("dsa"):
        return dsa.generate_private_key(key_size=int(kind[3:]))
    curves: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1(),
                                           "p224": ec.SECP224R1(), "secp256k1": ec.SECP256K1()}
    return ec.generate_private_key(curves[kind])


def request_pem(node: str = "node-1", *, cn: str | None = None, orgs: Sequence[str] = ("system:nodes",),
                extra_subject: Sequence[x509.NameAttribute] = (), dns: Sequence[str] = ("node-1",),
                ips: Sequence[str] = ("94.26.101.149",), emails: Sequence[str] = (), uris: Sequence[str] = (),
                key: str = "p256", break_signature: bool = False) -> bytes:
    """A PEM CERTIFICATE REQUEST like the kubelet's serving one (CN system:node:<node>, O system:nodes)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn if cn is not None else f"system:node:{node}")]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs += list(extra_subject)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signing_key = private_key(key)
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    csr = builder.sign(signing_key, algorithm)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if break_signature:
        der[-1] ^= 0x01  # the last byte belongs to the signature
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"


def csr_object(pem: bytes | str, *, name: str = "csr-1", username: str = "system:node:node-1",
               groups: Sequence[str] = KUBELET_GROUPS, usages: Sequence[str] = ECDSA_USAGES,
               signer: str = KUBELET_SERVING, conditions: Sequence[str] = ()) -> dict[str, Any]:
    """CertificateSigningRequest JSON as the API server returns it (``spec.request`` base64 of the PEM)."""
    request = pem if isinstance(pem, str) else base64.b64encode(pem).decode()
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7"},
        "spec": {"request": request, "signerName": signer, "usages": list(usages), "username": username,
                 "groups": list(groups), "uid": "user-uid"},
        "status": {"conditions": [{"type": c, "status": "True", "reason": "Test"} for c in conditions]},
    }


def create_body(pem: bytes, name: str, *, usages: Sequence[str] = ECDSA_USAGES,
                signer: str = KUBELET_SERVING) -> dict[str, Any]:
    """The body a kubelet POSTs (the API server fills in username, groups and uid)."""
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer, "usages": list(usages)}}
