"""A real kube-apiserver as a ServiceAccount token issuer that a real Keycloak can verify (secretless tests).

The API server runs with ``--service-account-issuer=https://127.0.0.1:<port>`` (its own URL), so the issuer's
OIDC discovery (``/.well-known/openid-configuration``) and keys (``/openid/v1/jwks``) are served exactly where the
tokens' ``iss`` points. Keycloak fetches them over TLS, trusting the API server's serving CA
(``Keycloak.truststore_paths``), without credentials: ``system:service-account-issuer-discovery`` is bound to
``system:unauthenticated``, as public issuers do. Tokens are minted with the TokenRequest API, as the kubelet
does for a projected ``serviceAccountToken`` volume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient

from ccm.kube.transport import KubeTransport
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer

__all__ = ["ServiceAccountIssuer", "write_projected_token"]


class ServiceAccountIssuer:
    """ServiceAccounts of one namespace of ``server`` whose tokens carry ``iss`` = the server's URL."""

    def __init__(self, server: KubeAPIServer, namespace: str = "tenant-a") -> None:
        self.server = server
        self.namespace = namespace
        self._api: ApiClient | None = None

    @property
    def issuer(self) -> str:
        return self.server.service_account_issuer

    @property
    def ca_path(self) -> Path:
        return self.server.serving_ca_path

    def subject(self, service_account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{service_account}"

    async def start(self, service_accounts: tuple[str, ...] = ("cloudsigma-ccm",)) -> None:
        assert self.issuer == self.server.url, "start the KubeAPIServer with service_account_issuer='{url}'"
        self._api = await api_client_for(self.server.admin_kubeconfig)
        kube = KubeTransport(self._api)
        await kube.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "service-account-issuer-discovery-unauthenticated"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:service-account-issuer-discovery"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": "system:unauthenticated"}]})
        await kube.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        for name in service_accounts:
            await kube.request("POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts", body={
                "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})

    async def mint(self, service_account: str, audience: str, seconds: int = 600) -> str:
        """A token for ``service_account`` with one ``audience`` (TokenRequest; 600 s is the API's minimum)."""
        assert self._api is not None, "start() first"
        answer: dict[str, Any] = await KubeTransport(self._api).request(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{service_account}/token", body={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": seconds}})
        return str(answer["status"]["token"])

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None


def write_projected_token(volume: Path, token: str, *, key: str = "token") -> Path:
    """Write ``token`` the way the kubelet updates a projected volume: a new timestamped directory, then an atomic
    swap of the ``..data`` symlink; ``<volume>/<key>`` is a symlink through ``..data``. Returns that path."""
    volume.mkdir(parents=True, exist_ok=True)
    generation = len([p for p in volume.iterdir() if p.name.startswith("..gen")])
    data_dir = volume / f"..gen{generation}"
    data_dir.mkdir()
    (data_dir / key).write_text(token)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(data_dir.name)
    os.replace(tmp, volume / "..data")
    link = volume / key
    if not link.is_symlink():
        link.symlink_to(f"..data/{key}")
    return link
