"""A fleet tenant's client holds a bounded number of connections (ccm/fleet/runtime.tenant_connections)."""

from __future__ import annotations

from typing import Any

from ccm.config import Settings
from ccm.fleet.runtime import tenant_connections
from ccm.kube.clients import api_client_from_dict


def _kubeconfig() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "t", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }


def _limit(client: Any) -> int:
    return int(client.rest_client.pool_manager.connector.limit)


async def test_a_tenant_client_opens_at_most_its_workers_plus_the_watches_and_events() -> None:
    settings = Settings.model_construct(fleet_concurrent_node_syncs=4)
    assert tenant_connections(settings) == 7  # 4 workers + Node watch + CSR watch + Events/lifecycle
    capped = await api_client_from_dict(_kubeconfig(), source="Secret t/t-kubeconfig", max_connections=7)
    default = await api_client_from_dict(_kubeconfig(), source="Secret t/t-kubeconfig")
    try:
        assert _limit(capped) == 7
        assert _limit(default) == 100  # the library's default, kept for the single-tenant mode
    finally:
        await capped.close()
        await default.close()
