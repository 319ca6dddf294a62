"""A management cluster for fleet tests: the CloudSigmaCluster CRD, tenant namespaces, clusters and their
Cluster API kubeconfig Secrets, written to a real kube-apiserver as Cluster API would write them."""

from __future__ import annotations

import base64
import contextlib
import time
from pathlib import Path
from typing import Any

import yaml

from ccm.clusters.clusterapi import (
    CLUSTER_NAME_LABEL,
    GROUP,
    KIND,
    KUBECONFIG_SECRET_KEY,
    KUBECONFIG_SECRET_TYPE,
    VERSION,
    clusters_path,
    kubeconfig_secret_name,
)
from ccm.kube.errors import Conflict, KubeError, KubeNotFound
from ccm.kube.transport import JSON, KubeTransport
from tests.realenv.nodes import wait_for

CRD_MANIFEST = Path(__file__).parent / "crds" / "cloudsigmaclusters.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def install_crd(kube: KubeTransport) -> None:
    """Create the test CloudSigmaCluster CRD (once) and wait until the API serves it."""
    body = yaml.safe_load(CRD_MANIFEST.read_text())
    with contextlib.suppress(Conflict):
        await kube.request("POST", CRDS, body=body)

    async def served() -> bool:
        crd = await kube.request("GET", f"{CRDS}/{body['metadata']['name']}")
        conditions = (crd.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return False
        await kube.request("GET", clusters_path())
        return True

    await wait_for(served, 30, message="the CloudSigmaCluster CRD to be served")


async def ensure_namespace(kube: KubeTransport, name: str, labels: dict[str, str] | None = None) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    try:
        await kube.request("POST", "/api/v1/namespaces", body=body)
    except Conflict:
        await kube.request("PATCH", f"/api/v1/namespaces/{name}", body={"metadata": {"labels": labels or {}}},
                           content_type="application/merge-patch+json")


async def label_namespace(kube: KubeTransport, name: str, labels: dict[str, str | None]) -> None:
    await kube.request("PATCH", f"/api/v1/namespaces/{name}", body={"metadata": {"labels": labels}},
                       content_type="application/merge-patch+json")


async def create_cluster(kube: KubeTransport, namespace: str, name: str, *, region: str = "zrh",
                         user_email: str | None = "owner@example.com", cluster_name: str | None = None,
                         labels: dict[str, str] | None = None, owner: str | None = None,
                         extra_spec: dict[str, Any] | None = None) -> JSON:
    """A CloudSigmaCluster as Cluster API leaves it: labelled with its Cluster's name (``cluster_name``,
    default ``name``) unless ``cluster_name=""``; ``owner`` adds an ownerReference to that Cluster."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if cluster_name is None:
        cluster_name = name
    if cluster_name:
        meta["labels"][CLUSTER_NAME_LABEL] = cluster_name
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "name": owner,
                                    "uid": "00000000-0000-0000-0000-000000000001"}]
    spec: dict[str, Any] = {"region": region, "controlPlaneEndpoint": {"host": "10.0.0.1", "port": 6443}}
    if user_email is not None:
        spec["userEmail"] = user_email
    spec.update(extra_spec or {})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": meta, "spec": spec}
    return await kube.request("POST", clusters_path(namespace), body=body)


async def patch_cluster(kube: KubeTransport, namespace: str, name: str, patch: JSON) -> JSON:
    return await kube.request("PATCH", f"{clusters_path(namespace)}/{name}", body=patch,
                              content_type="application/merge-patch+json")


async def delete_cluster(kube: KubeTransport, namespace: str, name: str) -> None:
    with contextlib.suppress(KubeNotFound):
        await kube.request("DELETE", f"{clusters_path(namespace)}/{name}")


async def put_kubeconfig_secret(kube: KubeTransport, namespace: str, cluster_name: str, kubeconfig: bytes, *,
                                labeled: bool = True) -> JSON:
    """Create or replace ``<cluster>-kubeconfig`` the way Cluster API writes it."""
    name = kubeconfig_secret_name(cluster_name)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labeled:
        meta["labels"] = {CLUSTER_NAME_LABEL: cluster_name}
    body = {"apiVersion": "v1", "kind": "Secret", "type": KUBECONFIG_SECRET_TYPE, "metadata": meta,
            "data": {KUBECONFIG_SECRET_KEY: base64.b64encode(kubeconfig).decode()}}
    path = f"/api/v1/namespaces/{namespace}/secrets"
    try:
        return await kube.request("POST", path, body=body)
    except Conflict:
        return await kube.request("PUT", f"{path}/{name}", body=body)


async def delete_secret(kube: KubeTransport, namespace: str, name: str) -> None:
    with contextlib.suppress(KubeNotFound):
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}")


async def delete_namespace_objects(kube: KubeTransport, namespace: str) -> None:
    """Delete every CloudSigmaCluster and Secret of ``namespace`` (namespaces themselves are slow to go)."""
    for path in (clusters_path(namespace), f"/api/v1/namespaces/{namespace}/secrets"):
        with contextlib.suppress(KubeError):
            await kube.request("DELETE", path)


def unique(prefix: str) -> str:
    """A name no earlier test used (tests share one management API server)."""
    return f"{prefix}-{time.monotonic_ns() % 10**9:09d}"
