"""Writing Nodes: the only module that changes Node objects.

- Every write carries the ``metadata.uid`` and ``metadata.resourceVersion`` it was decided from: the API server
  answers 409 if the Node changed since we read it, or is another object of the same name (deleted and
  re-registered), so neither a taint list nor an address the kubelet just wrote is overwritten blind, and a
  decision about one Node never lands on its successor.
- Addresses go to the ``status`` subresource as a JSON merge patch, which replaces the whole list:
  ``status.addresses`` has merge key ``type`` and a strategic merge would collapse two addresses of one type.
- Deletion carries uid and resourceVersion preconditions: a Node re-registered under the same name is never
  deleted by a decision made about its predecessor.
"""

from __future__ import annotations

from typing import Any

from ccm.kube.fetching import NODES
from ccm.kube.transport import JSON, KubeTransport

MERGE_PATCH = "application/merge-patch+json"


def _preconditions(uid: str | None, resource_version: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if uid:
        meta["uid"] = uid
    if resource_version:
        meta["resourceVersion"] = resource_version
    return meta


async def replace_addresses(kube: KubeTransport, name: str, addresses: list[dict[str, str]], *,
                            uid: str | None, resource_version: str | None) -> JSON:
    """Replace ``status.addresses``; 409 if the Node is not the object (``uid``, ``resource_version``) decided on."""
    body = {"metadata": _preconditions(uid, resource_version), "status": {"addresses": addresses}}
    return await kube.request("PATCH", f"{NODES}/{name}/status", body=body, content_type=MERGE_PATCH)


async def patch_node(
    kube: KubeTransport,
    name: str,
    *,
    resource_version: str,
    uid: str | None = None,
    labels: dict[str, str | None] | None = None,
    annotations: dict[str, str | None] | None = None,
    provider_id: str | None = None,
    taints: list[dict[str, Any]] | None = None,
) -> JSON:
    """Merge-patch metadata/spec; 409 if the Node is not the object (``uid``, ``resource_version``) decided on."""
    metadata: dict[str, Any] = _preconditions(uid, resource_version)
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {}
    if provider_id is not None:
        spec["providerID"] = provider_id
    if taints is not None:
        spec["taints"] = taints
    body: dict[str, Any] = {"metadata": metadata}
    if spec:
        body["spec"] = spec
    return await kube.request("PATCH", f"{NODES}/{name}", body=body, content_type=MERGE_PATCH)


async def delete_node(kube: KubeTransport, name: str, *, uid: str, resource_version: str) -> JSON:
    body = {"kind": "DeleteOptions", "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": resource_version}}
    return await kube.request("DELETE", f"{NODES}/{name}", body=body)
