"""Reading Nodes (and, for the CSR approver, any collection)."""

from __future__ import annotations

from typing import Any

from ccm.kube.transport import JSON, KubeTransport

NODES = "/api/v1/nodes"


async def get_node(kube: KubeTransport, name: str) -> JSON:
    return await kube.request("GET", f"{NODES}/{name}")


async def list_nodes(kube: KubeTransport, *, page_size: int = 500) -> tuple[list[JSON], str]:
    """All Nodes (paged with ``limit``/``continue``) and the list's resourceVersion to watch from."""
    return await list_all(kube, NODES, page_size=page_size)


async def list_all(kube: KubeTransport, path: str, *, page_size: int = 500,
                   field_selector: str | None = None) -> tuple[list[JSON], str]:
    """Every object of a collection (paged with ``limit``/``continue``) and the list's resourceVersion."""
    items: list[JSON] = []
    token: str | None = None
    resource_version = ""
    while True:
        query: dict[str, Any] = {"limit": page_size}
        if field_selector:
            query["fieldSelector"] = field_selector
        if token:
            query["continue"] = token
        page = await kube.request("GET", path, query=query)
        items.extend(i for i in page.get("items", []) if isinstance(i, dict))
        meta = page.get("metadata") or {}
        resource_version = meta.get("resourceVersion", resource_version)
        token = meta.get("continue")
        if not token:
            return items, resource_version
