"""Build ApiClients for the tenant and management clusters, without global configuration."""

from __future__ import annotations

import os
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
    else:
        cfg = Configuration()
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        client = ApiClient(configuration=cfg)
    _skip_env_lookups(client)
    return client


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NETRC")


def _skip_env_lookups(client: ApiClient) -> None:
    """kubernetes-asyncio's session trusts the environment, so aiohttp looks up proxies and ~/.netrc in a
    thread for *every* request — the largest CPU cost of a burst of node writes (py-spy). Without any proxy
    variable there is nothing to find: switch the lookups off. With one set, keep the library's behaviour."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return
    session = getattr(getattr(client, "rest_client", None), "pool_manager", None)
    if session is not None and hasattr(session, "_trust_env"):
        session._trust_env = False


def in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None
