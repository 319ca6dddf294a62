"""Reading Nodes."""

from __future__ import annotations

from typing import Any

from ccm.kube.transport import JSON, KubeTransport

NODES = "/api/v1/nodes"


async def get_node(kube: KubeTransport, name: str) -> JSON:
    return await kube.request("GET", f"{NODES}/{name}")


async def list_nodes(kube: KubeTransport, *, page_size: int = 500) -> tuple[list[JSON], str]:
    """All Nodes (paged with ``limit``/``continue``) and the list's resourceVersion to watch from."""
    items: list[JSON] = []
    token: str | None = None
    resource_version = ""
    while True:
        query: dict[str, Any] = {"limit": page_size}
        if token:
            query["continue"] = token
        page = await kube.request("GET", NODES, query=query)
        items.extend(i for i in page.get("items", []) if isinstance(i, dict))
        meta = page.get("metadata") or {}
        resource_version = meta.get("resourceVersion", resource_version)
        token = meta.get("continue")
        if not token:
            return items, resource_version
