"""Build ApiClients for the tenant and management clusters, without global configuration."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


async def api_client(kubeconfig: Path | None) -> ApiClient:
    """An ApiClient for ``kubeconfig``, or the in-cluster service account when ``None``.

    Never calls ``Configuration.set_default``: the tenant and the management cluster each get their own.
    """
    if kubeconfig is not None:
        client: ApiClient = await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
        return client
    cfg = Configuration()
    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return ApiClient(configuration=cfg)


def in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None
