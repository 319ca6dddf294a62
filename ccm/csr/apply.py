"""Writing a CSR decision: the only module that changes CertificateSigningRequests.

The ``approval`` subresource takes the whole object; the API server keeps only ``status.conditions`` from it
and answers 409 when ``metadata.resourceVersion`` is not the current one, so a decision made on an old copy is
never written (the caller reads the CSR again and decides again). The CertificateApproval admission plugin
additionally requires ``approve`` on ``signers``/``kubernetes.io/kubelet-serving``.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from ccm.kube.transport import JSON, KubeTransport

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
#: ``reason`` of the conditions this CCM writes (machine-readable, as the CSR docs suggest).
APPROVED_REASON = "CloudSigmaNodeVerified"
DENIED_REASON = "CloudSigmaCheckFailed"


def with_condition(csr: JSON, type_: str, reason: str, message: str, *, now: datetime | None = None) -> JSON:
    """A copy of ``csr`` with one more ``True`` condition (the body of an approval update)."""
    body = copy.deepcopy(csr)
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = body.setdefault("status", {})
    conditions = list(status.get("conditions") or [])
    conditions.append({"type": type_, "status": "True", "reason": reason, "message": message[:1024],
                       "lastUpdateTime": stamp, "lastTransitionTime": stamp})
    status["conditions"] = conditions
    body.setdefault("apiVersion", "certificates.k8s.io/v1")
    body.setdefault("kind", "CertificateSigningRequest")
    return body


async def write_condition(kube: KubeTransport, csr: JSON, *, approve: bool, message: str) -> JSON:
    """Approve or deny ``csr`` as read (its resourceVersion guards the write). Raises KubeError (409: re-read)."""
    name = str((csr.get("metadata") or {}).get("name", ""))
    body = with_condition(csr, "Approved" if approve else "Denied", APPROVED_REASON if approve else DENIED_REASON,
                          message)
    return await kube.request("PUT", f"{CSRS}/{name}/approval", body=body)


async def get_csr(kube: KubeTransport, name: str) -> JSON:
    return await kube.request("GET", f"{CSRS}/{name}")
