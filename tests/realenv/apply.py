"""Apply rendered manifests (RBAC, ServiceAccounts) to the test kube-apiserver as an admin, and remove them again."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ccm.kube.errors import Conflict
from ccm.kube.transport import KubeTransport

__all__ = ["applied", "object_path"]

# kind -> (API prefix, plural, namespaced), for the kinds the tests apply.
KINDS: dict[str, tuple[str, str, bool]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Namespace": ("/api/v1", "namespaces", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}


def object_path(obj: dict[str, Any]) -> tuple[str, str]:
    """(collection path, object path) of ``obj``."""
    prefix, plural, namespaced = KINDS[obj["kind"]]
    meta = obj["metadata"]
    collection = f"{prefix}/namespaces/{meta['namespace']}/{plural}" if namespaced else f"{prefix}/{plural}"
    return collection, f"{collection}/{meta['name']}"


@contextlib.asynccontextmanager
async def applied(kube: KubeTransport, objects: Iterable[dict[str, Any]]) -> AsyncIterator[None]:
    """Create (or replace) ``objects``; delete them on exit."""
    paths = []
    try:
        for obj in objects:
            collection, path = object_path(obj)
            try:
                await kube.request("POST", collection, body=obj)
            except Conflict:
                await kube.request("PUT", path, body=obj)
            paths.append(path)
        yield
    finally:
        for path in reversed(paths):
            with contextlib.suppress(Exception):
                await kube.request("DELETE", path)
